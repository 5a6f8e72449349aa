"""The sampler's elementwise steps, the DDIM update and the uint8 frames, on each backend: the
Triton kernels and the C++ extension (cdt_fast.cpp_ops; its CUDA build on a GPU)."""

import pytest
import torch

from cdt_fast import _cpp_lib, cpp_ops
from cdt_fast import functional as CF
from cdt_fast.reference.diffusion import DDIMSchedule

triton = pytest.importorskip("triton")
from cdt_fast.kernels.denoise import ddim_update, to_uint8_frames

from . import cpp_backend as cpp
from .cpp_backend import cpp_test, cuda_test
from .graph_stand_in import host_reads_of
from .helpers import DEVICE

SCHEDULE = DDIMSchedule.create(8192, 4)


def test_clamp_and_uint8_rounding_are_exact():
    # With (a, b, c, d) = (1, 1, 0, 1) and x0 = 2, x_next = x_t - x0: clamping x0 (to 1) is
    # visible, and the clamped results sweep exact uint8 rounding ties (k + 0.5 after scaling).
    n = 64
    k = torch.arange(3 * n, device=DEVICE, dtype=torch.float32).reshape(1, 3, 1, 4, n // 4)
    x_t = 1.0 + (2 * (k + 0.5) / 255 - 1)
    x_t[0, 0, 0, 0, :3] = torch.tensor([-5.0, 5.0, 0.0])
    x0 = torch.full_like(x_t, 2.0)
    coef = (1.0, 1.0, 0.0, 1.0)
    for clamp in (False, True):
        x_next = ddim_update(x_t, x0, coef, clamp=clamp)
        expected = CF.ddim_update(x_t, x0, coef, clamp=clamp)
        assert torch.equal(x_next, expected)
        assert torch.equal(to_uint8_frames(x_next), CF.to_uint8_frames(expected))


@pytest.mark.parametrize("clamp", [False, True])
def test_ddim_update_matches_functional(clamp):
    x_t = torch.randn(2, 3, 2, 5, 7, device=DEVICE).to(memory_format=torch.channels_last_3d)
    x0 = (1.5 * torch.randn(2, 3, 2, 5, 7, device=DEVICE)).half()  # a half-precision model's x0
    for step in (0, 2):
        floats = [float(v) for v in SCHEDULE.coefficients(step)]
        on_device = tuple(v.to(DEVICE) for v in SCHEDULE.coefficients(step))
        ref = CF.ddim_update(x_t, x0, floats, clamp=clamp)
        for coef in (floats, on_device):
            got = ddim_update(x_t, x0, coef, clamp=clamp)
            assert got.dtype == torch.float32
            assert got.is_contiguous(memory_format=torch.channels_last_3d)
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_to_uint8_frames_matches_functional_exactly(dtype):
    x = torch.cat(
        [
            torch.linspace(-1.3, 1.3, 105, device=DEVICE),
            2 * (torch.arange(105, device=DEVICE) + 0.5) / 255 - 1,
        ]
    )  # ties, clamping
    x = x.reshape(1, 3, 2, 5, 7).to(dtype).transpose(3, 4)  # strided input
    assert torch.equal(to_uint8_frames(x), CF.to_uint8_frames(x))
    out = torch.empty(1, 2, 7, 5, 3, dtype=torch.uint8, device=DEVICE)
    assert to_uint8_frames(x, out=out) is out


# -- the C++ extension (cdt_fast.cpp_ops; its CUDA build on a GPU) ------------------------------


@cpp_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
def test_cpp_ddim_update(dtype, clamp, layout):
    x_t = cpp.rand(2, 3, 5, 7, 9, dtype=dtype)
    x0 = cpp.rand(2, 3, 5, 7, 9, dtype=dtype, scale=1.5)
    if layout != "contiguous":
        x_t = x_t.contiguous(memory_format=cpp.CL)
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=cpp.CL)
    out = cpp_ops.ddim_update(x_t, x0, cpp.COEFFS, clamp=clamp)
    ref = CF.ddim_update(x_t, x0, cpp.COEFFS, clamp=clamp)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0, rtol=0)  # same fp32 arithmetic, same order


