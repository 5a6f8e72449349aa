// Linear attention between its projections, in kernels over the caller's fp32 scratch:
//  1. k statistics: online max / sum-exp over positions per (frame, channel);
//  2. context = softmax_n(k) v^T per (frame, head): a 32x32-tiled product over positions, split
//     over position chunks so small heads still fill the GPU; each split writes its own partial
//     context, and a second kernel adds the partials in split order into the first. No atomics:
//     the same inputs give the same bits whatever the scheduling (and in every process);
//  3. q statistics: max / sum-exp over the head's channels per position, one warp per row;
//  4. out = context^T softmax_c(q) * scale: a 32x32-tiled product over channels.
// Softmaxed k and q are never written to memory: they are rebuilt from the statistics on load.
// Nothing is allocated or synchronised here, so the sequence can be captured in a CUDA graph.
#include <cfloat>

#include "cdt_fast/detail/attention_splits.h"
#include "cdt_fast/ops_cuda.h"
#include "common.cuh"

namespace cdt_fast {
namespace cuda {
namespace {

constexpr int kTile = static_cast<int>(cdt_fast::detail::kAttentionTile);
constexpr int kRows = 8;  // threadIdx.y extent; each thread owns kTile / kRows outputs

struct Layout {
  std::int64_t frames, positions, heads, dim, hidden, stride;
  float* kmax;
  float* kinv;
  float* context;  // splits partial contexts of frames * heads * dim * dim each; the first: the sum
  float* qmax;
  float* qinv;
};

__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -FLT_MAX) return;
  s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
  m = mn;
}

// grid (ceil(hidden / 32), frames), block (32, kRows).
template <typename T>
__global__ void k_stats_kernel(const T* __restrict__ qkv, Layout L) {
  __shared__ float sm[kRows][kTile], ss[kRows][kTile];
  const std::int64_t f = blockIdx.y;
  const std::int64_t ch = static_cast<std::int64_t>(blockIdx.x) * kTile + threadIdx.x;
  float m = -FLT_MAX, s = 0.f;
  if (ch < L.hidden) {
    const T* k = qkv + f * L.positions * L.stride + L.hidden + ch;
    for (std::int64_t n = threadIdx.y; n < L.positions; n += kRows) {
      const float v = detail::to_float(k[n * L.stride]);
      const float mn = fmaxf(m, v);
      s = s * __expf(m - mn) + __expf(v - mn);
      m = mn;
    }
  }
  sm[threadIdx.y][threadIdx.x] = m;
  ss[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && ch < L.hidden) {
    for (int r = 1; r < kRows; ++r) online_merge(m, s, sm[r][threadIdx.x], ss[r][threadIdx.x]);
    L.kmax[f * L.hidden + ch] = m;
    L.kinv[f * L.hidden + ch] = 1.f / s;
  }
}

// grid (ceil(d / 32) e-tiles, ceil(d / 32) i-tiles, frames * heads * splits), block (32, kRows).
// Writes every element of its split's partial context (zeros for an empty position chunk).
template <typename T>
__global__ void context_kernel(const T* __restrict__ qkv, Layout L, int splits) {
  __shared__ float ks[kTile][kTile + 1], vs[kTile][kTile + 1];
  const std::int64_t fh = blockIdx.z / splits, split = blockIdx.z % splits;
  const std::int64_t f = fh / L.heads, h = fh % L.heads;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.y) * kTile;
  const std::int64_t e0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const std::int64_t chunk = (L.positions + splits - 1) / splits;
  const std::int64_t n_begin = split * chunk;
  const std::int64_t n_end = n_begin + chunk < L.positions ? n_begin + chunk : L.positions;
  const T* base = qkv + f * L.positions * L.stride + h * L.dim;
  const std::int64_t ki = i0 + threadIdx.x;  // the k channel this thread loads
  const bool ki_ok = ki < L.dim;
  const float km = ki_ok ? L.kmax[f * L.hidden + h * L.dim + ki] : 0.f;
  const float kv = ki_ok ? L.kinv[f * L.hidden + h * L.dim + ki] : 0.f;
  const std::int64_t ve = e0 + threadIdx.x;
  float acc[kTile / kRows] = {};
  for (std::int64_t n0 = n_begin; n0 < n_end; n0 += kTile) {
    for (int r = threadIdx.y; r < kTile; r += kRows) {
      const std::int64_t n = n0 + r;
      const bool n_ok = n < n_end;
      ks[r][threadIdx.x] = n_ok && ki_ok
          ? __expf(detail::to_float(base[n * L.stride + L.hidden + ki]) - km) * kv : 0.f;
      vs[r][threadIdx.x] = n_ok && ve < L.dim
          ? detail::to_float(base[n * L.stride + 2 * L.hidden + ve]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int r = 0; r < kTile; ++r) {
      const float v = vs[r][threadIdx.x];
#pragma unroll
      for (int o = 0; o < kTile / kRows; ++o) acc[o] += ks[r][threadIdx.y + o * kRows] * v;
    }
    __syncthreads();
  }
  if (ve >= L.dim) return;
  float* ctx = L.context + (split * L.frames * L.heads + fh) * L.dim * L.dim;
#pragma unroll
  for (int o = 0; o < kTile / kRows; ++o) {
    const std::int64_t i = i0 + threadIdx.y + o * kRows;
    if (i < L.dim) ctx[i * L.dim + ve] = acc[o];
  }
}

// context[j] = partial_0[j] + partial_1[j] + ... in split order (partial_0 is the context).
__global__ void sum_splits_kernel(float* __restrict__ context, std::int64_t partial_floats,
                                  int splits) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       j < partial_floats; j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float sum = context[j];
    for (int s = 1; s < splits; ++s) sum += context[s * partial_floats + j];
    context[j] = sum;
  }
}

