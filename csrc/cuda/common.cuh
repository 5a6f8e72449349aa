// Internal helpers of the CUDA stages: dtype conversion, 128-bit vectors, warp reductions, launch
// checks, device guard, and one generic row-copy kernel for the frame-assembly stages.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cdt_fast/detail/dispatch.h"
#include "cdt_fast/ops.h"

namespace cdt_fast {
namespace cuda {
namespace detail {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N elements moved as one aligned load/store (16 bytes when N * sizeof(T) == 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

// Runs a call on `device` and restores the caller's current device (torch keeps its own).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device_) check(cudaSetDevice(device_), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

inline bool aligned(const void* p, std::size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// Grid for a grid-stride loop over n items with `block` threads (capped; the loop covers the rest).
inline unsigned grid_for(std::int64_t n, int block) {
  const std::int64_t g = (n + block - 1) / block;
  return static_cast<unsigned>(g < 1 ? 1 : (g > 65535 ? 65535 : g));
}

template <typename F>
void dispatch_float(DType dtype, const char* op, F&& f) {
  cdt_fast::detail::dispatch_float<float, __half, __nv_bfloat16>(dtype, op, static_cast<F&&>(f));
}

// dst row r (row_units units of U) = *src_of(r), or zeros where src_of returns null.
template <typename U, typename SrcOf>
__global__ void copy_rows_kernel(U* __restrict__ dst, std::int64_t rows, std::int64_t row_units,
                                 SrcOf src_of) {
  const std::int64_t total = rows * row_units;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / row_units, u = i - r * row_units;
    const U* src = static_cast<const U*>(src_of(r));
    dst[i] = src ? src[u] : U{};
  }
}

// Copies rows of row_bytes with the widest unit every pointer and the row length allow.
template <typename SrcOf>
void copy_rows(void* dst, std::int64_t rows, std::size_t row_bytes, bool sources_aligned16,
               SrcOf src_of, cudaStream_t stream, const char* op) {
  constexpr int kBlock = 256;
  if (rows <= 0 || row_bytes == 0) return;
  if (row_bytes % 16 == 0 && sources_aligned16 && aligned(dst, 16)) {
    const std::int64_t units = static_cast<std::int64_t>(row_bytes / 16);
    copy_rows_kernel<uint4><<<grid_for(rows * units, kBlock), kBlock, 0, stream>>>(
        static_cast<uint4*>(dst), rows, units, src_of);
  } else if (row_bytes % 2 == 0) {
    const std::int64_t units = static_cast<std::int64_t>(row_bytes / 2);
    copy_rows_kernel<std::uint16_t><<<grid_for(rows * units, kBlock), kBlock, 0, stream>>>(
        static_cast<std::uint16_t*>(dst), rows, units, src_of);
  } else {
    const std::int64_t units = static_cast<std::int64_t>(row_bytes);
    copy_rows_kernel<std::uint8_t><<<grid_for(rows * units, kBlock), kBlock, 0, stream>>>(
        static_cast<std::uint8_t*>(dst), rows, units, src_of);
  }
  check_launch(op);
}

}  // namespace detail
}  // namespace cuda
}  // namespace cdt_fast
