// The dtype switch of every stage: calls f with a value of the storage type for `dtype`
// (the CPU and CUDA builds pass their own 16-bit types).
#pragma once

#include <stdexcept>
#include <string>

#include "cdt_fast/ops.h"

namespace cdt_fast {
namespace detail {

template <typename F32, typename F16, typename BF16, typename F>
void dispatch_float(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(F32{}); return;
    case DType::kFloat16: f(F16{}); return;
    case DType::kBFloat16: f(BF16{}); return;
    default:
      throw std::invalid_argument(std::string(op) + ": dtype must be float32, float16 or "
                                  "bfloat16, got " + dtype_name(dtype));
  }
}

}  // namespace detail
}  // namespace cdt_fast
