// Linear attention between its projections: softmax of k over positions, context = k v^T per
// frame and head (fp32), softmax of q over channels * scale, out = context^T q.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace cdt_fast {
namespace cpu {
namespace {

template <typename T>
void linear_attention_impl(const LinearAttentionArgs& a, int threads) {
  const T* qkv = static_cast<const T*>(a.qkv);
  T* out = static_cast<T*>(a.out);
  const std::int64_t N = a.positions, d = a.dim, hidden = a.heads * a.dim, stride = 3 * hidden;
  const std::int64_t pairs = a.frames * a.heads;
  std::vector<float> context(static_cast<std::size_t>(pairs * d * d), 0.f);
  const int nt = detail::omp_threads(threads);

  // Context per (frame, head): a rank-1 update per position, vectorised over the v channels.
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> kmax(d), kinv(d), p(d), v(d);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t fh = 0; fh < pairs; ++fh) {
      const std::int64_t f = fh / a.heads, h = fh % a.heads;
      const T* k = qkv + f * N * stride + hidden + h * d;
      const T* vv = qkv + f * N * stride + 2 * hidden + h * d;
      float* ctx = context.data() + fh * d * d;
      std::fill(kmax.begin(), kmax.end(), -std::numeric_limits<float>::infinity());
      std::fill(kinv.begin(), kinv.end(), 0.f);
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t i = 0; i < d; ++i) kmax[i] = std::max(kmax[i], detail::to_float(k[n * stride + i]));
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t i = 0; i < d; ++i) kinv[i] += std::exp(detail::to_float(k[n * stride + i]) - kmax[i]);
      for (std::int64_t i = 0; i < d; ++i) kinv[i] = 1.f / kinv[i];
      for (std::int64_t n = 0; n < N; ++n) {
        for (std::int64_t i = 0; i < d; ++i) {
          p[i] = std::exp(detail::to_float(k[n * stride + i]) - kmax[i]) * kinv[i];
          v[i] = detail::to_float(vv[n * stride + i]);
        }
        for (std::int64_t i = 0; i < d; ++i) {
          const float pi = p[i];
          float* row = ctx + i * d;
          for (std::int64_t e = 0; e < d; ++e) row[e] += pi * v[e];
        }
      }
    }

    // out[n, e] = sum_i softmax(q[n, :])_i * scale * ctx[i, e], one position per iteration.
    std::vector<float> acc(d);
#pragma omp for schedule(static)
    for (std::int64_t fn = 0; fn < a.frames * N; ++fn) {
      const std::int64_t f = fn / N;
      for (std::int64_t h = 0; h < a.heads; ++h) {
        const T* q = qkv + fn * stride + h * d;
        const float* ctx = context.data() + (f * a.heads + h) * d * d;
        float qmax = -std::numeric_limits<float>::infinity();
        for (std::int64_t i = 0; i < d; ++i) {
          p[i] = detail::to_float(q[i]);
          qmax = std::max(qmax, p[i]);
        }
        float qsum = 0.f;
        for (std::int64_t i = 0; i < d; ++i) {
          p[i] = std::exp(p[i] - qmax);
          qsum += p[i];
        }
        const float qinv = 1.f / qsum;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (std::int64_t i = 0; i < d; ++i) {
          const float pi = p[i] * qinv * a.scale;
          const float* row = ctx + i * d;
          for (std::int64_t e = 0; e < d; ++e) acc[e] += pi * row[e];
        }
        T* o = out + fn * hidden + h * d;
        for (std::int64_t e = 0; e < d; ++e) o[e] = detail::from_float<T>(acc[e]);
      }
    }
  }
}

}  // namespace

void linear_attention(const LinearAttentionArgs& args, int threads) {
  detail::require(args.qkv && args.out, "linear_attention: qkv and out must be non-null");
  detail::require(args.frames >= 0 && args.positions > 0 && args.heads > 0 && args.dim > 0,
                  "linear_attention: need frames >= 0 and positions, heads, dim > 0");
  detail::dispatch_float(args.dtype, "linear_attention", [&](auto tag) {
    linear_attention_impl<decltype(tag)>(args, threads);
  });
}

}  // namespace cpu
}  // namespace cdt_fast
