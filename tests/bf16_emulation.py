"""The numerics of the bf16 GPU path, emulated with fp32 arithmetic on any device.

The Triton interpreter has no bf16 arithmetic, so the CPU cannot run the kernels in bf16. What
they do in bf16 is fixed by their design (docs/kernels.md): every op reads bf16 tensors (its
parameters cast to the activation dtype, as the op contract in ``cdt_fast.functional`` says),
computes in fp32 (fp32 accumulators and statistics) and rounds its result once; the multi-pass
ops also store a few intermediates in bf16:

- ``causal_conv3d_norm`` wider than ``FUSED_NORM_MAX_CHANNELS``: the conv's output, before the norm
  pass (up to that width the norm runs in the conv's epilogue, on the fp32 accumulator);
- linear attention: ``qkv`` after the projection, ``mix = scale * context @ W_head^T``, and the
  unnormalised ``exp(q - max)`` that its product with ``mix`` reads (the context itself is fp32);
- temporal attention: ``exp(scores - max)`` before its product with ``v``.

:func:`emulated_op` runs an op exactly so with torch in fp32, storing each of those tensors with
``rounding``; :func:`emulate` puts such ops into a bf16 engine, whose own dtype handling (bf16
weights and activations between ops, the fp32 islands of upstream) is the real engine's. The
default rounding is what the GPU does (round to nearest even, ``.to(torch.bfloat16)``);
:func:`round_toward_zero` is a deliberately worse one (truncation) that the tolerances derived
from this emulation must reject.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import cdt_fast.functional as CF

__all__ = [
    "Rounding",
    "emulate",
    "emulated_op",
    "emulated_temporal_attention",
    "round_nearest",
    "round_toward_zero",
]

# fp32 value -> the same value stored in a 16-bit dtype.
Rounding = Callable[[torch.Tensor, torch.dtype], torch.Tensor]

_LOW = (torch.bfloat16, torch.float16)
# Ops whose result is fp32 or an integer by contract, or a copy of their input.
_UNROUNDED = ("ddim_update", "to_uint8_frames", "causal_conv3d_history")


def round_nearest(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What a GPU kernel's store does: round to nearest, ties to even."""
    return x.to(dtype)


