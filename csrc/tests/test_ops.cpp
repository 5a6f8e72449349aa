// C++ unit tests of the CPU stages against naive loops in double precision.
// Usage: cdt_fast_tests [op ...] (no argument: every op). Exit status 0 iff all pass.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cdt_fast/ops.h"
#include "cpu/common.h"  // the fp16/bf16 storage types

using namespace cdt_fast;
using Vec = std::vector<float>;

namespace {

std::mt19937 rng(1234);

Vec randn(std::size_t n, float scale = 1.f) {
  std::normal_distribution<float> dist(0.f, scale);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

bool close(const Vec& got, const std::vector<double>& want, double atol, double rtol, const char* what) {
  if (got.size() != want.size()) {
    std::printf("  %s: size %zu != %zu\n", what, got.size(), want.size());
    return false;
  }
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= atol + rtol * std::fabs(want[i]))) {
      std::printf("  %s: element %zu: got %.8g, want %.8g\n", what, i, got[i], want[i]);
      return false;
    }
  }
  return true;
}

bool channel_norm() {
  const int B = 2, R = 3 * 5 * 7, C = 13;  // rows per sample, channels not a power of two
  Vec x = randn(B * R * C, 2.f), g = randn(C), b = randn(C), tb = randn(B * C), res = randn(B * R * C);
  Vec y(x.size());
  ChannelNormArgs a;
  a.x = x.data(); a.y = y.data(); a.rows = B * R; a.channels = C; a.rows_per_sample = R;
  a.gamma = g.data(); a.beta = b.data(); a.relu = true; a.time_bias = tb.data(); a.residual = res.data();
  cpu::channel_norm(a);
  std::vector<double> want(x.size());
  for (int r = 0; r < B * R; ++r) {
    double mean = 0, var = 0;
    for (int c = 0; c < C; ++c) mean += x[r * C + c];
    mean /= C;
    for (int c = 0; c < C; ++c) var += (x[r * C + c] - mean) * (x[r * C + c] - mean);
    var /= C;
    for (int c = 0; c < C; ++c) {
      double v = (x[r * C + c] - mean) / std::sqrt(var + 1e-5) * g[c] + b[c];
      v = v > 0 ? v : 0;
      want[r * C + c] = v + tb[(r / R) * C + c] + res[r * C + c];
    }
  }
  return close(y, want, 1e-5, 1e-5, "channel_norm");
}

bool linear_attention() {
  const int F = 3, N = 17, H = 2, D = 5, hidden = H * D;
  const float scale = 0.37f;
  Vec qkv = randn(F * N * 3 * hidden), out(F * N * hidden);
  LinearAttentionArgs a;
  a.qkv = qkv.data(); a.out = out.data(); a.frames = F; a.positions = N; a.heads = H; a.dim = D;
  a.scale = scale;
  cpu::linear_attention(a);
  std::vector<double> want(out.size());
  auto at = [&](int f, int n, int part, int h, int i) {
    return static_cast<double>(qkv[(f * N + n) * 3 * hidden + part * hidden + h * D + i]);
  };
  for (int f = 0; f < F; ++f)
    for (int h = 0; h < H; ++h) {
      std::vector<double> ctx(D * D, 0.0);
      for (int i = 0; i < D; ++i) {
        double m = -1e300, s = 0;
        for (int n = 0; n < N; ++n) m = std::max(m, at(f, n, 1, h, i));
        for (int n = 0; n < N; ++n) s += std::exp(at(f, n, 1, h, i) - m);
        for (int n = 0; n < N; ++n)
          for (int e = 0; e < D; ++e) ctx[i * D + e] += std::exp(at(f, n, 1, h, i) - m) / s * at(f, n, 2, h, e);
      }
      for (int n = 0; n < N; ++n) {
        double m = -1e300, s = 0;
        for (int i = 0; i < D; ++i) m = std::max(m, at(f, n, 0, h, i));
        for (int i = 0; i < D; ++i) s += std::exp(at(f, n, 0, h, i) - m);
        for (int e = 0; e < D; ++e) {
          double acc = 0;
          for (int i = 0; i < D; ++i) acc += std::exp(at(f, n, 0, h, i) - m) / s * scale * ctx[i * D + e];
          want[(f * N + n) * hidden + h * D + e] = acc;
        }
      }
    }
  return close(out, want, 1e-5, 1e-5, "linear_attention");
}

