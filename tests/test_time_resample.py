"""Parity of the temporal down/upsampling's backends with cdt_fast.functional and the reference
layers: the Triton kernels, and the C++ extension (cdt_fast.cpp_ops; its CUDA build on a GPU)."""

import pytest
import torch

from cdt_fast import FeatureCache, cpp_ops
from cdt_fast import functional as CF
from cdt_fast.reference.layers import TimeDownsample, TimeUpsample

triton = pytest.importorskip("triton")
from cdt_fast.kernels.time_resample import time_downsample, time_upsample

from . import cpp_backend as cpp
from .bf16_emulation import emulated_op
from .cpp_backend import cpp_test, cuda_test
from .helpers import DEVICE, assert_bf16_close, exact_fp32

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2)}


def _video(b, c, t, h, w, dtype=torch.float32, channels_last=True):
    x = torch.randn(b, c, t, h, w, device=DEVICE).to(dtype)
    return x.to(memory_format=torch.channels_last_3d) if channels_last else x


def _check(actual, expected, dtype):
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("frames", [1, 4])
def test_time_downsample_first_chunk(dtype, pad_mode, frames):
    x = _video(2, 5, frames, 3, 7, dtype)
    w, b = torch.randn(6, 5, 3, device=DEVICE), torch.randn(6, device=DEVICE)
    out = time_downsample(x, w, b, pad_mode=pad_mode)
    # fp16 against the fp32 reference of the same inputs: the kernel accumulates in fp32.
    _check(out, CF.time_downsample(x.float(), w, b, pad_mode=pad_mode), dtype)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("channels_last", [True, False])
