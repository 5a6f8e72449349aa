// Shared by the CPU and CUDA builds: dtype facts and shape arithmetic of the public header.
#include <stdexcept>

#include "cdt_fast/detail/attention_splits.h"
#include "cdt_fast/ops.h"

namespace cdt_fast {

std::size_t element_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kUInt8: return 1;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kUInt8: return "uint8";
  }
  return "unknown";
}

std::int64_t time_downsample_frames(std::int64_t frames, bool has_past) {
  const std::int64_t padded = frames + (has_past ? 1 : 2);
  return padded < 3 ? 0 : (padded - 3) / 2 + 1;
}

std::size_t linear_attention_workspace_floats(std::int64_t frames, std::int64_t positions,
                                              std::int64_t heads, std::int64_t dim) {
  // k max and 1/sum per (frame, head, channel); one partial context per (position split, frame,
  // head), the first of which receives their sum; q max and 1/sum per (frame, position, head).
  const std::int64_t splits = detail::attention_position_splits(frames, positions, heads, dim);
  return static_cast<std::size_t>(frames * heads * dim * 2 + splits * frames * heads * dim * dim +
                                  frames * positions * heads * 2);
}

}  // namespace cdt_fast