// seq = [front | x]: the downsample's padded input, built the obvious way.
bool time_downsample() {
  const int B = 2, P = 3, C = 5;
  bool ok = true;
  for (int T : {1, 2, 4, 5})
    for (bool has_past : {false, true})
      for (PadMode mode : {PadMode::kZeros, PadMode::kReplicate}) {
        if (has_past && T % 2) continue;
        Vec x = randn(B * T * P * C), past = randn(B * P * C);
        const int front = has_past ? 1 : 2, L = T + front, To = (L - 3) / 2 + 1;
        Vec cols(B * To * P * 3 * C);
        cpu::time_downsample_gather(x.data(), has_past ? past.data() : nullptr, cols.data(),
                                    DType::kFloat32, B, T, P, C, mode);
        std::vector<double> want(cols.size());
        for (int b = 0; b < B; ++b)
          for (int s = 0; s < L; ++s)
            for (int p = 0; p < P; ++p)
              for (int c = 0; c < C; ++c) {
                double v;
                if (s >= front) v = x[((b * T + s - front) * P + p) * C + c];
                else if (has_past) v = past[(b * P + p) * C + c];
                else v = mode == PadMode::kZeros ? 0.0 : x[((b * T) * P + p) * C + c];
                for (int j = 0; j < To; ++j)
                  for (int k = 0; k < 3; ++k)
                    if (2 * j + k == s) want[(((b * To + j) * P + p) * 3 + k) * C + c] = v;
              }
        ok &= close(cols, want, 0, 0, "time_downsample_gather");
      }
  return ok;
}

bool time_upsample() {
  const int B = 2, T = 3, P = 4, C = 3;
  bool ok = true;
  for (bool drop : {false, true}) {
    Vec y = randn(B * T * P * 2 * C), bias = randn(2 * C);
    const int To = 2 * T - drop;
    Vec out(B * To * P * C);
    cpu::time_upsample_shuffle(y.data(), bias.data(), out.data(), DType::kFloat32, B, T, P, C, drop);
    std::vector<double> want(out.size());
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int par = 0; par < 2; ++par) {
          const int f = 2 * t + par - drop;
          if (f < 0) continue;
          for (int p = 0; p < P; ++p)
            for (int c = 0; c < C; ++c)
              want[((b * To + f) * P + p) * C + c] =
                  double(y[((b * T + t) * P + p) * 2 * C + 2 * c + par]) + bias[2 * c + par];
        }
    ok &= close(out, want, 1e-6, 1e-6, "time_upsample_shuffle");
  }
  return ok;
}

// The sequence [past | x] per sample as frames of E elements.
std::vector<double> sequence(const Vec& x, const Vec& past, int b, int T, int Tp, int E) {
  std::vector<double> seq;
  for (int f = 0; f < Tp; ++f) seq.insert(seq.end(), &past[(b * Tp + f) * E], &past[(b * Tp + f) * E] + E);
  for (int f = 0; f < T; ++f) seq.insert(seq.end(), &x[(b * T + f) * E], &x[(b * T + f) * E] + E);
  return seq;
}

bool causal_conv3d_history() {
  const int B = 2, E = 6;
  bool ok = true;
  for (int T : {1, 3})
    for (int Tp : {0, 1, 2})
      for (int history : {1, 2, 4}) {
        Vec x = randn(B * T * E), past = randn(B * Tp * E);
        const int n = std::min(history, T + Tp);
        Vec out(B * n * E);
        cpu::causal_conv3d_history(x.data(), Tp ? past.data() : nullptr, out.data(), DType::kFloat32,
                                   B, T, Tp, E, history);
        std::vector<double> want;
        for (int b = 0; b < B; ++b) {
          auto seq = sequence(x, past, b, T, Tp, E);
          want.insert(want.end(), seq.end() - n * E, seq.end());
        }
        ok &= close(out, want, 0, 0, "causal_conv3d_history");
      }
  return ok;
}