def round_toward_zero(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Truncation to bf16 (drop the low 16 bits of the fp32 pattern): up to twice the error of
    rounding to nearest, and biased. A deliberately worse rounding, for tests."""
    if dtype != torch.bfloat16:
        raise ValueError(f"round_toward_zero emulates bf16 only, got {dtype}")
    bits = x.float().contiguous().view(torch.int32) & ~0xFFFF
    return bits.view(torch.float32).to(dtype)


def _stored(t, dtype: torch.dtype, compute: torch.dtype):
    """A tensor argument as a kernel reads it: cast to the activation dtype (the op contract's
    ``cast_like``), then exactly widened for the arithmetic."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.to(dtype).to(compute)
    return t


def _conv_norm(
    store, x, weight, bias, g, b, eps=1e-5, *, relu=False, time_bias=None, residual=None, **conv
):
    from cdt_fast.kernels.causal_conv3d import FUSED_NORM_MAX_CHANNELS

    y = CF.causal_conv3d(x, weight, bias, **conv)
    if weight.shape[0] > FUSED_NORM_MAX_CHANNELS:  # conv, then a norm pass over its stored output
        y = store(y)
    return CF.channel_norm(y, g, b, eps, relu=relu, time_bias=time_bias, residual=residual)


def _attention(store, x, w_qkv, w_out, b_out, *, heads=1, scale=None, residual=None):
    """linear attention as its kernels compute and store it (see the module docstring)."""
    b, _, t, h, w = x.shape
    hidden = w_qkv.shape[0] // 3
    d = hidden // heads
    scale = d**-0.5 if scale is None else scale
    qkv = store(F.conv3d(x, w_qkv.reshape(3 * hidden, -1, 1, 1, 1)))

    def per_frame(u):  # [b, heads*d, t, h, w] -> [b*t, heads, d, h*w]
        return u.reshape(b, heads, d, t, h * w).permute(0, 3, 1, 2, 4).reshape(b * t, heads, d, -1)

    q, k, v = map(per_frame, qkv.chunk(3, dim=1))
    context = torch.einsum("bhdn,bhen->bhde", k.softmax(dim=-1), v) * scale
    w_heads = w_out.reshape(w_out.shape[0], heads, d).permute(1, 2, 0)  # [heads, e, C_out]
    mix = store(torch.einsum("bhde,hec->bhdc", context, w_heads))
    shifted = (q - q.amax(dim=2, keepdim=True)).exp()
    y = torch.einsum("bhdn,bhdc->bhnc", store(shifted), mix) / shifted.sum(dim=2)[..., None]
    y = y.sum(dim=1).reshape(b, t, h, w, -1).permute(0, 4, 1, 2, 3)
    if b_out is not None:
        y = y + b_out.reshape(1, -1, 1, 1, 1)
    return y + residual if residual is not None else y


def _attention_block(store, x, g, b, w_qkv, w_out, b_out, *, heads=1, scale=None, eps=1e-5):
    normed = CF.channel_norm(x, g, b, eps)  # in registers, never stored
    return _attention(store, normed, w_qkv, w_out, b_out, heads=heads, scale=scale, residual=x)


def _linear_attention(store, x, w_qkv, w_out, b_out, *, heads=1, scale=None):
    return _attention(store, x, w_qkv, w_out, b_out, heads=heads, scale=scale)


_MULTI_PASS = MappingProxyType(
    {
        "causal_conv3d_norm": _conv_norm,
        "linear_attention_block": _attention_block,
        "linear_attention": _linear_attention,
    }
)


def emulated_op(
    op: str, rounding: Rounding = round_nearest, compute: torch.dtype = torch.float32
) -> Callable:
    """``cdt_fast.functional``'s ``op`` as the bf16 GPU path computes it: arguments cast to the
    activation dtype (that of the first argument), arithmetic in ``compute`` (fp32, as the
    kernels; fp64 shows how much another summation order moves the result), the result and the
    intermediates its kernels store rounded with ``rounding``. An fp32 activation runs the plain
    op."""
    plain = getattr(CF, op)

    def run(x, *args, **kwargs):
        dtype = x.dtype
        if dtype not in _LOW or op in _UNROUNDED:
            return plain(x, *args, **kwargs)
        args = [_stored(a, dtype, compute) for a in args]
        kwargs = {k: _stored(v, dtype, compute) for k, v in kwargs.items()}
        wide = _stored(x, dtype, compute)
        if op in _MULTI_PASS:

            def store(t):
                return rounding(t, dtype).to(compute)

            y = _MULTI_PASS[op](store, wide, *args, **kwargs)
        else:
            y = plain(wide, *args, **kwargs)
        return rounding(y, dtype)

    run.__name__ = f"emulated_{op}"
    return run


def emulated_temporal_attention(
    q, k, v, *, causal: bool = True, scale: Optional[float] = None, rounding=round_nearest
):
    """``functional.temporal_attention`` as the Triton kernel computes it in 16 bits: scores and
    softmax statistics in fp32, ``exp(scores - max)`` stored in v's dtype for the product."""
    dtype = q.dtype
    d, tq, tk = q.shape[-1], q.shape[-2], k.shape[-2]
    scale = d**-0.5 if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:  # query i sees keys j <= i + tk - tq (bottom-right aligned)
        i = torch.arange(tq, device=q.device)[:, None]
        j = torch.arange(tk, device=q.device)[None, :]
        scores = scores.masked_fill(j > i + (tk - tq), float("-inf"))
    shifted = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    out = torch.matmul(rounding(shifted, dtype).float(), v.float()) / shifted.sum(-1, keepdim=True)
    return rounding(out, dtype)


def emulate(engine, rounding: Rounding = round_nearest, compute: torch.dtype = torch.float32):
    """``engine`` (an :class:`~cdt_fast.engine.AcceleratedCDT` built with ``backend="torch"``)
    with every op replaced by :func:`emulated_op`; returned for chaining. Build it with the dtype
    to emulate, e.g. ``emulate(accelerate(model, backend="torch", dtype=torch.bfloat16))``: the
    engine keeps its own casts (bf16 weights and activations, fp32 islands), the ops compute in
    fp32 inside."""
    table = engine.ops
    if table.candidates or any(c.backend != "torch" for c in table.table.values()):
        raise ValueError("emulate() takes an engine built with backend='torch'")
    for op, choice in list(table.table.items()):
        table.table[op] = dataclasses.replace(
            choice,
            backend="emulated",
            fn=emulated_op(op, rounding, compute),
            reason="bf16 emulation",
        )
    return engine
