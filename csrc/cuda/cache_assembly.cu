// Causal-conv input assembly on CUDA: one launch of 128-bit frame copies per call (graph friendly),
// the source of every frame chosen by the shared frame map.
#include "cdt_fast/detail/frames.h"
#include "cdt_fast/ops_cuda.h"
#include "common.cuh"

namespace cdt_fast {
namespace cuda {
namespace {

using cdt_fast::detail::FrameSource;
using cdt_fast::detail::Source;

struct FrameCopy {
  const unsigned char* x;
  const unsigned char* past;
  std::int64_t frames, past_frames, out_frames, history;
  std::size_t frame_bytes;
  PadMode pad_mode;
  bool padded;  // [pad | past | x] rather than the last `history` frames
  __device__ const void* operator()(std::int64_t r) const {
    const std::int64_t b = r / out_frames, f = r % out_frames;
    const FrameSource s = padded
        ? cdt_fast::detail::padded_source(f, past_frames, history, pad_mode)
        : cdt_fast::detail::history_source(f, frames, past_frames, history);
    if (s.source == Source::kZero) return nullptr;
    if (s.source == Source::kPast) return past + (b * past_frames + s.frame) * frame_bytes;
    return x + (b * frames + s.frame) * frame_bytes;
  }
};

void run(const void* x, const void* past, void* out, DType dtype, std::int64_t batch,
         std::int64_t frames, std::int64_t past_frames, std::int64_t frame_elems,
         std::int64_t history, PadMode pad_mode, bool padded, int device, cudaStream_t stream,
         const char* op) {
  if (!x || !out || (past != nullptr) != (past_frames > 0) || history < 0)
    throw std::invalid_argument(std::string(op) + ": x, out non-null; past iff past_frames > 0");
  if (padded && past_frames > history)
    throw std::invalid_argument(std::string(op) + ": past holds more than history frames");
  const std::int64_t out_frames = padded
      ? history + frames : cdt_fast::detail::history_frames(frames, past_frames, history);
  const std::size_t frame_bytes = static_cast<std::size_t>(frame_elems) * element_size(dtype);
  detail::DeviceGuard guard(device);
  const FrameCopy src{static_cast<const unsigned char*>(x), static_cast<const unsigned char*>(past),
                      frames, past_frames, out_frames, history, frame_bytes, pad_mode, padded};
  detail::copy_rows(out, batch * out_frames, frame_bytes,
                    detail::aligned(x, 16) && (!past || detail::aligned(past, 16)), src, stream, op);
}

}  // namespace

void causal_history(const void* x, const void* past, void* out, DType dtype, std::int64_t batch,
                    std::int64_t frames, std::int64_t past_frames, std::int64_t frame_elems,
                    std::int64_t history, int device, cudaStream_t stream) {
  run(x, past, out, dtype, batch, frames, past_frames, frame_elems, history, PadMode::kZeros,
      false, device, stream, "causal_history");
}

void causal_padded_input(const void* x, const void* past, void* out, DType dtype,
                         std::int64_t batch, std::int64_t frames, std::int64_t past_frames,
                         std::int64_t frame_elems, std::int64_t history, PadMode pad_mode,
                         int device, cudaStream_t stream) {
  run(x, past, out, dtype, batch, frames, past_frames, frame_elems, history, pad_mode, true, device,
      stream, "causal_padded_input");
}

}  // namespace cuda
}  // namespace cdt_fast
