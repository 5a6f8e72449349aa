// Channel LayerNorm + affine + ReLU + time bias + residual in one pass over channels-last rows.
#include <cmath>
#include <vector>

#include "common.h"

namespace cdt_fast {
namespace cpu {
namespace {

template <typename T>
void channel_norm_impl(const ChannelNormArgs& a, int threads) {
  const T* x = static_cast<const T*>(a.x);
  const T* residual = static_cast<const T*>(a.residual);
  T* y = static_cast<T*>(a.y);
  const std::int64_t C = a.channels;
  const float inv_c = 1.0f / static_cast<float>(C);
#pragma omp parallel num_threads(detail::omp_threads(threads))
  {
    std::vector<float> row(static_cast<std::size_t>(C));
    float* v = row.data();
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < a.rows; ++r) {
      const T* xr = x + r * C;
      float sum = 0.f;
      for (std::int64_t c = 0; c < C; ++c) {
        v[c] = detail::to_float(xr[c]);
        sum += v[c];
      }
      const float mean = sum * inv_c;
      float sq = 0.f;  // two-pass variance: no cancellation for large means
      for (std::int64_t c = 0; c < C; ++c) {
        const float dlt = v[c] - mean;
        sq += dlt * dlt;
      }
      const float rstd = 1.0f / std::sqrt(sq * inv_c + a.eps);
      for (std::int64_t c = 0; c < C; ++c) v[c] = (v[c] - mean) * rstd * a.gamma[c] + a.beta[c];
      if (a.relu) {
        for (std::int64_t c = 0; c < C; ++c) v[c] = v[c] > 0.f ? v[c] : 0.f;
      }
      if (a.time_bias) {
        const float* tb = a.time_bias + (r / a.rows_per_sample) * C;
        for (std::int64_t c = 0; c < C; ++c) v[c] += tb[c];
      }
      if (residual) {
        const T* rr = residual + r * C;
        for (std::int64_t c = 0; c < C; ++c) v[c] += detail::to_float(rr[c]);
      }
      T* yr = y + r * C;
      for (std::int64_t c = 0; c < C; ++c) yr[c] = detail::from_float<T>(v[c]);
    }
  }
}

}  // namespace

void channel_norm(const ChannelNormArgs& args, int threads) {
  detail::require(args.x && args.y && args.gamma && args.beta,
                  "channel_norm: x, y, gamma and beta must be non-null");
  detail::require(args.rows >= 0 && args.channels > 0, "channel_norm: need rows >= 0, channels > 0");
  detail::require(args.rows_per_sample > 0, "channel_norm: rows_per_sample must be > 0");
  detail::dispatch_float(args.dtype, "channel_norm", [&](auto tag) {
    channel_norm_impl<decltype(tag)>(args, threads);
  });
}

}  // namespace cpu
}  // namespace cdt_fast
