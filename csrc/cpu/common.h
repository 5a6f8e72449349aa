// Internal helpers of the CPU stages: fp16/bf16 storage without compiler extensions, dtype
// dispatch, argument checks.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cdt_fast/detail/dispatch.h"
#include "cdt_fast/ops.h"

namespace cdt_fast {
namespace cpu {
namespace detail {

struct Half { std::uint16_t bits; };
struct BFloat16 { std::uint16_t bits; };

inline float bits_to_float(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline std::uint32_t float_to_bits(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(float v) { return v; }
inline float to_float(BFloat16 v) { return bits_to_float(std::uint32_t(v.bits) << 16); }
inline float to_float(Half v) {
  const std::uint32_t sign = std::uint32_t(v.bits & 0x8000u) << 16;
  std::uint32_t exp = (v.bits >> 10) & 0x1fu, mant = v.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // Subnormal half: exact as mant * 2^-24.
    const float mag = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -mag : mag;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

template <typename T> T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline BFloat16 from_float<BFloat16>(float f) {
  std::uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{std::uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, as torch
  return BFloat16{std::uint16_t(u >> 16)};
}
template <> inline Half from_float<Half>(float f) {
  // Round to nearest even; subnormals are rounded by the FPU through a magic addend.
  std::uint32_t u = float_to_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  std::uint32_t out;
  if (u >= (143u << 23)) {  // >= 65536 (or inf/nan)
    out = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {  // below the smallest normal half
    const std::uint32_t magic = 126u << 23;
    out = float_to_bits(bits_to_float(u) + bits_to_float(magic)) - magic;
  } else {
    const std::uint32_t odd = (u >> 13) & 1u;
    u += (std::uint32_t(15 - 127) << 23) + 0xfffu + odd;
    out = u >> 13;
  }
  return Half{std::uint16_t(out | sign)};
}

template <typename F>
void dispatch_float(DType dtype, const char* op, F&& f) {
  cdt_fast::detail::dispatch_float<float, Half, BFloat16>(dtype, op, static_cast<F&&>(f));
}

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

inline int omp_threads(int threads);

}  // namespace detail
}  // namespace cpu
}  // namespace cdt_fast

#if defined(_OPENMP)
#include <omp.h>
inline int cdt_fast::cpu::detail::omp_threads(int threads) {
  return threads > 0 ? threads : omp_get_max_threads();
}
#else
inline int cdt_fast::cpu::detail::omp_threads(int) { return 1; }
#endif
