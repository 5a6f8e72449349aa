// cdt_fast._C: the csrc stages bound through raw pointers, sizes, strides and a stream handle.
//
// A tensor crosses the boundary as a tuple (data_ptr, dtype_code, device, shape, strides) in the
// stage's physical order (channels innermost); None is an absent optional tensor. Nothing here
// includes torch, so one build serves every torch version (see docs/extension.md).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cdt_fast/ops.h"
#if defined(CDT_FAST_WITH_CUDA)
#include <cuda_runtime_api.h>

#include "cdt_fast/ops_cuda.h"
#endif

namespace py = pybind11;
using namespace cdt_fast;

namespace {

#ifndef CDT_FAST_CUDA_ARCHS
#define CDT_FAST_CUDA_ARCHS ""
#endif

struct Arg {
  void* ptr = nullptr;
  DType dtype = DType::kFloat32;
  int device = -1;
  std::vector<std::int64_t> shape, strides;
  explicit operator bool() const { return ptr != nullptr; }
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::string shape_str(const std::vector<std::int64_t>& v) {
  std::ostringstream os;
  os << "(";
  for (std::size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << (v.size() == 1 ? ",)" : ")");
  return os.str();
}

// Parses the tuple and checks it describes a dense row-major buffer of the expected rank/dtype.
Arg parse(const py::object& obj, const char* name, int rank, bool optional = false) {
  Arg a;
  if (obj.is_none()) {
    if (!optional) fail(std::string(name) + " is required");
    return a;
  }
  auto t = obj.cast<py::tuple>();
  if (t.size() != 5) fail(std::string(name) + ": expected (ptr, dtype, device, shape, strides)");
  a.ptr = reinterpret_cast<void*>(t[0].cast<std::uintptr_t>());
  a.dtype = static_cast<DType>(t[1].cast<int>());
  a.device = t[2].cast<int>();
  a.shape = t[3].cast<std::vector<std::int64_t>>();
  a.strides = t[4].cast<std::vector<std::int64_t>>();
  if (rank >= 0 && static_cast<int>(a.shape.size()) != rank)
    fail(std::string(name) + ": expected rank " + std::to_string(rank) + ", got shape " +
         shape_str(a.shape));
  if (a.strides.size() != a.shape.size()) fail(std::string(name) + ": strides/shape rank differ");
  std::int64_t expect = 1;
  for (int i = static_cast<int>(a.shape.size()) - 1; i >= 0; --i) {
    if (a.shape[i] != 1 && a.strides[i] != expect)
      fail(std::string(name) + ": must be dense with channels innermost (shape " +
           shape_str(a.shape) + ", strides " + shape_str(a.strides) + ")");
    expect *= a.shape[i];
  }
  if (a.numel() > 0 && !a.ptr) fail(std::string(name) + ": null data pointer");
  if (a.ptr && reinterpret_cast<std::uintptr_t>(a.ptr) % element_size(a.dtype))
    fail(std::string(name) + ": data pointer not aligned to its element size");
  return a;
}

void same_dtype(const Arg& a, const Arg& b, const char* an, const char* bn) {
  if (a && b && a.dtype != b.dtype)
    fail(std::string(bn) + " must have the dtype of " + an + " (" + dtype_name(a.dtype) +
         "), got " + dtype_name(b.dtype));
}

void want_dtype(const Arg& a, DType dt, const char* name) {
  if (a && a.dtype != dt)
    fail(std::string(name) + " must be " + dtype_name(dt) + ", got " + dtype_name(a.dtype));
}

void want_shape(const Arg& a, const std::vector<std::int64_t>& shape, const char* name) {
  if (a && a.shape != shape)
    fail(std::string(name) + ": expected shape " + shape_str(shape) + ", got " + shape_str(a.shape));
}

// The device every given tensor lives on (-1 = CPU); they must agree.
int common_device(std::initializer_list<const Arg*> args) {
  int device = -2;
  for (const Arg* a : args) {
    if (!*a) continue;
    if (device == -2) device = a->device;
    else if (a->device != device) fail("all tensors must be on the same device");
  }
  if (device >= 0) {
#if !defined(CDT_FAST_WITH_CUDA)
    throw std::runtime_error("cdt_fast._C was built without CUDA; rebuild where nvcc is found");
#endif
  }
  return device < -1 ? -1 : device;
}

#if defined(CDT_FAST_WITH_CUDA)
cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }
#define CDT_DISPATCH(device, cpu_call, cuda_call) \
  do {                                            \
    if ((device) < 0) { cpu_call; } else { cuda_call; } \
  } while (0)
#else
#define CDT_DISPATCH(device, cpu_call, cuda_call) \
  do {                                            \
    (void)(device);                               \
    cpu_call;                                     \
  } while (0)
#endif

void channel_norm(py::object x_, py::object y_, py::object g_, py::object b_, float eps, bool relu,
                  py::object tb_, py::object res_, std::uintptr_t stream, int threads) {
  Arg x = parse(x_, "x", -1), y = parse(y_, "y", -1), g = parse(g_, "gamma", 1),
      b = parse(b_, "beta", 1), tb = parse(tb_, "time_bias", 2, true),
      res = parse(res_, "residual", -1, true);
  if (x.shape.size() < 2) fail("x: expected rank >= 2 [batch, ..., channels]");
  const std::int64_t C = x.shape.back(), batch = x.shape.front();
  want_shape(y, x.shape, "y");
  want_shape(res, x.shape, "residual");
  want_shape(g, {C}, "gamma");
  want_shape(b, {C}, "beta");
  want_shape(tb, {batch, C}, "time_bias");
  same_dtype(x, y, "x", "y");
  same_dtype(x, res, "x", "residual");
  want_dtype(g, DType::kFloat32, "gamma");
  want_dtype(b, DType::kFloat32, "beta");
  want_dtype(tb, DType::kFloat32, "time_bias");
  const int device = common_device({&x, &y, &g, &b, &tb, &res});
  ChannelNormArgs a;
  a.x = x.ptr; a.y = y.ptr; a.dtype = x.dtype; a.rows = x.numel() / C; a.channels = C;
  a.rows_per_sample = batch > 0 && a.rows > 0 ? a.rows / batch : 1;
  a.gamma = static_cast<const float*>(g.ptr); a.beta = static_cast<const float*>(b.ptr);
  a.eps = eps; a.relu = relu; a.time_bias = static_cast<const float*>(tb.ptr); a.residual = res.ptr;
  if (a.rows == 0) return;
  py::gil_scoped_release release;
  CDT_DISPATCH(device, cpu::channel_norm(a, threads),
               cuda::channel_norm(a, device, as_stream(stream)));
}

void linear_attention(py::object qkv_, py::object out_, std::int64_t heads, float scale,
                      py::object ws_, std::uintptr_t stream, int threads) {
  Arg qkv = parse(qkv_, "qkv", 3), out = parse(out_, "out", 3), ws = parse(ws_, "workspace", 1, true);
  const std::int64_t frames = qkv.shape[0], positions = qkv.shape[1];
  if (heads <= 0 || qkv.shape[2] % (3 * heads)) fail("qkv: channels must be 3 * heads * dim");
  const std::int64_t dim = qkv.shape[2] / (3 * heads);
  want_shape(out, {frames, positions, heads * dim}, "out");
  same_dtype(qkv, out, "qkv", "out");
  const int device = common_device({&qkv, &out, &ws});
  LinearAttentionArgs a;
  a.qkv = qkv.ptr; a.out = out.ptr; a.dtype = qkv.dtype; a.frames = frames; a.positions = positions;
  a.heads = heads; a.dim = dim; a.scale = scale;
  if (frames == 0 || positions == 0) return;
  if (device >= 0) {
    want_dtype(ws, DType::kFloat32, "workspace");
    const auto need = static_cast<std::int64_t>(
        linear_attention_workspace_floats(frames, positions, heads, dim));
    if (!ws || ws.numel() < need)
      fail("workspace: CUDA needs " + std::to_string(need) + " fp32 elements");
  }
  py::gil_scoped_release release;
  CDT_DISPATCH(device, cpu::linear_attention(a, threads),
               cuda::linear_attention(a, static_cast<float*>(ws.ptr), device, as_stream(stream)));
}

void time_downsample_gather(py::object x_, py::object past_, py::object cols_, int pad_mode,
                            std::uintptr_t stream, int threads) {
  Arg x = parse(x_, "x", 4), past = parse(past_, "past", 4, true), cols = parse(cols_, "cols", 5);
  const std::int64_t B = x.shape[0], T = x.shape[1], P = x.shape[2], C = x.shape[3];
  const std::int64_t T_out = time_downsample_frames(T, bool(past));
  if (T_out <= 0) fail("x: too few frames for the kernel-3 stride-2 downsample");
  want_shape(past, {B, 1, P, C}, "past");
  want_shape(cols, {B, T_out, P, 3, C}, "cols");
  same_dtype(x, past, "x", "past");
  same_dtype(x, cols, "x", "cols");
  const int device = common_device({&x, &past, &cols});
  const auto mode = static_cast<PadMode>(pad_mode);
  py::gil_scoped_release release;
  CDT_DISPATCH(device,
               cpu::time_downsample_gather(x.ptr, past.ptr, cols.ptr, x.dtype, B, T, P, C, mode, threads),
               cuda::time_downsample_gather(x.ptr, past.ptr, cols.ptr, x.dtype, B, T, P, C, mode,
                                            device, as_stream(stream)));
}

void time_upsample_shuffle(py::object y_, py::object bias_, py::object out_, bool drop_first,
                           std::uintptr_t stream, int threads) {
  Arg y = parse(y_, "y", 4), bias = parse(bias_, "bias", 1, true), out = parse(out_, "out", 4);
  const std::int64_t B = y.shape[0], T = y.shape[1], P = y.shape[2], C2 = y.shape[3];
  if (C2 % 2 || T == 0) fail("y: expected [B, T >= 1, P, 2C]");
  want_shape(bias, {C2}, "bias");
  want_dtype(bias, DType::kFloat32, "bias");
  want_shape(out, {B, 2 * T - (drop_first ? 1 : 0), P, C2 / 2}, "out");
  same_dtype(y, out, "y", "out");
  const int device = common_device({&y, &bias, &out});
  const auto* b = static_cast<const float*>(bias.ptr);
  py::gil_scoped_release release;
  CDT_DISPATCH(device,
               cpu::time_upsample_shuffle(y.ptr, b, out.ptr, y.dtype, B, T, P, C2 / 2, drop_first, threads),
               cuda::time_upsample_shuffle(y.ptr, b, out.ptr, y.dtype, B, T, P, C2 / 2, drop_first,
                                           device, as_stream(stream)));
}

void causal_conv3d_history(py::object x_, py::object past_, py::object out_, std::int64_t history,
                           std::uintptr_t stream, int threads) {
  Arg x = parse(x_, "x", 3), past = parse(past_, "past", 3, true), out = parse(out_, "out", 3);
  const std::int64_t B = x.shape[0], T = x.shape[1], E = x.shape[2];
  const std::int64_t Tp = past ? past.shape[1] : 0;
  if (history < 0) fail("history must be >= 0");
  if (past && (past.shape[0] != B || past.shape[2] != E))
    fail("past: expected [B, frames, frame_elems] matching x " + shape_str(x.shape) + ", got " +
         shape_str(past.shape));
  same_dtype(x, past, "x", "past");
  same_dtype(x, out, "x", "out");
  const int device = common_device({&x, &past, &out});
  const std::int64_t n = T + Tp < history ? T + Tp : history;
  want_shape(out, {B, n, E}, "out");
  py::gil_scoped_release release;
  CDT_DISPATCH(device,
               cpu::causal_conv3d_history(x.ptr, past.ptr, out.ptr, x.dtype, B, T, Tp, E, history,
                                          threads),
               cuda::causal_conv3d_history(x.ptr, past.ptr, out.ptr, x.dtype, B, T, Tp, E, history,
                                           device, as_stream(stream)));
}

// coefficients: (a, b, c, d) as a 4-element fp32 tensor on the device of x_t (read by the kernel).
void ddim_update(py::object xt_, py::object x0_, py::object coef_, bool clamp, py::object next_,
                 std::uintptr_t stream, int threads) {
  Arg xt = parse(xt_, "x_t", 1), x0 = parse(x0_, "x0", 1), coef = parse(coef_, "coefficients", 1),
      next = parse(next_, "x_next", 1);
  want_shape(x0, xt.shape, "x0");
  want_shape(coef, {4}, "coefficients");
  want_shape(next, xt.shape, "x_next");
  same_dtype(xt, x0, "x_t", "x0");
  want_dtype(coef, DType::kFloat32, "coefficients");
  want_dtype(next, DType::kFloat32, "x_next");
  const int device = common_device({&xt, &x0, &coef, &next});
  DdimArgs args;
  args.x_t = xt.ptr; args.x0 = x0.ptr; args.dtype = xt.dtype; args.numel = xt.numel();
  args.coefficients = static_cast<const float*>(coef.ptr); args.clamp = clamp;
  args.x_next = static_cast<float*>(next.ptr);
  if (args.numel == 0) return;
  py::gil_scoped_release release;
  CDT_DISPATCH(device, cpu::ddim_update(args, threads),
               cuda::ddim_update(args, device, as_stream(stream)));
}

void to_uint8_frames(py::object x_, py::object frames_, std::uintptr_t stream, int threads) {
  Arg x = parse(x_, "x", 1), frames = parse(frames_, "frames", 1);
  want_shape(frames, x.shape, "frames");
  want_dtype(frames, DType::kUInt8, "frames");
  const int device = common_device({&x, &frames});
  auto* out = static_cast<std::uint8_t*>(frames.ptr);
  if (x.numel() == 0) return;
  py::gil_scoped_release release;
  CDT_DISPATCH(device, cpu::to_uint8_frames(x.ptr, x.dtype, x.numel(), out, threads),
               cuda::to_uint8_frames(x.ptr, x.dtype, x.numel(), out, device, as_stream(stream)));
}

// "" when this module's (static) CUDA runtime sees a device, else why not (an old driver, say).
std::string cuda_runtime_status() {
#if defined(CDT_FAST_WITH_CUDA)
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  return count > 0 ? "" : "no CUDA device";
#else
  return "built without CUDA";
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cdt_fast csrc stages (raw-pointer ABI; use cdt_fast._cpp_lib, not this module)";
  m.attr("ABI_VERSION") = kAbiVersion;
#if defined(CDT_FAST_WITH_CUDA)
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
#if defined(_OPENMP)
  m.attr("WITH_OPENMP") = true;
#else
  m.attr("WITH_OPENMP") = false;
#endif
  m.attr("CUDA_ARCHS") = CDT_FAST_CUDA_ARCHS;
  m.def("channel_norm", &channel_norm, py::arg("x"), py::arg("y"), py::arg("gamma"), py::arg("beta"),
        py::arg("eps"), py::arg("relu"), py::arg("time_bias").none(true),
        py::arg("residual").none(true), py::arg("stream") = 0, py::arg("threads") = 0);
  m.def("linear_attention", &linear_attention, py::arg("qkv"), py::arg("out"), py::arg("heads"),
        py::arg("scale"), py::arg("workspace").none(true), py::arg("stream") = 0,
        py::arg("threads") = 0);
  m.def("cuda_runtime_status", &cuda_runtime_status);
  m.def("linear_attention_workspace_floats", &linear_attention_workspace_floats);
  m.def("time_downsample_frames", &time_downsample_frames);
  m.def("time_downsample_gather", &time_downsample_gather, py::arg("x"),
        py::arg("past").none(true), py::arg("cols"), py::arg("pad_mode"), py::arg("stream") = 0,
        py::arg("threads") = 0);
  m.def("time_upsample_shuffle", &time_upsample_shuffle, py::arg("y"), py::arg("bias").none(true),
        py::arg("out"), py::arg("drop_first"), py::arg("stream") = 0, py::arg("threads") = 0);
  m.def("causal_conv3d_history", &causal_conv3d_history, py::arg("x"),
        py::arg("past").none(true), py::arg("out"), py::arg("history"), py::arg("stream") = 0,
        py::arg("threads") = 0);
  m.def("ddim_update", &ddim_update, py::arg("x_t"), py::arg("x0"), py::arg("coefficients"),
        py::arg("clamp"), py::arg("x_next"), py::arg("stream") = 0, py::arg("threads") = 0);
  m.def("to_uint8_frames", &to_uint8_frames, py::arg("x"), py::arg("frames"),
        py::arg("stream") = 0, py::arg("threads") = 0);
}
