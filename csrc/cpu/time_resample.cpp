// The memory halves of the temporal resampling convs: the stride-2 tap gather of the downsample
// and the time pixel-shuffle (+ bias) of the upsample. Their weight products are the caller's GEMM.
#include <cstring>

#include "cdt_fast/detail/frames.h"
#include "common.h"

namespace cdt_fast {
namespace cpu {
namespace {

template <typename T>
void upsample_impl(const T* y, const float* bias, T* out, std::int64_t batch, std::int64_t frames,
                   std::int64_t positions, std::int64_t C, bool drop_first, int threads) {
  const std::int64_t out_frames = 2 * frames - (drop_first ? 1 : 0);
  const std::int64_t rows = batch * out_frames * positions;
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t p = r % positions, bf = r / positions;
    const std::int64_t b = bf / out_frames, f = bf % out_frames + (drop_first ? 1 : 0);
    const std::int64_t t = f / 2, parity = f % 2;
    const T* src = y + ((b * frames + t) * positions + p) * 2 * C + parity;
    T* dst = out + r * C;
    if (bias) {
      const float* bb = bias + parity;
      for (std::int64_t c = 0; c < C; ++c)
        dst[c] = detail::from_float<T>(detail::to_float(src[2 * c]) + bb[2 * c]);
    } else {
      for (std::int64_t c = 0; c < C; ++c) dst[c] = src[2 * c];
    }
  }
}

}  // namespace

void time_downsample_gather(const void* x, const void* past, void* cols, DType dtype,
                            std::int64_t batch, std::int64_t frames, std::int64_t positions,
                            std::int64_t channels, PadMode pad_mode, int threads) {
  detail::require(x && cols, "time_downsample_gather: x and cols must be non-null");
  const bool has_past = past != nullptr;
  const std::int64_t out_frames = time_downsample_frames(frames, has_past);
  detail::require(out_frames > 0, "time_downsample_gather: too few frames for a kernel-3 tap");
  const std::size_t row_bytes = static_cast<std::size_t>(channels) * element_size(dtype);
  const auto* xb = static_cast<const unsigned char*>(x);
  const auto* pb = static_cast<const unsigned char*>(past);
  auto* out = static_cast<unsigned char*>(cols);
  const std::int64_t rows = batch * out_frames * positions;
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t p = r % positions, bj = r / positions;
    const std::int64_t b = bj / out_frames, j = bj % out_frames;
    for (int k = 0; k < 3; ++k) {
      unsigned char* dst = out + (r * 3 + k) * row_bytes;
      const auto src = cdt_fast::detail::downsample_source(j, k, has_past, pad_mode);
      if (src.source == cdt_fast::detail::Source::kZero) {
        std::memset(dst, 0, row_bytes);
      } else if (src.source == cdt_fast::detail::Source::kPast) {
        std::memcpy(dst, pb + (b * positions + p) * row_bytes, row_bytes);
      } else {
        std::memcpy(dst, xb + ((b * frames + src.frame) * positions + p) * row_bytes, row_bytes);
      }
    }
  }
}

void time_upsample_shuffle(const void* y, const float* bias, void* out, DType dtype,
                           std::int64_t batch, std::int64_t frames, std::int64_t positions,
                           std::int64_t channels, bool drop_first, int threads) {
  detail::require(y && out, "time_upsample_shuffle: y and out must be non-null");
  detail::require(frames > 0 && channels > 0, "time_upsample_shuffle: need frames, channels > 0");
  detail::dispatch_float(dtype, "time_upsample_shuffle", [&](auto tag) {
    using T = decltype(tag);
    upsample_impl<T>(static_cast<const T*>(y), bias, static_cast<T*>(out), batch, frames,
                     positions, channels, drop_first, threads);
  });
}

}  // namespace cpu
}  // namespace cdt_fast
