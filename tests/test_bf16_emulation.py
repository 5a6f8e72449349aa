"""The bf16 emulation (tests/bf16_emulation.py) and the tolerances derived from it
(tests/helpers.py: BF16_RMS_MULTIPLE, BF16_MAX_MULTIPLE), on the CPU."""

from __future__ import annotations

import pytest
import torch

import cdt_fast.functional as CF
from cdt_fast import CDT, accelerate

from .bf16_emulation import (
    emulate,
    emulated_op,
    emulated_temporal_attention,
    round_nearest,
    round_toward_zero,
)
from .conftest import tiny_config, upstream_cdt
from .helpers import assert_bf16_close, errors

BF16 = torch.bfloat16


def _keep(x, dtype):
    """A 'rounding' that stores nothing: the emulation's arithmetic alone."""
    return x.float()


def _r(*shape, scale=1.0):
    return torch.randn(*shape) * scale


# op, args (x first; bf16 where the engine holds bf16), kwargs: awkward shapes (odd sizes,
# batch 2, one frame, heads of 3 channels), every storage point of the multi-pass ops.
CASES = {
    "channel_norm": (
        lambda: (_r(2, 5, 1, 3, 7), _r(5), _r(5)),
        lambda: dict(relu=True, time_bias=_r(2, 5), residual=_r(2, 5, 1, 3, 7)),
    ),
    "causal_conv3d": (
        lambda: (_r(2, 5, 2, 5, 7), _r(6, 5, 3, 3, 3, scale=0.2), _r(6)),
        lambda: dict(past=_r(2, 5, 2, 5, 7), history=2, space_padding=(1, 1)),
    ),
    "causal_conv3d_norm": (
        lambda: (_r(1, 3, 1, 4, 5), _r(130, 3, 1, 3, 3, scale=0.3), _r(130), _r(130), _r(130)),
        lambda: dict(space_padding=(1, 1), relu=True, residual=_r(1, 130, 1, 4, 5)),
    ),
    "linear_attention": (
        lambda: (_r(2, 6, 1, 3, 5), _r(18, 6, scale=0.4), _r(7, 6, scale=0.4), _r(7)),
        lambda: dict(heads=2),
    ),
    "linear_attention_block": (
        lambda: (_r(1, 6, 2, 5, 3), _r(6), _r(6), _r(18, 6, scale=0.4), _r(6, 6), None),
        lambda: dict(heads=2, scale=0.7),
    ),
    "time_downsample": (
        lambda: (_r(2, 5, 4, 3, 3), _r(7, 5, 3, scale=0.3), _r(7)),
        lambda: dict(past=_r(2, 5, 1, 3, 3)),
    ),
    "time_upsample": (
        lambda: (_r(1, 5, 2, 3, 3), _r(10, 5, 1, scale=0.3), _r(10)),
        lambda: dict(drop_first=True),
    ),
    "conv_transpose_up2x": (lambda: (_r(1, 4, 1, 3, 5), _r(4, 3, 1, 5, 5, scale=0.2), _r(3)), dict),
}
# Tensors each op stores in bf16: its result, plus what its kernels keep between passes.
STORES = {"causal_conv3d_norm": 2, "linear_attention": 4, "linear_attention_block": 4}


def _bf16(value):
    return value.to(BF16) if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("op", sorted(CASES))
def test_emulation_computes_the_op_and_stores_where_the_kernels_store(op):
    make_args, make_kwargs = CASES[op]
    args, kwargs = make_args(), make_kwargs()
    args16 = [_bf16(a) for a in args]
    kwargs16 = {k: _bf16(v) for k, v in kwargs.items()}
    # Without storage rounding it is the op contract in fp32 on the bf16 inputs.
    oracle = getattr(CF, op)(
        *[a.to(BF16).double() if isinstance(a, torch.Tensor) else a for a in args],
        **{k: v.to(BF16).double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()},
    )
    exact = emulated_op(op, rounding=_keep)(*args16, **kwargs16)
    torch.testing.assert_close(exact.double(), oracle, rtol=1e-5, atol=1e-5)
    stores = []

    def counting(t, dtype):
        stores.append(t.shape)
        return round_nearest(t, dtype)

    rounded = emulated_op(op, rounding=counting)(*args16, **kwargs16)
    assert rounded.dtype == BF16 and len(stores) == STORES.get(op, 1), stores
    rms, largest = errors(rounded, oracle)
    assert 0 < rms and largest < 2.0**-6 * oracle.abs().max().item()  # a few bf16 steps
    fp32_args = emulated_op(op)(*args, **kwargs)  # fp32 activations: the plain op
    torch.testing.assert_close(fp32_args, getattr(CF, op)(*args, **kwargs), rtol=0, atol=0)


def test_emulated_temporal_attention():
    q16, k16, v16 = (_r(3, 2, t, 8).to(BF16) for t in (4, 6, 6))  # cached keys: tk > tq
    oracle = CF.temporal_attention(q16.double(), k16.double(), v16.double())
    exact = emulated_temporal_attention(q16, k16, v16, rounding=_keep)
    torch.testing.assert_close(exact.double(), oracle, rtol=1e-5, atol=1e-5)
    rounded = emulated_temporal_attention(q16, k16, v16)
    assert rounded.dtype == BF16 and 0 < errors(rounded, oracle)[0]


def test_emulate_wants_a_torch_engine():
    pytest.importorskip("triton")
    model = CDT(tiny_config("small")).eval()
    with pytest.raises(ValueError, match="backend='torch'"):
        emulate(accelerate(model, backend="auto,channel_norm=triton"))


def _runs(preset: str, upstream_io, engine) -> list:
    x, z = upstream_io[f"{preset}.x"], upstream_io[f"{preset}.z"]
    return [
        engine.encode(x, chunk_frames=4),
        engine.decode(z, steps=3, noise=upstream_io[f"{preset}.s3.noise"], chunk_frames=1),
    ]


@pytest.mark.parametrize("preset", ["base", "small"])
def test_derived_tolerance_admits_faithful_bf16_and_rejects_truncation(preset, upstream_io):
    """The derivation of BF16_RMS_MULTIPLE / BF16_MAX_MULTIPLE (tests/helpers.py), kept true:
    against the fp32 oracle, every faithful bf16 computation is within the multiples of the
    emulation's error and one that truncates instead of rounding is not. Encode and a 3-step
    decode of the fixture clips (the 3-step decode's sampling amplifies single elements most)."""
    model = upstream_cdt(preset)

    def bf16_engine(**emulation):
        engine = accelerate(model, backend="torch", dtype=BF16)
        return emulate(engine, **emulation) if emulation else engine

    oracle = _runs(preset, upstream_io, accelerate(model, backend="torch"))
    emulated = _runs(preset, upstream_io, bf16_engine(rounding=round_nearest))
    faithful = (
        bf16_engine(rounding=round_nearest, compute=torch.float64),  # another summation order
        bf16_engine(),  # the torch backend in bf16: bf16 arithmetic inside the ops
    )
    for engine in faithful:
        for got, want, emul in zip(_runs(preset, upstream_io, engine), oracle, emulated):
            assert_bf16_close(got, want, emul)
    truncated = _runs(preset, upstream_io, bf16_engine(rounding=round_toward_zero))
    for got, want, emul in zip(truncated, oracle, emulated):
        with pytest.raises(AssertionError, match="exceeds"):
            assert_bf16_close(got, want, emul)
