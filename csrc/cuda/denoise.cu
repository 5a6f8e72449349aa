// The sampler's elementwise steps on CUDA: the DDIM update (+ clamp of x0) and the uint8 frames,
// several elements per thread with vector loads; the DDIM arithmetic is contraction-free, as on the
// CPU. The coefficients are read from device memory by the kernel, so a launch needs no host value.
#include "cdt_fast/detail/frames.h"
#include "cdt_fast/ops_cuda.h"
#include "common.cuh"

namespace cdt_fast {
namespace cuda {
namespace {

using detail::Vec;
constexpr int kBlock = 256;

__device__ __forceinline__ std::uint8_t frame_value(float v) {
  v = fminf(fmaxf(v, -1.f), 1.f);
  return static_cast<std::uint8_t>(rintf(__fmul_rn(__fdiv_rn(__fadd_rn(v, 1.f), 2.f), 255.f)));
}

struct Coefficients {
  float a, b, c, d;
};

__device__ __forceinline__ float ddim(float xt, float x0, const Coefficients& k, bool clamp) {
  if (clamp) x0 = fminf(fmaxf(x0, -1.f), 1.f);
  // Rounded intrinsics keep nvcc from contracting into FMAs: the same bits as the CPU path.
  const float inner = __fdiv_rn(__fsub_rn(__fmul_rn(k.a, xt), x0), k.b);
  return __fadd_rn(__fmul_rn(k.c, x0), __fmul_rn(k.d, inner));
}

template <typename T, int VEC>
__global__ void ddim_kernel(DdimArgs a) {
  const Coefficients k{__ldg(a.coefficients), __ldg(a.coefficients + 1),
                       __ldg(a.coefficients + 2), __ldg(a.coefficients + 3)};
  const std::int64_t n = a.numel / VEC;
  const auto* xt = reinterpret_cast<const Vec<T, VEC>*>(a.x_t);
  const auto* x0 = reinterpret_cast<const Vec<T, VEC>*>(a.x0);
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const Vec<T, VEC> u = xt[i], w = x0[i];
    Vec<float, VEC> next;
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      next.v[j] = ddim(detail::to_float(u.v[j]), detail::to_float(w.v[j]), k, a.clamp);
    reinterpret_cast<Vec<float, VEC>*>(a.x_next)[i] = next;
  }
}

template <typename T, int VEC>
__global__ void uint8_kernel(const T* __restrict__ x, std::int64_t numel, std::uint8_t* __restrict__ out) {
  const std::int64_t n = numel / VEC;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const Vec<T, VEC> u = reinterpret_cast<const Vec<T, VEC>*>(x)[i];
    Vec<std::uint8_t, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = frame_value(detail::to_float(u.v[j]));
    reinterpret_cast<Vec<std::uint8_t, VEC>*>(out)[i] = o;
  }
}

template <typename T>
void launch_ddim(const DdimArgs& a, cudaStream_t stream) {
  constexpr int kVec = 4;  // 16-byte fp32 stores; 8/16-byte input loads
  const bool vec = a.numel % kVec == 0 && detail::aligned(a.x_t, kVec * sizeof(T)) &&
                   detail::aligned(a.x0, kVec * sizeof(T)) && detail::aligned(a.x_next, 16);
  if (vec) {
    ddim_kernel<T, kVec><<<detail::grid_for(a.numel / kVec, kBlock), kBlock, 0, stream>>>(a);
  } else {
    ddim_kernel<T, 1><<<detail::grid_for(a.numel, kBlock), kBlock, 0, stream>>>(a);
  }
  detail::check_launch("ddim_update");
}

template <typename T>
void launch_uint8(const void* x, std::int64_t numel, std::uint8_t* out, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const T* xt = static_cast<const T*>(x);
  if (numel % kVec == 0 && detail::aligned(x, 16) && detail::aligned(out, kVec)) {
    uint8_kernel<T, kVec><<<detail::grid_for(numel / kVec, kBlock), kBlock, 0, stream>>>(xt, numel, out);
  } else {
    uint8_kernel<T, 1><<<detail::grid_for(numel, kBlock), kBlock, 0, stream>>>(xt, numel, out);
  }
  detail::check_launch("to_uint8_frames");
}

}  // namespace

void ddim_update(const DdimArgs& args, int device, cudaStream_t stream) {
  if (!args.x_t || !args.x0 || !args.coefficients || !args.x_next)
    throw std::invalid_argument("ddim_update: x_t, x0, coefficients and x_next must be non-null");
  if (args.numel == 0) return;
  detail::DeviceGuard guard(device);
  detail::dispatch_float(args.dtype, "ddim_update", [&](auto tag) {
    launch_ddim<decltype(tag)>(args, stream);
  });
}

void to_uint8_frames(const void* x, DType dtype, std::int64_t numel, std::uint8_t* frames,
                     int device, cudaStream_t stream) {
  if (!x || !frames) throw std::invalid_argument("to_uint8_frames: x and frames must be non-null");
  if (numel == 0) return;
  detail::DeviceGuard guard(device);
  detail::dispatch_float(dtype, "to_uint8_frames", [&](auto tag) {
    launch_uint8<decltype(tag)>(x, numel, frames, stream);
  });
}

}  // namespace cuda
}  // namespace cdt_fast
