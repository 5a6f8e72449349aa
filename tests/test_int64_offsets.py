"""Every Triton kernel addresses its tensors with 64-bit offsets where they can pass 2**31 elements.

A 1280x720 chunk of 12 latents (48 video frames) at 128 channels is ~5.7e9 elements: a frame
stride times a frame index, or in a contiguous tensor a channel stride (T*H*W) times a channel
index, wraps in 32-bit arithmetic. Such tensors cannot be allocated here, but their address
arithmetic can be reproduced on a tiny one: each operand below is a view into one sparse storage
of 2**32 elements whose batch, channel, frame or voxel dimension (size 3) has a stride just above
2**30. Triton passes that stride as a 32-bit integer (it is < 2**31), and index 2 times it passes
2**31. A kernel that multiplies in 32 bits then reads and writes 2**32 elements too low: still
inside the storage (every view starts 2**31 elements in), so the test sees wrong values or
untouched NaN outputs instead of a crash. On CPU (the interpreter) the storage is
``torch.empty`` address space: only the pages the views touch are backed by memory (a few MB).
On CUDA it is a real 8 GiB allocation (skipped where that fails).
"""

import pytest
import torch

from cdt_fast import functional as CF

triton = pytest.importorskip("triton")
from cdt_fast.kernels.causal_conv3d import causal_conv3d, causal_conv3d_norm
from cdt_fast.kernels.channel_norm import channel_norm
from cdt_fast.kernels.denoise import ddim_update, to_uint8_frames
from cdt_fast.kernels.linear_attention import linear_attention_block
from cdt_fast.kernels.temporal_attention import temporal_attention
from cdt_fast.kernels.time_resample import time_downsample, time_upsample

from .helpers import DEVICE

DTYPE = torch.float16
TOL = dict(atol=2e-2, rtol=2e-2)  # fp16 results against an fp32 reference of the same inputs
HUGE = 2**30 + 2**16  # < 2**31: a 32-bit kernel argument; 2 * HUGE > 2**31
BASE = 2**31  # first element of the first view: a wrapped address stays inside the storage
STORAGE = 2**32 + 2**24
BATCH, CHANNELS, FRAMES = 0, 1, 2


class Spread:
    """Views into one sparse storage; each gets its own few-KB region per index of the spread
    dimension, so views never overlap."""

    def __init__(self):
        try:
            self.storage = torch.empty(STORAGE, dtype=DTYPE, device=DEVICE)
        except RuntimeError as error:  # no overcommit: the address space cannot be reserved
            pytest.skip(f"cannot reserve {STORAGE} elements of address space: {error}")
        self.next = BASE

    def put(self, src: torch.Tensor, dim: int, order=None) -> torch.Tensor:
        """A view holding ``src`` whose dimension ``dim`` is strided by HUGE when it has size 3
        (else packed); the others packed in ``order`` (outermost first; default channels-last
        for 5-D tensors, row-major otherwise)."""
        shape = tuple(src.shape)
        if order is None:
            order = (0, 2, 3, 4, 1) if len(shape) == 5 else tuple(range(len(shape)))
        spread = shape[dim] == 3
        strides = [0] * len(shape)
        step = 1
        for d in reversed(order):
            if spread and d == dim:
                continue
            strides[d] = step
            step *= shape[d]
        if spread:
            strides[dim] = HUGE
        view = self.storage.as_strided(shape, strides, self.next)
        self.next += -(-step // 64) * 64
        assert self.next < BASE + 2**20
        view.copy_(src)
        return view

    def out(self, shape, dim: int, order=None) -> torch.Tensor:
        """An output view, filled with NaN so that an element the kernel misses shows."""
        return self.put(torch.full(shape, float("nan"), dtype=DTYPE), dim, order)


@pytest.fixture
def spread():
    s = Spread()
    yield s
    del s.storage


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float32).to(DTYPE)


def check(got, expected):
    torch.testing.assert_close(got.float().cpu(), expected.float().cpu(), **TOL)


def ref(t):
    return t.float().to(DEVICE)


DIMS = pytest.mark.parametrize("dim", [BATCH, CHANNELS, FRAMES], ids=["batch", "channel", "frame"])
# Per-voxel kernels address [B, C, T*H*W] rows: the voxel dimension is the one spread.
VOXEL_DIMS = pytest.mark.parametrize("dim", [BATCH, CHANNELS, 4], ids=["batch", "channel", "voxel"])


@DIMS
def test_causal_conv3d(spread, dim):
    x, past = rand(3, 3, 3, 2, 2), rand(3, 3, 3, 2, 2)
    w, bias = rand(3, 3, 3, 3, 3), rand(3)
    kw = dict(history=2, space_padding=(1, 1))
    got = causal_conv3d(
        spread.put(x, dim),
        w.to(DEVICE),
        bias.to(DEVICE),
        past=spread.put(past, dim),
        out=spread.out((3, 3, 3, 2, 2), dim),
        **kw,
    )
    check(got, CF.causal_conv3d(ref(x), ref(w), ref(bias), past=ref(past), **kw))


