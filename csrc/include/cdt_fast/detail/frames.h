// Where each output frame of the time-axis stages comes from: one definition shared by the CPU
// loops and the CUDA kernels (and so by construction identical on both).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cdt_fast/ops.h"

#if defined(__CUDACC__)
#define CDT_HD __host__ __device__ __forceinline__
#else
#define CDT_HD inline
#endif

namespace cdt_fast {
namespace detail {

enum class Source : int { kZero = 0, kPast = 1, kX = 2 };

struct FrameSource {
  Source source;
  std::int64_t frame;  // index into past or x
};

// Frame s of seq = [past (past_frames) | x].
CDT_HD FrameSource seq_frame(std::int64_t s, std::int64_t past_frames) {
  return s < past_frames ? FrameSource{Source::kPast, s} : FrameSource{Source::kX, s - past_frames};
}

CDT_HD std::int64_t history_frames(std::int64_t frames, std::int64_t past_frames,
                                   std::int64_t history) {
  const std::int64_t total = frames + past_frames;
  return total < history ? total : history;
}

// Frame f of the last history_frames(...) frames of seq.
CDT_HD FrameSource history_source(std::int64_t f, std::int64_t frames, std::int64_t past_frames,
                                  std::int64_t history) {
  const std::int64_t total = frames + past_frames;
  return seq_frame(total - history_frames(frames, past_frames, history) + f, past_frames);
}

// Tap k of output frame j of the stride-2 temporal downsample over [front | x], front = past
// (1 frame) or 2 pad frames.
CDT_HD FrameSource downsample_source(std::int64_t j, int k, bool has_past, PadMode pad_mode) {
  const std::int64_t f = 2 * j + k;
  if (has_past) return f == 0 ? FrameSource{Source::kPast, 0} : FrameSource{Source::kX, f - 1};
  if (f < 2) {
    return pad_mode == PadMode::kZeros ? FrameSource{Source::kZero, 0}
                                       : FrameSource{Source::kX, 0};
  }
  return FrameSource{Source::kX, f - 2};
}

// Clamp to [-1, 1] without branches (minss/maxss on CPU: vectorises; NaN stays NaN there).
CDT_HD float clamp_unit(float x) {
#if defined(__CUDA_ARCH__)
  return fminf(fmaxf(x, -1.f), 1.f);
#else
  return std::min(std::max(x, -1.f), 1.f);
#endif
}

// The DDIM update with upstream's order of operations.
CDT_HD float ddim_value(float x_t, float x0, float a, float b, float c, float d, bool clamp) {
  if (clamp) x0 = clamp_unit(x0);
  const float inner = (a * x_t - x0) / b;
  return c * x0 + d * inner;
}

}  // namespace detail
}  // namespace cdt_fast
