// The memory halves of the temporal resampling convs on CUDA: the stride-2 tap gather (128-bit row
// copies) and the time pixel-shuffle (one 128-bit load of 2K interleaved channels -> two K-wide
// stores, one per output frame), bias added in fp32.
#include "cdt_fast/detail/frames.h"
#include "cdt_fast/ops_cuda.h"
#include "common.cuh"

namespace cdt_fast {
namespace cuda {
namespace {

using cdt_fast::detail::FrameSource;
using cdt_fast::detail::Source;
using detail::Vec;

// Row r of cols = tap (r % 3) of output voxel (b, j, p).
struct GatherSource {
  const unsigned char* x;
  const unsigned char* past;
  std::int64_t frames, out_frames, positions;
  std::size_t row_bytes;
  PadMode pad_mode;
  __device__ const void* operator()(std::int64_t r) const {
    const int k = static_cast<int>(r % 3);
    const std::int64_t v = r / 3, p = v % positions, bj = v / positions;
    const std::int64_t b = bj / out_frames, j = bj % out_frames;
    const FrameSource s = cdt_fast::detail::downsample_source(j, k, past != nullptr, pad_mode);
    if (s.source == Source::kZero) return nullptr;
    if (s.source == Source::kPast) return past + (b * positions + p) * row_bytes;
    return x + ((b * frames + s.frame) * positions + p) * row_bytes;
  }
};

// Thread i handles K channels of one output voxel pair: y[b, t, p, 2c0 : 2c0 + 2K].
template <typename T, int K>
__global__ void upsample_kernel(const T* __restrict__ y, const float* __restrict__ bias,
                                T* __restrict__ out, std::int64_t batch, std::int64_t frames,
                                std::int64_t positions, std::int64_t C, bool drop_first) {
  const std::int64_t groups = C / K, out_frames = 2 * frames - (drop_first ? 1 : 0);
  const std::int64_t total = batch * frames * positions * groups;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t g = i % groups, v = i / groups;  // v = (b * frames + t) * positions + p
    const std::int64_t p = v % positions, bt = v / positions, t = bt % frames, b = bt / frames;
    Vec<T, 2 * K> in;
    if constexpr (K == 1) {  // the unaligned fallback: element loads only
      in.v[0] = y[v * 2 * C + 2 * g];
      in.v[1] = y[v * 2 * C + 2 * g + 1];
    } else {
      in = *reinterpret_cast<const Vec<T, 2 * K>*>(y + v * 2 * C + g * 2 * K);
    }
#pragma unroll
    for (int parity = 0; parity < 2; ++parity) {
      const std::int64_t f = 2 * t + parity - (drop_first ? 1 : 0);
      if (f < 0) continue;
      Vec<T, K> o;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        float val = detail::to_float(in.v[2 * j + parity]);
        if (bias) val += bias[g * 2 * K + 2 * j + parity];
        o.v[j] = detail::from_float<T>(val);
      }
      T* dst = out + ((b * out_frames + f) * positions + p) * C + g * K;
      if constexpr (K == 1) {
        *dst = o.v[0];
      } else {
        *reinterpret_cast<Vec<T, K>*>(dst) = o;
      }
    }
  }
}

template <typename T>
void launch_upsample(const void* y, const float* bias, void* out, std::int64_t batch,
                     std::int64_t frames, std::int64_t positions, std::int64_t C, bool drop_first,
                     cudaStream_t stream) {
  constexpr int kK = 8 / sizeof(T);  // 2K elements = one 16-byte load
  constexpr int kBlock = 256;
  const T* yt = static_cast<const T*>(y);
  T* ot = static_cast<T*>(out);
  if (C % kK == 0 && detail::aligned(y, 16) && detail::aligned(out, 8)) {
    const std::int64_t n = batch * frames * positions * (C / kK);
    upsample_kernel<T, kK><<<detail::grid_for(n, kBlock), kBlock, 0, stream>>>(
        yt, bias, ot, batch, frames, positions, C, drop_first);
  } else {
    const std::int64_t n = batch * frames * positions * C;
    upsample_kernel<T, 1><<<detail::grid_for(n, kBlock), kBlock, 0, stream>>>(
        yt, bias, ot, batch, frames, positions, C, drop_first);
  }
  detail::check_launch("time_upsample_shuffle");
}

}  // namespace

void time_downsample_gather(const void* x, const void* past, void* cols, DType dtype,
                            std::int64_t batch, std::int64_t frames, std::int64_t positions,
                            std::int64_t channels, PadMode pad_mode, int device,
                            cudaStream_t stream) {
  const std::int64_t out_frames = time_downsample_frames(frames, past != nullptr);
  if (!x || !cols || out_frames <= 0)
    throw std::invalid_argument("time_downsample_gather: x, cols non-null and enough frames");
  detail::DeviceGuard guard(device);
  const std::size_t row_bytes = static_cast<std::size_t>(channels) * element_size(dtype);
  const GatherSource src{static_cast<const unsigned char*>(x),
                         static_cast<const unsigned char*>(past), frames, out_frames, positions,
                         row_bytes, pad_mode};
  detail::copy_rows(cols, batch * out_frames * positions * 3, row_bytes,
                    detail::aligned(x, 16) && (!past || detail::aligned(past, 16)), src, stream,
                    "time_downsample_gather");
}

void time_upsample_shuffle(const void* y, const float* bias, void* out, DType dtype,
                           std::int64_t batch, std::int64_t frames, std::int64_t positions,
                           std::int64_t channels, bool drop_first, int device,
                           cudaStream_t stream) {
  if (!y || !out || frames <= 0 || channels <= 0)
    throw std::invalid_argument("time_upsample_shuffle: y, out non-null; frames, channels > 0");
  detail::DeviceGuard guard(device);
  detail::dispatch_float(dtype, "time_upsample_shuffle", [&](auto tag) {
    launch_upsample<decltype(tag)>(y, bias, out, batch, frames, positions, channels, drop_first,
                                   stream);
  });
}

}  // namespace cuda
}  // namespace cdt_fast