bool ddim_update() {
  const int n = 1001;
  Vec xt = randn(n), x0 = randn(n, 1.5f), next(n);
  const float coefficients[4] = {1.2f, 0.6f, 0.9f, 0.3f};
  bool ok = true;
  for (bool clamp : {false, true}) {
    DdimArgs a;
    a.x_t = xt.data(); a.x0 = x0.data(); a.numel = n; a.coefficients = coefficients;
    a.clamp = clamp; a.x_next = next.data();
    cpu::ddim_update(a);
    std::vector<double> want(n);
    for (int i = 0; i < n; ++i) {
      double z = clamp ? std::min(1.0, std::max(-1.0, double(x0[i]))) : x0[i];
      want[i] = 0.9 * z + 0.3 * (1.2 * xt[i] - z) / 0.6;
    }
    ok &= close(next, want, 1e-5, 1e-5, "ddim_update");
  }
  return ok;
}

bool to_uint8_frames() {
  Vec x = {-2.f, -1.f, 0.f, 1.f, 3.f, 1.f / 255.f, -0.5f, 0.5f};
  std::vector<std::uint8_t> out(x.size());
  cpu::to_uint8_frames(x.data(), DType::kFloat32, static_cast<std::int64_t>(x.size()), out.data());
  const std::uint8_t want[] = {0, 0, 128, 255, 255, 128, 64, 191};  // 127.5 -> 128 (half to even)
  for (std::size_t i = 0; i < x.size(); ++i)
    if (out[i] != want[i]) {
      std::printf("  to_uint8_frames: element %zu: got %d, want %d\n", i, out[i], want[i]);
      return false;
    }
  return true;
}

bool half_rounding() {
  using cpu::detail::Half;
  using cpu::detail::BFloat16;
  struct Case { float in; std::uint16_t half, bf16; };
  const Case cases[] = {
      {1.0f, 0x3c00, 0x3f80}, {-2.0f, 0xc000, 0xc000}, {65504.f, 0x7bff, 0x4780},
      {65520.f, 0x7c00, 0x4780},         // half: a tie at the top rounds to even = inf
      {1.0f + 1.0f / 2048, 0x3c00, 0x3f80},  // tie below 1 + 2^-10 rounds to even
      {std::ldexp(1.f, -24), 0x0001, 0x3380},   // smallest half subnormal
      {std::ldexp(1.f, -25), 0x0000, 0x3300},   // tie with zero rounds to even (zero)
      {std::ldexp(3.f, -25), 0x0002, 0x33c0}};  // tie 1.5 ulp rounds to even (2)
  bool ok = true;
  for (const Case& c : cases) {
    const auto h = cpu::detail::from_float<Half>(c.in).bits;
    const auto b = cpu::detail::from_float<BFloat16>(c.in).bits;
    if (h != c.half || b != c.bf16) {
      std::printf("  rounding %.9g: half %04x (want %04x), bf16 %04x (want %04x)\n", c.in, h,
                  c.half, b, c.bf16);
      ok = false;
    }
  }
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {  // every finite half round-trips
    if ((bits & 0x7c00) == 0x7c00) continue;
    const Half h{static_cast<std::uint16_t>(bits)};
    if (cpu::detail::from_float<Half>(cpu::detail::to_float(h)).bits != bits) {
      std::printf("  half round trip fails for %04x\n", bits);
      return false;
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<bool()>> tests = {
      {"channel_norm", channel_norm}, {"linear_attention", linear_attention},
      {"time_downsample", time_downsample}, {"time_upsample", time_upsample},
      {"causal_conv3d_history", causal_conv3d_history}, {"ddim_update", ddim_update},
      {"to_uint8_frames", to_uint8_frames}, {"half_rounding", half_rounding}};
  std::vector<std::string> names(argv + 1, argv + argc);
  if (names.empty())
    for (const auto& kv : tests) names.push_back(kv.first);
  int failed = 0;
  for (const auto& name : names) {
    auto it = tests.find(name);
    const bool ok = it != tests.end() && it->second();
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", name.c_str());
    failed += !ok;
  }
  return failed ? 1 : 0;
}
