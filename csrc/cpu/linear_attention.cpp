// Linear attention between its projections: softmax of k over positions, context = k v^T per
// frame and head (fp32), softmax of q over channels * scale, out = context^T q.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

// The hot loops, cloned for AVX2 / AVX-512 on x86-64 GCC (picked at load time, so the build stays
// portable); elsewhere the compiler's baseline vectorisation.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define CDT_FAST_CLONES __attribute__((target_clones("default", "arch=haswell", "arch=skylake-avx512")))
#else
#define CDT_FAST_CLONES
#endif

namespace cdt_fast {
namespace cpu {
namespace {

// exp(x) for x <= ~88 with ~1 ulp error (Cephes' expf: 2^n * a degree-6 polynomial), written
// branch-free so the loops below vectorise (libm's expf does not). Inputs here are x - max <= 0;
// below -87 it returns ~1e-38 instead of a denormal or 0, invisible next to a softmax sum >= 1.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

// out[i] = exp(x[i] - shift[i]) * mul[i]  (mul may be null: 1).
CDT_FAST_CLONES void exp_shifted(float* __restrict out, const float* __restrict x,
                                 const float* __restrict shift, const float* __restrict mul,
                                 std::int64_t n) {
  if (mul) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = exp_approx(x[i] - shift[i]) * mul[i];
  } else {
    for (std::int64_t i = 0; i < n; ++i) out[i] = exp_approx(x[i] - shift[i]);
  }
}

// rows[r][:] += sum_j p[j][r] * v[j][:] for 4 positions j at once: one pass over the context rows
// per 4 positions instead of per position.
CDT_FAST_CLONES void rank4_update(float* __restrict ctx, const float* __restrict p,
                                  const float* __restrict v, std::int64_t d) {
  const float* v0 = v;
  const float* v1 = v + d;
  const float* v2 = v + 2 * d;
  const float* v3 = v + 3 * d;
  for (std::int64_t i = 0; i < d; ++i) {
    const float p0 = p[i], p1 = p[d + i], p2 = p[2 * d + i], p3 = p[3 * d + i];
    float* row = ctx + i * d;
    for (std::int64_t e = 0; e < d; ++e) row[e] += p0 * v0[e] + p1 * v1[e] + p2 * v2[e] + p3 * v3[e];
  }
}

// acc[j][:] = sum_i p[j][i] * ctx[i][:] for 4 positions j: one pass over ctx per 4 positions.
CDT_FAST_CLONES void mix4(float* __restrict acc, const float* __restrict p,
                          const float* __restrict ctx, std::int64_t d) {
  for (std::int64_t k = 0; k < 4 * d; ++k) acc[k] = 0.f;
  for (std::int64_t i = 0; i < d; ++i) {
    const float p0 = p[i], p1 = p[d + i], p2 = p[2 * d + i], p3 = p[3 * d + i];
    const float* row = ctx + i * d;
    for (std::int64_t e = 0; e < d; ++e) {
      const float c = row[e];
      acc[e] += p0 * c;
      acc[d + e] += p1 * c;
      acc[2 * d + e] += p2 * c;
      acc[3 * d + e] += p3 * c;
    }
  }
}

template <typename T>
void linear_attention_impl(const LinearAttentionArgs& a, int threads) {
  const T* qkv = static_cast<const T*>(a.qkv);
  T* out = static_cast<T*>(a.out);
  const std::int64_t N = a.positions, d = a.dim, hidden = a.heads * a.dim, stride = 3 * hidden;
  const std::int64_t pairs = a.frames * a.heads;
  std::vector<float> context(static_cast<std::size_t>(pairs * d * d), 0.f);
  const int nt = detail::omp_threads(threads);

  // Context per (frame, head), 4 positions per pass (missing positions contribute p = 0).
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> kmax(d), kinv(d), p(4 * d), v(4 * d), acc(4 * d);
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
      for (std::int64_t n = 0; n < N; ++n) {
        for (std::int64_t i = 0; i < d; ++i) v[i] = detail::to_float(k[n * stride + i]);
        exp_shifted(p.data(), v.data(), kmax.data(), nullptr, d);
        for (std::int64_t i = 0; i < d; ++i) kinv[i] += p[i];
      }
      for (std::int64_t i = 0; i < d; ++i) kinv[i] = 1.f / kinv[i];
      for (std::int64_t n0 = 0; n0 < N; n0 += 4) {
        for (std::int64_t j = 0; j < 4; ++j) {
          const std::int64_t n = n0 + j;
          float* pj = p.data() + j * d;
          float* vj = v.data() + j * d;
          if (n >= N) {
            std::fill(pj, pj + d, 0.f);
            std::fill(vj, vj + d, 0.f);
            continue;
          }
          for (std::int64_t i = 0; i < d; ++i) vj[i] = detail::to_float(k[n * stride + i]);
          exp_shifted(pj, vj, kmax.data(), kinv.data(), d);
          for (std::int64_t i = 0; i < d; ++i) vj[i] = detail::to_float(vv[n * stride + i]);
        }
        rank4_update(ctx, p.data(), v.data(), d);
      }
    }

    // out[n, e] = sum_i softmax(q[n, :])_i * scale * ctx[i, e], 4 positions of one frame per pass.
    const std::int64_t groups = (N + 3) / 4;
#pragma omp for schedule(static)
    for (std::int64_t fg = 0; fg < a.frames * groups; ++fg) {
      const std::int64_t f = fg / groups, n0 = (fg % groups) * 4;
      for (std::int64_t h = 0; h < a.heads; ++h) {
        for (std::int64_t j = 0; j < 4; ++j) {
          float* pj = p.data() + j * d;
          if (n0 + j >= N) {
            std::fill(pj, pj + d, 0.f);
            continue;
          }
          const T* q = qkv + (f * N + n0 + j) * stride + h * d;
          float qmax = -std::numeric_limits<float>::infinity();
          for (std::int64_t i = 0; i < d; ++i) {
            v[i] = detail::to_float(q[i]);
            qmax = std::max(qmax, v[i]);
          }
          std::fill(v.begin() + d, v.begin() + 2 * d, qmax);
          exp_shifted(pj, v.data(), v.data() + d, nullptr, d);
          float qsum = 0.f;
          for (std::int64_t i = 0; i < d; ++i) qsum += pj[i];
          const float norm = a.scale / qsum;
          for (std::int64_t i = 0; i < d; ++i) pj[i] *= norm;
        }
        mix4(acc.data(), p.data(), context.data() + (f * a.heads + h) * d * d, d);
        for (std::int64_t j = 0; j < 4 && n0 + j < N; ++j) {
          T* o = out + (f * N + n0 + j) * hidden + h * d;
          for (std::int64_t e = 0; e < d; ++e) o[e] = detail::from_float<T>(acc[j * d + e]);
        }
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
