"""The compiled extension as a whole (cdt_fast._C through cdt_fast.cpp_ops): the boundary it
re-checks (dense descriptors, dtypes, autograd refused), results independent of the thread
count, the 16-bit conversions every stage shares, several of its CUDA ops in one CUDA graph, and
the deprecated op names of cdt_fast._cpp_lib. Each op's parity tests are in its family's
``tests/test_<family>.py``; loading and the ABI check in ``tests/test_backends.py``."""

from __future__ import annotations

import warnings

import pytest
import torch

from cdt_fast import _cpp_lib, cpp_ops
from cdt_fast import functional as CF

from . import cpp_backend as cpp
from .cpp_backend import cpp_test, cuda_test


def _shuffle_one_row(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Raw upsample shuffle of one voxel [1, 1, 1, 2C]: out[p, c] = y[2c + p] + bias[2c + p]."""
    out = torch.empty(1, 2, 1, y.shape[-1] // 2, dtype=y.dtype)
    cpp_ops._invoke("time_upsample_shuffle", y, y, bias, out, False)
    return out.flatten()


@cpp_test
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_conversions_round_like_torch(dtype):
    """Every finite 16-bit pattern survives the fp32 round trip, and fp32 -> 16 bit rounds to
    nearest even exactly as torch (subnormals and overflow to inf included)."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    y = bits[torch.isfinite(bits.float())]
    y = y[: y.numel() // 2 * 2]
    # adding -0.0 is the identity for every value, -0.0 included
    out = _shuffle_one_row(y.reshape(1, 1, 1, -1), torch.full((y.numel(),), -0.0))
    assert torch.equal(out.view(torch.int16), y.reshape(-1, 2).t().flatten().view(torch.int16))
    wide = torch.cat([torch.randn(4096) * s for s in (1e-7, 1e-5, 1.0, 3e4, 7e4, 1e36)])
    wide = torch.cat([wide, torch.tensor([65504.0, 65520.0, 65519.99, 2.0**-25, 2.0**-24])])
    wide = wide[: wide.numel() // 2 * 2]
    out = _shuffle_one_row(torch.zeros(1, 1, 1, wide.numel(), dtype=dtype), wide)
    ref = wide.to(dtype).reshape(-1, 2).t().flatten()
    assert torch.equal(out.view(torch.int16), ref.view(torch.int16))


@cpp_test
def test_thread_count_does_not_change_results():
    """Work is split by rows/frames, never inside a reduction: any thread count, same bits."""
    x = cpp.rand(2, 6, 3, 17, 23)
    g, b, tb = cpp.rand(6), cpp.rand(6), cpp.rand(2, 6)
    qkv = cpp.rand(6, 17 * 23, 3 * 8)  # the attention core alone: torch's GEMMs may vary
    results = []
    threads_before = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            core = torch.empty(6, 17 * 23, 8)
            cpp_ops._invoke("linear_attention", qkv, qkv, core, 2, 0.5, None)
            results.append((cpp_ops.channel_norm(x, g, b, relu=True, time_bias=tb), core))
    finally:
        torch.set_num_threads(threads_before)
    for one, many in zip(*results):
        assert torch.equal(one, many)


@cpp_test
def test_autograd_is_refused_not_silently_dropped():
    x = cpp.rand(1, 4, 2, 3, 3).requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only"):
        cpp_ops.channel_norm(x, torch.ones(4), torch.zeros(4))
    with torch.no_grad():
        cpp_ops.channel_norm(x, torch.ones(4), torch.zeros(4))


@cpp_test
def test_extension_rejects_non_dense_descriptors():
    """The C++ side re-checks the layout promise: a strided buffer is a ValueError, not garbage."""
    lib = _cpp_lib.library()
    desc = cpp_ops._desc
    x = cpp.rand(2, 3, 4, 8)  # [B, T, P, C] rows
    g, b = torch.ones(8), torch.zeros(8)
    view = x[:, :, :, ::2]
    out = torch.empty(2, 3, 4, 4)
    with pytest.raises(ValueError, match="dense"):
        lib.channel_norm(desc(view), desc(out), desc(g[:4]), desc(b[:4]), 1e-5, False, None, None)
    half = torch.empty(2, 3, 4, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        lib.channel_norm(desc(x), desc(half), desc(g), desc(b), 1e-5, False, None, None)


def test_deprecated_op_names_of_cpp_lib_warn_and_forward():
    """The ops' old home keeps their names for one release, with a DeprecationWarning; the dead
    ones are gone, and the loader's own names do not warn."""
    for name in cpp_ops.__all__:
        with pytest.warns(DeprecationWarning, match=f"cdt_fast.cpp_ops.{name}"):
            assert getattr(_cpp_lib, name) is getattr(cpp_ops, name)
    for gone in ("causal_conv3d_input", "ddim_to_uint8_frames"):
        with pytest.raises(AttributeError, match=gone):
            getattr(_cpp_lib, gone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert callable(_cpp_lib.is_available) and isinstance(_cpp_lib.ABI_VERSION, int)


@cuda_test
def test_cuda_ops_replay_in_a_cuda_graph():
    """The attention (16 position splits, scratch from torch's allocator) and the DDIM step
    captured in one CUDA graph replay new inputs and new coefficients: the kernel reads the
    coefficients on the device, so a value taken at capture would show as a stale step."""
    from cdt_fast.functional import ddim_coefficients
    from cdt_fast.reference.diffusion import DDIMSchedule

    schedule = DDIMSchedule.create(1000, 4)
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, device="cuda", generator=g)

    w_qkv, w_out = r(24, 8, 1, 1, 1) * 0.5, r(8, 8, 1, 1, 1)
    x, x_t, x0 = r(1, 8, 1, 64, 64), r(2, 3, 5, 16, 16), r(2, 3, 5, 16, 16)
    coef = ddim_coefficients(schedule.coefficients(0), "cuda")

    def step():
        return (
            cpp_ops.linear_attention(x, w_qkv, w_out, None, heads=1),
            cpp_ops.ddim_update(x_t, x0, coef, clamp=True),
        )

    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up where the capture runs
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            captured = step()
        for s in (1, 2, 3):
            for t in (x, x_t, x0):
                t.copy_(r(*t.shape))
            coef.copy_(ddim_coefficients(schedule.coefficients(s), "cuda"))
            graph.replay()
            attention, x_next = step()
            torch.cuda.synchronize()
            torch.testing.assert_close(captured[0], attention, atol=1e-5, rtol=1e-5)
            assert torch.equal(captured[1], x_next), f"timestep {s}"
            want = CF.ddim_update(x_t, x0, coef, clamp=True)
            torch.testing.assert_close(x_next, want, atol=1e-6, rtol=1e-6)