def test_time_downsample_later_chunk_with_past(channels_last):
    x = _video(2, 5, 2, 3, 7, channels_last=channels_last)
    past = _video(2, 5, 1, 3, 7, channels_last=not channels_last)
    w, b = torch.randn(5, 5, 3, device=DEVICE), torch.randn(5, device=DEVICE)
    _check(
        time_downsample(x, w, b, past=past), CF.time_downsample(x, w, b, past=past), torch.float32
    )
    assert time_downsample(x, w, None, past=past).shape == (2, 5, 1, 3, 7)


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
def test_time_downsample_stream_equals_reference_layer(pad_mode):
    layer = TimeDownsample(6, 5, pad_mode=pad_mode).to(DEVICE)
    with torch.no_grad():
        layer.conv.weight.normal_()
        layer.conv.bias.normal_()
    x = _video(2, 6, 5, 3, 5)
    whole = layer(x)
    cache, past, pieces = FeatureCache(), None, []
    for start, stop in [(0, 1), (1, 3), (3, 5)]:  # a 1-frame first chunk, then even chunks
        chunk = x[:, :, start:stop]
        ref = layer(chunk, cache)
        got = time_downsample(
            chunk, layer.conv.weight, layer.conv.bias, past=past, pad_mode=pad_mode
        )
        _check(got, ref, torch.float32)
        past = chunk[:, :, -1:]
        pieces.append(got)
    _check(torch.cat(pieces, dim=2), whole, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("drop_first", [True, False])
def test_time_upsample(dtype, drop_first):
    x = _video(2, 5, 3, 5, 3, dtype)
    w, b = torch.randn(10, 5, 1, device=DEVICE), torch.randn(10, device=DEVICE)
    out = time_upsample(x, w, b, drop_first=drop_first)
    _check(out, CF.time_upsample(x.float(), w, b, drop_first=drop_first), dtype)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_time_upsample_stream_equals_reference_layer():
    layer = TimeUpsample(6).to(DEVICE)
    with torch.no_grad():
        layer.conv.weight.normal_()
        layer.conv.bias.normal_()
    x = _video(1, 6, 3, 3, 5, channels_last=False)
    whole = layer(x)
    cache, pieces = FeatureCache(), []
    for t in range(3):  # 1-frame chunks: only the stream's first drops its first frame
        ref = layer(x[:, :, t : t + 1], cache)
        got = time_upsample(
            x[:, :, t : t + 1], layer.conv.weight, layer.conv.bias, drop_first=t == 0
        )
        _check(got, ref, torch.float32)
        pieces.append(got)
    _check(torch.cat(pieces, dim=2), whole, torch.float32)


def test_out_buffers_are_written_in_place():
    x = _video(1, 3, 2, 2, 3)
    w, b = torch.randn(6, 3, 1, device=DEVICE), torch.randn(6, device=DEVICE)
    out = torch.full((1, 3, 4, 2, 3), float("nan"), device=DEVICE)
    assert time_upsample(x, w, b, drop_first=False, out=out) is out
    _check(out, CF.time_upsample(x, w, b, drop_first=False), torch.float32)
    wd = torch.randn(4, 3, 3, device=DEVICE)
    out = torch.full((1, 4, 1, 2, 3), float("nan"), device=DEVICE)
    assert time_downsample(x, wd, None, out=out) is out
    _check(out, CF.time_downsample(x, wd, None), torch.float32)


def test_strided_bias_views():
    """A bias that is every other element of a buffer (stride 2) is read by its strides."""
    x = _video(2, 3, 3, 2, 3)
    wd, wu = torch.randn(4, 3, 3, device=DEVICE), torch.randn(6, 3, 1, device=DEVICE)
    for w, kw, op, ref in (
        (wd, {}, time_downsample, CF.time_downsample),
        (wu, dict(drop_first=True), time_upsample, CF.time_upsample),
    ):
        bias = torch.randn(w.shape[0], 2, device=DEVICE)[:, 0]
        assert bias.stride() == (2,)
        _check(op(x, w, bias, **kw), ref(x, w, bias.contiguous(), **kw), torch.float32)


def test_bad_arguments_are_named():
    x = _video(1, 3, 2, 2, 3)
    w = torch.randn(4, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="pad_mode"):
        time_downsample(x, w, None, pad_mode="reflect")
    with pytest.raises(ValueError, match="weight"):
        time_downsample(x, torch.randn(4, 2, 3), None)
    with pytest.raises(ValueError, match="past"):
        time_downsample(x, w, None, past=_video(1, 3, 1, 2, 2))
    with pytest.raises(ValueError, match="bias"):
        time_upsample(x, torch.randn(6, 3, 1), torch.randn(5), drop_first=True)
    with pytest.raises(ValueError, match="out"):
        time_upsample(
            x, torch.randn(6, 3, 1), None, drop_first=True, out=torch.empty(1, 3, 4, 2, 3)
        )
    with pytest.raises(TypeError, match="x"):
        time_upsample(x.long(), torch.randn(6, 3, 1), None, drop_first=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_parity_at_engine_shapes(dtype):
    x = _video(1, 192, 4, 45, 37, dtype)
    w, b = torch.randn(192, 192, 3, device=DEVICE) / 24, torch.randn(192, device=DEVICE)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype != torch.float32 else dict(atol=1e-4, rtol=1e-4)
    wu, bu = torch.randn(384, 192, 1, device=DEVICE) / 14, torch.randn(384, device=DEVICE)
    with exact_fp32():  # exact fp32, both sides
        for op, kernel, args, kw in (
            ("time_downsample", time_downsample, (w, b), {}),
            ("time_upsample", time_upsample, (wu, bu), dict(drop_first=True)),
        ):
            y, ref = kernel(x, *args, **kw), getattr(CF, op)(x.float(), *args, **kw)
            if dtype == torch.bfloat16:
                assert_bf16_close(y, ref, emulated_op(op)(x, *args, **kw))
            else:
                torch.testing.assert_close(y.float(), ref, **tol)


def test_compiled_kernels_refuse_cpu_tensors_clearly(monkeypatch):
    from cdt_fast.kernels import _common

    _common.check_launchable(torch.zeros(1, device=DEVICE), "time_upsample")  # runs here
    monkeypatch.setattr(_common, "interpreting", lambda: False)  # as a compiled kernel sees it
    with pytest.raises(RuntimeError, match="cdt_fast.functional.time_upsample"):
        _common.check_launchable(
            torch.zeros(1), "time_upsample", "cdt_fast.functional.time_upsample"
        )


# -- the C++ extension (cdt_fast.cpp_ops; its CUDA build on a GPU) ------------------------------


@cpp_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("frames,with_past", [(1, False), (5, False), (2, True), (4, True)])
def test_cpp_time_downsample(dtype, pad_mode, frames, with_past):
    b, c, h, w = 2, 5, 7, 9
    x = cpp.rand(b, c, frames, h, w, dtype=dtype)
    past = cpp.rand(b, c, 1, h, w, dtype=dtype) if with_past else None
    weight, bias = cpp.rand(7, c, 3, dtype=dtype), cpp.rand(7, dtype=dtype)
    out = cpp_ops.time_downsample(x, weight, bias, past=past, pad_mode=pad_mode)
    ref = CF.time_downsample(*cpp.up(x, weight, bias), past=cpp.up(past)[0], pad_mode=pad_mode)
    cpp.check(out, ref, dtype)


@cpp_test
@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
def test_cpp_time_downsample_streams_like_layer(pad_mode):
    """Chunks of 1, 2, 2 frames, each with the previous chunk's last frame, equal the clip."""
    layer = TimeDownsample(6, pad_mode=pad_mode)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.randn_like(layer.conv.weight))
        x = cpp.rand(2, 6, 5, 3, 5)
        ref = layer(x)
        past, outs = None, []
        for lo, hi in ((0, 1), (1, 3), (3, 5)):
            chunk = x[:, :, lo:hi]
            weight, bias = layer.conv.weight, layer.conv.bias
            outs.append(cpp_ops.time_downsample(chunk, weight, bias, past=past, pad_mode=pad_mode))
            past = chunk[:, :, -1:]
    cpp.check(torch.cat(outs, dim=2), ref, torch.float32)


@cpp_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
@pytest.mark.parametrize("shape", cpp.SHAPES)
@pytest.mark.parametrize("drop_first", [True, False])
def test_cpp_time_upsample(dtype, shape, drop_first):
    c = shape[1]
    x = cpp.rand(*shape, dtype=dtype)
    weight, bias = cpp.rand(2 * c, c, 1, dtype=dtype), cpp.rand(2 * c, dtype=dtype)
    out = cpp_ops.time_upsample(x, weight, bias, drop_first=drop_first)
    cpp.check(out, CF.time_upsample(*cpp.up(x, weight, bias), drop_first=drop_first), dtype)
    out = cpp_ops.time_upsample(x, weight, None, drop_first=drop_first)
    cpp.check(out, CF.time_upsample(*cpp.up(x, weight), None, drop_first=drop_first), dtype)


@cpp_test
def test_cpp_time_downsample_bad_input_is_named():
    x = cpp.rand(1, 4, 2, 3, 3)
    with pytest.raises(ValueError, match="pad_mode"):
        cpp_ops.time_downsample(x, cpp.rand(4, 4, 3), None, pad_mode="reflect")
    with pytest.raises(ValueError, match="past must be one frame"):
        cpp_ops.time_downsample(x, cpp.rand(4, 4, 3), None, past=cpp.rand(1, 4, 2, 3, 3))
    with pytest.raises(ValueError, match="too few frames"):
        cpp_ops.time_downsample(x[:, :, :1], cpp.rand(4, 4, 3), None, past=cpp.rand(1, 4, 1, 3, 3))


@cuda_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
def test_cuda_time_resampling(dtype):
    """Both vector-width paths (C = 16 and C = 5): the downsample after a cached frame, the
    upsample dropping its first frame; a second run gives the same bits."""

    def r(*shape, scale=1.0):
        return cpp.rand(*shape, dtype=dtype, scale=scale, device="cuda")

    cases = []
    for c in (16, 5):
        x = r(2, c, 3, 17, 23, scale=2.0)
        wd, bd, past = r(c, c, 3), r(c), r(2, c, 1, 17, 23)
        cases.append(
            (
                f"time_downsample C={c}",
                lambda x=x, wd=wd, bd=bd, past=past: cpp_ops.time_downsample(
                    x[:, :, :2], wd, bd, past=past
                ),
                lambda x=x, wd=wd, bd=bd, past=past: CF.time_downsample(
                    *cpp.up(x[:, :, :2], wd, bd), past=past.float()
                ),
            )
        )
        wu, bu = r(2 * c, c, 1), r(2 * c)
        cases.append(
            (
                f"time_upsample C={c}",
                lambda x=x, wu=wu, bu=bu: cpp_ops.time_upsample(x, wu, bu, drop_first=True),
                lambda x=x, wu=wu, bu=bu: CF.time_upsample(*cpp.up(x, wu, bu), drop_first=True),
            )
        )
    cpp.check_on_cuda(cases, dtype)
