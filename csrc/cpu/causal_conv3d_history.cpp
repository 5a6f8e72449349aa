// The causal conv's history for the next chunk: the last `history` frames of [past | x], as frame
// copies (dtype-agnostic: whole frames of `frame_elems` elements).
#include <cstring>

#include "cdt_fast/detail/frames.h"
#include "common.h"

namespace cdt_fast {
namespace cpu {

void causal_conv3d_history(const void* x, const void* past, void* out, DType dtype,
                           std::int64_t batch, std::int64_t frames, std::int64_t past_frames,
                           std::int64_t frame_elems, std::int64_t history, int threads) {
  detail::require(x && out, "causal_conv3d_history: x and out must be non-null");
  detail::require((past != nullptr) == (past_frames > 0),
                  "causal_conv3d_history: past must be given exactly when past_frames > 0");
  const std::int64_t out_frames = cdt_fast::detail::history_frames(frames, past_frames, history);
  const std::size_t frame_bytes = frame_elems * element_size(dtype);
  const auto* xb = static_cast<const unsigned char*>(x);
  const auto* pb = static_cast<const unsigned char*>(past);
  auto* ob = static_cast<unsigned char*>(out);
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
  for (std::int64_t bf = 0; bf < batch * out_frames; ++bf) {
    const std::int64_t b = bf / out_frames;
    const cdt_fast::detail::FrameSource src =
        cdt_fast::detail::history_source(bf % out_frames, frames, past_frames, history);
    const unsigned char* from = src.source == cdt_fast::detail::Source::kPast
        ? pb + (b * past_frames + src.frame) * frame_bytes
        : xb + (b * frames + src.frame) * frame_bytes;
    std::memcpy(ob + bf * frame_bytes, from, frame_bytes);
  }
}

}  // namespace cpu
}  // namespace cdt_fast
