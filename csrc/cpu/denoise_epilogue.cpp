// The single-step denoise epilogue: DDIM x-prediction update, optional clamp of x0, and uint8
// frames, in one elementwise pass (fp32 arithmetic in upstream's order).
#include <cmath>

#include "cdt_fast/detail/frames.h"
#include "common.h"

namespace cdt_fast {
namespace cpu {
namespace {

inline std::uint8_t frame_value(float v) {
  v = v < -1.f ? -1.f : (v > 1.f ? 1.f : v);
  // nearbyint rounds half to even under the default rounding mode, as torch.round.
  return static_cast<std::uint8_t>(std::nearbyint((v + 1.f) / 2.f * 255.f));
}

template <typename T>
void ddim_impl(const DdimArgs& a, int threads) {
  const T* xt = static_cast<const T*>(a.x_t);
  const T* x0 = static_cast<const T*>(a.x0);
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
  for (std::int64_t i = 0; i < a.numel; ++i) {
    const float v = cdt_fast::detail::ddim_value(detail::to_float(xt[i]), detail::to_float(x0[i]),
                                                 a.a, a.b, a.c, a.d, a.clamp);
    if (a.x_next) a.x_next[i] = v;
    if (a.frames) a.frames[i] = frame_value(v);
  }
}

template <typename T>
void uint8_impl(const T* x, std::int64_t n, std::uint8_t* frames, int threads) {
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
  for (std::int64_t i = 0; i < n; ++i) frames[i] = frame_value(detail::to_float(x[i]));
}

}  // namespace

void ddim_update(const DdimArgs& args, int threads) {
  detail::require(args.x_t && args.x0, "ddim_update: x_t and x0 must be non-null");
  detail::require(args.x_next || args.frames, "ddim_update: give x_next and/or frames");
  detail::dispatch_float(args.dtype, "ddim_update", [&](auto tag) {
    ddim_impl<decltype(tag)>(args, threads);
  });
}

void to_uint8(const void* x, DType dtype, std::int64_t numel, std::uint8_t* frames, int threads) {
  detail::require(x && frames, "to_uint8: x and frames must be non-null");
  detail::dispatch_float(dtype, "to_uint8", [&](auto tag) {
    using T = decltype(tag);
    uint8_impl<T>(static_cast<const T*>(x), numel, frames, threads);
  });
}

}  // namespace cpu
}  // namespace cdt_fast
