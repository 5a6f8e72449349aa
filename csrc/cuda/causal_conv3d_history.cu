// The causal conv's history on CUDA: one launch of 128-bit frame copies per call (graph
// friendly), the source of every frame chosen by the shared frame map.
#include "cdt_fast/detail/frames.h"
#include "cdt_fast/ops_cuda.h"
#include "common.cuh"

namespace cdt_fast {
namespace cuda {
namespace {

struct HistoryFrame {
  const unsigned char* x;
  const unsigned char* past;
  std::int64_t frames, past_frames, out_frames, history;
  std::size_t frame_bytes;
  __device__ const void* operator()(std::int64_t r) const {
    const std::int64_t b = r / out_frames, f = r % out_frames;
    const cdt_fast::detail::FrameSource s =
        cdt_fast::detail::history_source(f, frames, past_frames, history);
    if (s.source == cdt_fast::detail::Source::kPast)
      return past + (b * past_frames + s.frame) * frame_bytes;
    return x + (b * frames + s.frame) * frame_bytes;
  }
};

}  // namespace

void causal_conv3d_history(const void* x, const void* past, void* out, DType dtype,
                           std::int64_t batch, std::int64_t frames, std::int64_t past_frames,
                           std::int64_t frame_elems, std::int64_t history, int device,
                           cudaStream_t stream) {
  const char* op = "causal_conv3d_history";
  if (!x || !out || (past != nullptr) != (past_frames > 0) || history < 0)
    throw std::invalid_argument(std::string(op) + ": x, out non-null; past iff past_frames > 0");
  const std::int64_t out_frames = cdt_fast::detail::history_frames(frames, past_frames, history);
  const std::size_t frame_bytes = static_cast<std::size_t>(frame_elems) * element_size(dtype);
  detail::DeviceGuard guard(device);
  const HistoryFrame src{static_cast<const unsigned char*>(x),
                         static_cast<const unsigned char*>(past), frames, past_frames, out_frames,
                         history, frame_bytes};
  detail::copy_rows(out, batch * out_frames, frame_bytes,
                    detail::aligned(x, 16) && (!past || detail::aligned(past, 16)), src, stream, op);
}

}  // namespace cuda
}  // namespace cdt_fast
