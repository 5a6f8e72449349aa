// cdt_fast C++ API: the memory-bound stages of CDT around its GEMMs, on dense channels-last memory.
//
// Every activation is a dense row-major buffer whose innermost dimension is the channel
// ([B, T, H, W, C], i.e. torch.channels_last_3d of a logical [B, C, T, H, W] tensor); "rows" are
// voxels. Channel-mixing products with weights (1x1 projections, the taps of the temporal
// resampling convs) are NOT here: callers run them with their GEMM (torch.matmul, cuBLAS, BLAS)
// and hand the results to these stages. Statistics and arithmetic are fp32 whatever the storage.
//
// CPU functions take `threads` (0 = the OpenMP default); the CUDA twins in ops_cuda.h take a stream.
// Bad arguments throw std::invalid_argument.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cdt_fast {

// Bumped whenever a signature or semantic of this header or of the Python module changes; the
// Python loader refuses a module built with another number.
constexpr int kAbiVersion = 4;

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kUInt8 = 3 };
enum class PadMode : int { kZeros = 0, kReplicate = 1 };

std::size_t element_size(DType dtype);
const char* dtype_name(DType dtype);

// y = LayerNorm_C(x) * g + b (biased variance), then optionally ReLU, + time_bias[sample],
// + residual, in that order. x, y, residual: [rows, C] of `dtype`; g, b: [C] fp32;
// time_bias: [rows / rows_per_sample, C] fp32 (one row per sample) or null; residual or null.
struct ChannelNormArgs {
  const void* x = nullptr;
  void* y = nullptr;
  DType dtype = DType::kFloat32;
  std::int64_t rows = 0;
  std::int64_t channels = 0;
  std::int64_t rows_per_sample = 1;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float eps = 1e-5f;
  bool relu = false;
  const float* time_bias = nullptr;
  const void* residual = nullptr;
};

// Linear attention between its projections. qkv: [frames, positions, 3 * heads * dim] (the qkv
// projection's output, channel = part * heads * dim + head * dim + i for part q, k, v);
// out: [frames, positions, heads * dim] = context^T softmax_channels(q) * scale with
// context = softmax_positions(k) v^T per frame and head.
struct LinearAttentionArgs {
  const void* qkv = nullptr;
  void* out = nullptr;
  DType dtype = DType::kFloat32;
  std::int64_t frames = 0;
  std::int64_t positions = 0;
  std::int64_t heads = 1;
  std::int64_t dim = 0;
  float scale = 1.0f;
};
// fp32 scratch the CUDA twin needs (the CPU version allocates its own).
std::size_t linear_attention_workspace_floats(std::int64_t frames, std::int64_t positions,
                                              std::int64_t heads, std::int64_t dim);

// Causal kernel-3 stride-2 temporal downsample, its gather half: the taps of output frame j are
// frames 2j, 2j+1, 2j+2 of [front | x] where front is `past` (1 frame, a later chunk) or 2 pad
// frames (zeros, or copies of x's frame 0). cols: [B, T_out, P, 3, C] with
// T_out = (T + front - 3) / 2 + 1; the caller multiplies by weight.permute(0, 2, 1) -> [Cout, 3C].
std::int64_t time_downsample_frames(std::int64_t frames, bool has_past);

// 2x temporal upsample, its shuffle half: y: [B, T, P, 2C] (the pointwise conv's output without
// bias), out: [B, 2T - drop_first, P, C] with out frame 2t+p, channel c = y[t, 2c+p] + bias[2c+p].
// bias: [2C] fp32 or null.

// The causal conv's history: per sample, out = the last `out_frames` frames of
// seq = [past (past_frames) | x (frames)], out_frames = min(history, past_frames + frames).

// DDIM x-prediction update in fp32: x_next = c*x0 + d*(a*x_t - x0)/b, x0 clamped to [-1, 1] first
// if `clamp`; x_t and x0 share `dtype` and layout; x_next: fp32 [n] in the same element order.
// coefficients: (a, b, c, d) as 4 fp32 in the memory of the device the call runs on (host memory
// for cpu::, device memory for cuda::), read by the kernel itself: a schedule kept on the GPU
// never crosses to the host, so a step is one launch with no sync and can be graph-captured.
struct DdimArgs {
  const void* x_t = nullptr;
  const void* x0 = nullptr;
  DType dtype = DType::kFloat32;
  std::int64_t numel = 0;
  const float* coefficients = nullptr;
  bool clamp = false;
  float* x_next = nullptr;
};

namespace cpu {
void channel_norm(const ChannelNormArgs& args, int threads = 0);
void linear_attention(const LinearAttentionArgs& args, int threads = 0);
void time_downsample_gather(const void* x, const void* past, void* cols, DType dtype,
                            std::int64_t batch, std::int64_t frames, std::int64_t positions,
                            std::int64_t channels, PadMode pad_mode, int threads = 0);
void time_upsample_shuffle(const void* y, const float* bias, void* out, DType dtype,
                           std::int64_t batch, std::int64_t frames, std::int64_t positions,
                           std::int64_t channels, bool drop_first, int threads = 0);
void causal_conv3d_history(const void* x, const void* past, void* out, DType dtype,
                           std::int64_t batch, std::int64_t frames, std::int64_t past_frames,
                           std::int64_t frame_elems, std::int64_t history, int threads = 0);
void ddim_update(const DdimArgs& args, int threads = 0);
// frames = round((clamp(x, -1, 1) + 1) / 2 * 255) elementwise.
void to_uint8_frames(const void* x, DType dtype, std::int64_t numel, std::uint8_t* frames,
                     int threads = 0);
}  // namespace cpu

}  // namespace cdt_fast
