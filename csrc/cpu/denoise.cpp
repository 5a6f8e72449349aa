// The sampler's elementwise steps: the DDIM x-prediction update (with an optional clamp of x0) and
// the uint8 frames (fp32 arithmetic in upstream's order).
#include <cmath>

#include "cdt_fast/detail/frames.h"
#include "common.h"

namespace cdt_fast {
namespace cpu {
namespace {

inline std::uint8_t frame_value(float v) {
  v = cdt_fast::detail::clamp_unit(v);
  // Adding and removing 2^23 rounds a value in [0, 255] to an integer, half to even (the default
  // rounding mode), as torch.round; unlike libm's nearbyint it inlines and vectorises.
  const float magic = 8388608.0f;
  return static_cast<std::uint8_t>(static_cast<std::int32_t>(((v + 1.f) / 2.f * 255.f + magic) - magic));
}

// One branch-free loop per clamp setting, so each vectorises.
template <typename T, bool kClamp>
void ddim_loop(const DdimArgs& a, int threads) {
  const T* xt = static_cast<const T*>(a.x_t);
  const T* x0 = static_cast<const T*>(a.x0);
  float* next = a.x_next;
  const float ca = a.coefficients[0], cb = a.coefficients[1], cc = a.coefficients[2],
              cd = a.coefficients[3];
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
  for (std::int64_t i = 0; i < a.numel; ++i) {
    next[i] = cdt_fast::detail::ddim_value(detail::to_float(xt[i]), detail::to_float(x0[i]), ca, cb,
                                           cc, cd, kClamp);
  }
}

template <typename T>
void uint8_loop(const T* x, std::int64_t n, std::uint8_t* frames, int threads) {
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
  for (std::int64_t i = 0; i < n; ++i) frames[i] = frame_value(detail::to_float(x[i]));
}

}  // namespace

void ddim_update(const DdimArgs& args, int threads) {
  detail::require(args.x_t && args.x0 && args.coefficients && args.x_next,
                  "ddim_update: x_t, x0, coefficients and x_next must be non-null");
  detail::dispatch_float(args.dtype, "ddim_update", [&](auto tag) {
    using T = decltype(tag);
    if (args.clamp) ddim_loop<T, true>(args, threads);
    else ddim_loop<T, false>(args, threads);
  });
}

void to_uint8_frames(const void* x, DType dtype, std::int64_t numel, std::uint8_t* frames,
                     int threads) {
  detail::require(x && frames, "to_uint8_frames: x and frames must be non-null");
  detail::dispatch_float(dtype, "to_uint8_frames", [&](auto tag) {
    using T = decltype(tag);
    uint8_loop<T>(static_cast<const T*>(x), numel, frames, threads);
  });
}

}  // namespace cpu
}  // namespace cdt_fast