@DIMS
def test_causal_conv3d_norm_epilogue(spread, dim):
    x, res = rand(3, 3, 3, 2, 2), rand(3, 3, 3, 2, 2)
    w, bias, g, b, tb = rand(3, 3, 3, 3, 3), rand(3), rand(3), rand(3), rand(3, 3)
    kw = dict(history=2, space_padding=(1, 1), relu=True)
    got = causal_conv3d_norm(
        spread.put(x, dim),
        *(t.to(DEVICE) for t in (w, bias, g, b)),
        time_bias=tb.to(DEVICE),
        residual=spread.put(res, dim),
        out=spread.out((3, 3, 3, 2, 2), dim),
        **kw,
    )
    expected = CF.causal_conv3d_norm(
        ref(x), *(ref(t) for t in (w, bias, g, b)), time_bias=ref(tb), residual=ref(res), **kw
    )
    check(got, expected)


@VOXEL_DIMS
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_channel_norm(spread, dim, layout):
    order = (0, 2, 3, 4, 1) if layout == "channels_last" else (0, 1, 2, 3, 4)
    x, res = rand(3, 3, 1, 1, 3), rand(3, 3, 1, 1, 3)
    g, b = rand(3), rand(3)
    got = channel_norm(
        spread.put(x, dim, order),
        g.to(DEVICE),
        b.to(DEVICE),
        relu=True,
        residual=spread.put(res, dim, order),
        out=spread.out((3, 3, 1, 1, 3), dim, order),
    )
    check(got, CF.channel_norm(ref(x), ref(g), ref(b), relu=True, residual=ref(res)))


@VOXEL_DIMS
def test_linear_attention_block(spread, dim):
    x = rand(3, 3, 1, 1, 3)
    g, b, w_qkv, w_out, b_out = rand(3), rand(3), rand(12, 3), rand(3, 4), rand(3)
    params = (g, b, w_qkv, w_out, b_out)
    got = linear_attention_block(
        spread.put(x, dim),
        *(t.to(DEVICE) for t in params),
        out=spread.out((3, 3, 1, 1, 3), dim),
    )
    check(got, CF.linear_attention_block(ref(x), *(ref(t) for t in params)))


@DIMS
def test_time_downsample(spread, dim):
    x, past = rand(3, 3, 3, 2, 2), rand(3, 3, 3, 2, 2)
    w, bias = rand(3, 3, 3), rand(3)
    # First chunk: x's frame 2 is read; later chunk: past's frame 2 is read.
    got = time_downsample(
        spread.put(x, dim), w.to(DEVICE), bias.to(DEVICE), out=spread.out((3, 3, 2, 2, 2), dim)
    )
    check(got, CF.time_downsample(ref(x), ref(w), ref(bias)))
    got = time_downsample(
        spread.put(x, dim),
        w.to(DEVICE),
        bias.to(DEVICE),
        past=spread.put(past, dim),
        out=spread.out((3, 3, 2, 2, 2), dim),
    )
    check(got, CF.time_downsample(ref(x), ref(w), ref(bias), past=ref(past)))


@DIMS
def test_time_upsample(spread, dim):
    x, w, bias = rand(3, 3, 3, 2, 2), rand(6, 3, 1), rand(6)
    got = time_upsample(
        spread.put(x, dim),
        w.to(DEVICE),
        bias.to(DEVICE),
        drop_first=True,
        out=spread.out((3, 3, 5, 2, 2), dim),
    )
    check(got, CF.time_upsample(ref(x), ref(w), ref(bias), drop_first=True))


@DIMS
def test_ddim_update_and_uint8_frames(spread, dim):
    x_t, x0 = rand(3, 3, 3, 2, 2), rand(3, 3, 3, 2, 2)
    coef = (1.1, 0.9, 0.7, 0.5)
    got = ddim_update(spread.put(x_t, dim), spread.put(x0, dim), coef)
    check(got, CF.ddim_update(ref(x_t), ref(x0), coef))
    frames = to_uint8_frames(spread.put(x0, dim))
    assert torch.equal(frames.cpu(), CF.to_uint8_frames(ref(x0)).cpu())


@pytest.mark.parametrize("dim", [0, 1, 2, 3], ids=["sequence", "head", "frame", "feature"])
def test_temporal_attention(spread, dim):
    q, k, v = rand(3, 3, 3, 3), rand(3, 3, 3, 3), rand(3, 3, 3, 3)
    got = temporal_attention(
        spread.put(q, dim),
        spread.put(k, dim),
        spread.put(v, dim),
        out=spread.out((3, 3, 3, 3), dim),
    )
    check(got, CF.temporal_attention(ref(q), ref(k), ref(v)))