@cpp_test
def test_cpp_ddim_update_mixed_dtypes():
    x_t, x0 = cpp.rand(1, 3, 1, 4, 6), cpp.rand(1, 3, 1, 4, 6, dtype=torch.bfloat16)
    out = cpp_ops.ddim_update(x_t, x0, cpp.COEFFS)
    torch.testing.assert_close(out, CF.ddim_update(x_t, x0, cpp.COEFFS), atol=0, rtol=0)


@cpp_test
def test_cpp_ddim_update_reads_no_coefficient_on_the_host():
    """The kernel reads (a, b, c, d) where x_t lives: coefficients given as tensors there are
    never brought to the host (on CUDA such a read is a sync per step, and refused inside a CUDA
    graph capture; the code path is the same for CPU tensors, checked here)."""
    x_t, x0 = cpp.rand(2, 3, 2, 5, 7), cpp.rand(2, 3, 2, 5, 7, scale=1.5)
    ref = CF.ddim_update(x_t, x0, cpp.COEFFS, clamp=True)
    for coefficients in (cpp.COEFFS, torch.stack(cpp.COEFFS)):
        got = {}

        def run(coefficients=coefficients, got=got):
            got["x_next"] = cpp_ops.ddim_update(x_t, x0, coefficients, clamp=True)

        assert host_reads_of(run) == []
        assert torch.equal(got["x_next"], ref)


@cpp_test
def test_cpp_ddim_update_bad_input_is_named():
    x = cpp.rand(1, 4, 2, 3, 3)
    with pytest.raises(ValueError, match="x0 must have the shape"):
        cpp_ops.ddim_update(x, x[:, :, :1], cpp.COEFFS)
    flat, out = cpp.rand(8), torch.empty(8)
    lib = _cpp_lib.library()
    for coefficients, message in (  # the binding re-checks what crosses the boundary
        (torch.ones(3), r"coefficients: expected shape \(4,\)"),
        (torch.ones(4, dtype=torch.uint8), "coefficients must be float32"),
    ):
        with pytest.raises(ValueError, match=message):
            descs = [cpp_ops._desc(t) for t in (flat, flat, coefficients)]
            lib.ddim_update(*descs, False, cpp_ops._desc(out))


@cpp_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
def test_cpp_to_uint8_frames(dtype):
    levels = torch.linspace(-1.2, 1.2, 2 * 3 * 3 * 5 * 7 - 4)
    x = torch.cat([levels, torch.tensor([-1.0, 1.0, 0.0, 1 / 255])]).reshape(2, 3, 3, 5, 7)
    x = x.to(dtype)
    for inp in (x, x.contiguous(memory_format=cpp.CL)):
        out = cpp_ops.to_uint8_frames(inp)
        assert out.dtype == torch.uint8 and out.shape == (2, 3, 5, 7, 3)
        assert torch.equal(out, CF.to_uint8_frames(x))


@cuda_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
def test_cuda_denoise(dtype):
    """The DDIM step (clamped) and the uint8 frames on CUDA; a second run gives the same bits."""
    xt = cpp.rand(2, 3, 5, 16, 16, dtype=dtype, device="cuda")
    x0 = cpp.rand(2, 3, 5, 16, 16, dtype=dtype, scale=1.5, device="cuda")
    cases = [
        (
            "ddim_update",
            lambda: cpp_ops.ddim_update(xt, x0, cpp.COEFFS, clamp=True),
            lambda: CF.ddim_update(xt, x0, cpp.COEFFS, clamp=True),
        ),
        (
            "to_uint8_frames",
            lambda: cpp_ops.to_uint8_frames(xt).float(),
            lambda: CF.to_uint8_frames(xt.float()).float(),
        ),
    ]
    # one step where fp32 rounding of a half-way value differs
    cpp.check_on_cuda(cases, dtype, tolerances={"to_uint8_frames": (1.0, 0.0)})
