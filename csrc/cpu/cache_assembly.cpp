// Causal-conv input assembly: the next chunk's history and the [pad | past | x] input, as frame
// copies (dtype-agnostic: whole frames of `frame_elems` elements).
#include <cstring>

#include "cdt_fast/detail/frames.h"
#include "common.h"

namespace cdt_fast {
namespace cpu {
namespace {

using cdt_fast::detail::FrameSource;
using cdt_fast::detail::Source;

template <typename SourceOf>
void copy_frames(const void* x, const void* past, void* out, std::size_t frame_bytes,
                 std::int64_t batch, std::int64_t frames, std::int64_t past_frames,
                 std::int64_t out_frames, int threads, SourceOf source_of) {
  const auto* xb = static_cast<const unsigned char*>(x);
  const auto* pb = static_cast<const unsigned char*>(past);
  auto* ob = static_cast<unsigned char*>(out);
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
  for (std::int64_t bf = 0; bf < batch * out_frames; ++bf) {
    const std::int64_t b = bf / out_frames;
    const FrameSource src = source_of(bf % out_frames);
    unsigned char* dst = ob + bf * frame_bytes;
    if (src.source == Source::kZero) {
      std::memset(dst, 0, frame_bytes);
    } else if (src.source == Source::kPast) {
      std::memcpy(dst, pb + (b * past_frames + src.frame) * frame_bytes, frame_bytes);
    } else {
      std::memcpy(dst, xb + (b * frames + src.frame) * frame_bytes, frame_bytes);
    }
  }
}

void check(const void* x, const void* past, void* out, std::int64_t past_frames,
           std::int64_t history, const char* op) {
  detail::require(x && out, std::string(op) + ": x and out must be non-null");
  detail::require((past != nullptr) == (past_frames > 0),
                  std::string(op) + ": past must be given exactly when past_frames > 0");
  detail::require(history >= 0 && past_frames <= history,
                  std::string(op) + ": need 0 <= past_frames <= history");
}

}  // namespace

void causal_history(const void* x, const void* past, void* out, DType dtype, std::int64_t batch,
                    std::int64_t frames, std::int64_t past_frames, std::int64_t frame_elems,
                    std::int64_t history, int threads) {
  detail::require(x && out, "causal_history: x and out must be non-null");
  detail::require((past != nullptr) == (past_frames > 0),
                  "causal_history: past must be given exactly when past_frames > 0");
  const std::int64_t n = cdt_fast::detail::history_frames(frames, past_frames, history);
  copy_frames(x, past, out, frame_elems * element_size(dtype), batch, frames, past_frames, n,
              threads, [&](std::int64_t f) {
                return cdt_fast::detail::history_source(f, frames, past_frames, history);
              });
}

void causal_padded_input(const void* x, const void* past, void* out, DType dtype,
                         std::int64_t batch, std::int64_t frames, std::int64_t past_frames,
                         std::int64_t frame_elems, std::int64_t history, PadMode pad_mode,
                         int threads) {
  check(x, past, out, past_frames, history, "causal_padded_input");
  copy_frames(x, past, out, frame_elems * element_size(dtype), batch, frames, past_frames,
              history + frames, threads, [&](std::int64_t f) {
                return cdt_fast::detail::padded_source(f, past_frames, history, pad_mode);
              });
}

}  // namespace cpu
}  // namespace cdt_fast
