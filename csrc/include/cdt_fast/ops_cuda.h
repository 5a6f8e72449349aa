// CUDA twins of the cdt_fast::cpu stages (same arguments, device pointers), enqueued on `stream`.
// They never allocate, never synchronise and are CUDA-graph capturable; the linear attention takes
// its fp32 scratch from the caller (linear_attention_workspace_floats). Launch errors throw
// std::runtime_error. Each call runs on `device`, restoring the caller's current device after.
#pragma once

#include <cuda_runtime_api.h>

#include "cdt_fast/ops.h"

namespace cdt_fast {
namespace cuda {
void channel_norm(const ChannelNormArgs& args, int device, cudaStream_t stream);
void linear_attention(const LinearAttentionArgs& args, float* workspace, int device,
                      cudaStream_t stream);
void time_downsample_gather(const void* x, const void* past, void* cols, DType dtype,
                            std::int64_t batch, std::int64_t frames, std::int64_t positions,
                            std::int64_t channels, PadMode pad_mode, int device,
                            cudaStream_t stream);
void time_upsample_shuffle(const void* y, const float* bias, void* out, DType dtype,
                           std::int64_t batch, std::int64_t frames, std::int64_t positions,
                           std::int64_t channels, bool drop_first, int device, cudaStream_t stream);
void causal_conv3d_history(const void* x, const void* past, void* out, DType dtype,
                           std::int64_t batch, std::int64_t frames, std::int64_t past_frames,
                           std::int64_t frame_elems, std::int64_t history, int device,
                           cudaStream_t stream);
void ddim_update(const DdimArgs& args, int device, cudaStream_t stream);
void to_uint8_frames(const void* x, DType dtype, std::int64_t numel, std::uint8_t* frames,
                     int device, cudaStream_t stream);
}  // namespace cuda
}  // namespace cdt_fast