// One warp per (frame * position, head): max and 1/sum of exp over the head's q channels.
template <typename T>
__global__ void q_stats_kernel(const T* __restrict__ qkv, Layout L) {
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const std::int64_t rows = L.frames * L.positions * L.heads;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5); r < rows;
       r += static_cast<std::int64_t>(gridDim.x) * warps) {
    const std::int64_t fn = r / L.heads, h = r % L.heads;
    const T* q = qkv + fn * L.stride + h * L.dim;
    float m = -FLT_MAX;
    for (std::int64_t i = lane; i < L.dim; i += 32) m = fmaxf(m, detail::to_float(q[i]));
    m = detail::warp_max(m);
    float s = 0.f;
    for (std::int64_t i = lane; i < L.dim; i += 32) s += __expf(detail::to_float(q[i]) - m);
    s = detail::warp_sum(s);
    if (lane == 0) {
      L.qmax[r] = m;
      L.qinv[r] = 1.f / s;
    }
  }
}

// grid (ceil(N / 32) position tiles, ceil(d / 32) e-tiles, frames * heads), block (32, kRows):
// the position tiles on x, whose limit is 2^31 - 1 (a 4K frame has 259,200; y and z take 65,535).
template <typename T>
__global__ void out_kernel(const T* __restrict__ qkv, T* __restrict__ out, Layout L, float scale) {
  __shared__ float qs[kTile][kTile + 1], cs[kTile][kTile + 1];
  const std::int64_t fh = blockIdx.z, f = fh / L.heads, h = fh % L.heads;
  const std::int64_t n0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const std::int64_t e0 = static_cast<std::int64_t>(blockIdx.y) * kTile;
  const float* ctx = L.context + fh * L.dim * L.dim;
  const std::int64_t ce = e0 + threadIdx.x;
  float acc[kTile / kRows] = {};
  for (std::int64_t i0 = 0; i0 < L.dim; i0 += kTile) {
    for (int r = threadIdx.y; r < kTile; r += kRows) {
      const std::int64_t n = n0 + r, i = i0 + threadIdx.x;
      float p = 0.f;
      if (n < L.positions && i < L.dim) {
        const std::int64_t row = (f * L.positions + n) * L.heads + h;
        const float qv = detail::to_float(qkv[(f * L.positions + n) * L.stride + h * L.dim + i]);
        p = __expf(qv - L.qmax[row]) * L.qinv[row] * scale;
      }
      qs[r][threadIdx.x] = p;  // qs[n][i]
      const std::int64_t ci = i0 + r;
      cs[r][threadIdx.x] = ci < L.dim && ce < L.dim ? ctx[ci * L.dim + ce] : 0.f;  // cs[i][e]
    }
    __syncthreads();
#pragma unroll 8
    for (int i = 0; i < kTile; ++i) {
      const float c = cs[i][threadIdx.x];
#pragma unroll
      for (int o = 0; o < kTile / kRows; ++o) acc[o] += qs[threadIdx.y + o * kRows][i] * c;
    }
    __syncthreads();
  }
  if (ce >= L.dim) return;
#pragma unroll
  for (int o = 0; o < kTile / kRows; ++o) {
    const std::int64_t n = n0 + threadIdx.y + o * kRows;
    if (n < L.positions) out[(f * L.positions + n) * L.hidden + h * L.dim + ce] = detail::from_float<T>(acc[o]);
  }
}

