"""Softmax attention for the video generator: one entry point, several backends.

Layout: ``q`` [S, heads, Tq, d], ``k``/``v`` [S, heads, Tk, d]. The generator's spatial blocks call
it with ``S = B*T`` (the tokens of one latent frame) and its temporal blocks with ``S = B*h*w``
(the frames at one position: short sequences, very many of them). ``causal`` aligns the last query
with the last key, so a chunk of queries can attend to cached keys of earlier chunks.

Backends: ``flash`` (flash-attn) and ``xformers`` when importable (optional extras, never
required), ``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``), ``math`` (plain fp32
softmax attention, the oracle) and ``triton`` (the project's temporal-attention kernel,
``cdt_fast.kernels.temporal_attention``: forward only, so it serves sampling, not training). The
library calls themselves live once, in that kernel module's dispatcher; this module adds the
status report, the choice for each kind of sequence, and the autograd rule.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from ..backends import BackendStatus

__all__ = ["BACKENDS", "attention", "attention_backends"]

BACKENDS = ("auto", "flash", "xformers", "triton", "sdpa", "math")
AXES = ("space", "time")
# The kernel module names the plain fp32 oracle "reference".
_KERNEL_NAME = {"math": "reference"}


def _kernels():
    from ..kernels import temporal_attention

    return temporal_attention


def attention_backends(
    device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> Dict[str, BackendStatus]:
    """name -> :class:`~cdt_fast.backends.BackendStatus` (available, and why or why not) for
    tensors on ``device`` (default CPU) of ``dtype`` (default float32)."""
    device = torch.device("cpu" if device is None else device)
    dtype = torch.float32 if dtype is None else dtype
    found = _kernels().attention_backends(device, dtype)
    out: Dict[str, BackendStatus] = {}
    for name in ("flash", "xformers", "triton", "sdpa"):
        ok, reason = found[name]
        if name == "triton":
            reason = reason + "; forward only (sampling), training falls back"
            if ok and device.type == "cpu" and not _interpreting():
                ok, reason = False, "CPU tensors need TRITON_INTERPRET=1 (a debugging mode)"
            elif ok and device.type == "cpu" and dtype == torch.bfloat16:
                # The interpreter computes through NumPy, which has no bfloat16.
                ok, reason = False, "the Triton interpreter (CPU) cannot compute in bfloat16"
        out[name] = BackendStatus(name, bool(ok), reason)
    out["math"] = BackendStatus("math", True, "plain fp32 softmax attention (the oracle)")
    return out


def _interpreting() -> bool:
    # The interpreter is Triton's own switch, read by Triton itself; we only mirror it.
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _auto(q: torch.Tensor, axis: str, needs_grad: bool) -> str:
    if q.device.type != "cuda":
        return "sdpa"
    status = attention_backends(q.device, q.dtype)
    order = ("flash", "xformers") + (("triton",) if axis == "time" and not needs_grad else ())
    for name in order:
        if status[name].available:
            return name
    return "sdpa"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    backend: str = "auto",
    axis: str = "space",
) -> torch.Tensor:
    """``softmax(q k^T * scale [+ causal mask]) v`` over [S, heads, T, d] tensors.

    ``backend``: "auto" (on CUDA: flash-attn, then xformers, then — for ``axis="time"`` without
    autograd — the Triton kernel, then SDPA; on CPU: SDPA), or one of "flash", "xformers",
    "triton", "sdpa", "math"; an unavailable one raises RuntimeError. ``axis`` ("space" or "time")
    only informs the automatic choice. ``scale`` defaults to ``d ** -0.5``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if backend == "auto":
        backend = _auto(q, axis, needs_grad)
    elif backend in ("flash", "xformers", "triton"):
        status = attention_backends(q.device, q.dtype)[backend]
        if not status.available:
            raise RuntimeError(f"attention backend {backend!r} is unavailable: {status.reason}")
    if backend == "triton" and needs_grad:
        raise RuntimeError(
            "attention backend 'triton' has no backward pass; train with 'auto', 'sdpa', "
            "'flash', 'xformers' or 'math'"
        )
    return _kernels().temporal_attention(
        q, k, v, causal=causal, scale=scale, backend=_KERNEL_NAME.get(backend, backend)
    )
