// Channel LayerNorm + affine + ReLU + time bias + residual: one warp per channels-last row,
// 128-bit loads when the row allows, fp32 two-pass statistics (re-reads hit L1).
#include "cdt_fast/ops_cuda.h"
#include "common.cuh"

namespace cdt_fast {
namespace cuda {
namespace {

using detail::Vec;

template <typename T, int VEC>
__global__ void channel_norm_kernel(ChannelNormArgs a) {
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const std::int64_t C = a.channels, nvec = C / VEC;
  const float inv_c = 1.0f / static_cast<float>(C);
  using V = Vec<T, VEC>;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5);
       r < a.rows; r += static_cast<std::int64_t>(gridDim.x) * warps) {
    const V* xr = reinterpret_cast<const V*>(static_cast<const T*>(a.x) + r * C);
    float sum = 0.f;
    for (std::int64_t i = lane; i < nvec; i += 32) {
      const V v = xr[i];
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum += detail::to_float(v.v[j]);
    }
    const float mean = detail::warp_sum(sum) * inv_c;
    float sq = 0.f;
    for (std::int64_t i = lane; i < nvec; i += 32) {
      const V v = xr[i];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float dlt = detail::to_float(v.v[j]) - mean;
        sq += dlt * dlt;
      }
    }
    const float rstd = rsqrtf(detail::warp_sum(sq) * inv_c + a.eps);
    const float* tb = a.time_bias ? a.time_bias + (r / a.rows_per_sample) * C : nullptr;
    const V* rr = a.residual ? reinterpret_cast<const V*>(static_cast<const T*>(a.residual) + r * C)
                             : nullptr;
    V* yr = reinterpret_cast<V*>(static_cast<T*>(a.y) + r * C);
    for (std::int64_t i = lane; i < nvec; i += 32) {
      const V v = xr[i];
      V res;
      if (rr) res = rr[i];
      V out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const std::int64_t c = i * VEC + j;
        float y = (detail::to_float(v.v[j]) - mean) * rstd * a.gamma[c] + a.beta[c];
        if (a.relu) y = fmaxf(y, 0.f);
        if (tb) y += tb[c];
        if (rr) y += detail::to_float(res.v[j]);
        out.v[j] = detail::from_float<T>(y);
      }
      yr[i] = out;
    }
  }
}

template <typename T>
void launch(const ChannelNormArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kBlock = 256;  // 8 rows per block
  const unsigned grid = detail::grid_for(a.rows, kBlock / 32);
  const bool vec = a.channels % kVec == 0 && detail::aligned(a.x, 16) && detail::aligned(a.y, 16) &&
                   (!a.residual || detail::aligned(a.residual, 16));
  if (vec) {
    channel_norm_kernel<T, kVec><<<grid, kBlock, 0, stream>>>(a);
  } else {
    channel_norm_kernel<T, 1><<<grid, kBlock, 0, stream>>>(a);
  }
  detail::check_launch("channel_norm");
}

}  // namespace

void channel_norm(const ChannelNormArgs& args, int device, cudaStream_t stream) {
  if (!args.x || !args.y || !args.gamma || !args.beta || args.channels <= 0 ||
      args.rows_per_sample <= 0)
    throw std::invalid_argument("channel_norm: x, y, gamma, beta non-null and channels > 0");
  if (args.rows == 0) return;
  detail::DeviceGuard guard(device);
  detail::dispatch_float(args.dtype, "channel_norm", [&](auto tag) {
    launch<decltype(tag)>(args, stream);
  });
}

}  // namespace cuda
}  // namespace cdt_fast