template <typename T>
void launch(const LinearAttentionArgs& a, float* ws, cudaStream_t stream) {
  Layout L{a.frames, a.positions, a.heads, a.dim, a.heads * a.dim, 3 * a.heads * a.dim,
           nullptr, nullptr, nullptr, nullptr, nullptr};
  // The scratch layout of linear_attention_workspace_floats.
  const std::int64_t splits =
      cdt_fast::detail::attention_position_splits(a.frames, a.positions, a.heads, a.dim);
  const std::int64_t partial_floats = a.frames * a.heads * a.dim * a.dim;
  L.kmax = ws;
  L.kinv = L.kmax + a.frames * L.hidden;
  L.context = L.kinv + a.frames * L.hidden;
  L.qmax = L.context + splits * partial_floats;
  L.qinv = L.qmax + a.frames * a.positions * a.heads;
  const T* qkv = static_cast<const T*>(a.qkv);
  const dim3 block(kTile, kRows);
  const unsigned dim_tiles = static_cast<unsigned>((a.dim + kTile - 1) / kTile);
  const std::int64_t pairs = a.frames * a.heads;

  k_stats_kernel<T><<<dim3(static_cast<unsigned>((L.hidden + kTile - 1) / kTile),
                           static_cast<unsigned>(a.frames)), block, 0, stream>>>(qkv, L);
  detail::check_launch("linear_attention k statistics");

  context_kernel<T><<<dim3(dim_tiles, dim_tiles, static_cast<unsigned>(pairs * splits)), block, 0,
                      stream>>>(qkv, L, static_cast<int>(splits));
  detail::check_launch("linear_attention context");
  if (splits > 1) {
    sum_splits_kernel<<<detail::grid_for(partial_floats, 256), 256, 0, stream>>>(
        L.context, partial_floats, static_cast<int>(splits));
    detail::check_launch("linear_attention context sum");
  }

  const std::int64_t q_rows = a.frames * a.positions * a.heads;
  q_stats_kernel<T><<<detail::grid_for(q_rows, 256 / 32), 256, 0, stream>>>(qkv, L);
  detail::check_launch("linear_attention q statistics");

  out_kernel<T><<<dim3(static_cast<unsigned>((a.positions + kTile - 1) / kTile), dim_tiles,
                       static_cast<unsigned>(pairs)), block, 0, stream>>>(
      qkv, static_cast<T*>(a.out), L, a.scale);
  detail::check_launch("linear_attention out");
}

}  // namespace

void linear_attention(const LinearAttentionArgs& args, float* workspace, int device,
                      cudaStream_t stream) {
  if (!args.qkv || !args.out || !workspace || args.positions <= 0 || args.heads <= 0 ||
      args.dim <= 0)
    throw std::invalid_argument("linear_attention: qkv, out, workspace non-null; sizes > 0");
  if (args.frames == 0) return;
  if (args.frames > 65535 || args.frames * args.heads > 65535)
    throw std::invalid_argument("linear_attention: frames * heads must be <= 65535 per call");
  detail::DeviceGuard guard(device);
  detail::dispatch_float(args.dtype, "linear_attention", [&](auto tag) {
    launch<decltype(tag)>(args, workspace, stream);
  });
}

}  // namespace cuda
}  // namespace cdt_fast
