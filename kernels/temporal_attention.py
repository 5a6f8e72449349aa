"""The ``temporal_attention`` op on Triton: causal softmax attention along time.

Layout: ``q`` [S, heads, Tq, d], ``k``/``v`` [S, heads, Tk, d] with ``S = B*H*W`` (every pixel is
a sequence of frames), any strides; the op's spec is :func:`cdt_fast.functional.temporal_attention`.
``causal`` aligns the last query with the last key, so a chunk's queries can attend to cached
keys of earlier chunks; it needs ``Tk >= Tq``.

Sequences along time are short (a few to a few dozen frames) and there are very many of them, so
the kernel packs ``G`` whole sequences into one tile when they fit (a block-diagonal mask keeps
them apart) and runs the usual flash-attention loop (online softmax, fp32 accumulation) over key
blocks otherwise (``_temporal_attention_kernel``). It has no backward pass: a call that autograd
would record raises. Which backend serves a call (this one, SDPA, flash-attn, xformers or the
spec) is the engine's op table's to decide (``cdt_fast.engine.dispatch.OpTable``).
"""

from __future__ import annotations

from typing import Optional

import torch

from cdt_fast.availability import backend_status
from cdt_fast.deprecation import deprecated_names, warn_deprecated
from cdt_fast.functional import temporal_attention as _spec
from cdt_fast.validation import check_attention

from . import _temporal_attention_kernel as _kernel
from ._common import check_kernel_dtype, check_out

__all__ = ["temporal_attention"]


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
    out: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """The Triton kernel (fp32 softmax statistics and accumulation); ``out`` [S, heads, Tq, d].

    ``backend`` is deprecated: with it, the call goes to the engine's op table as
    ``cdt_fast.generation.attention`` does ("reference" being the "torch" backend).
    """
    if backend is not None:
        return _through_the_op_table(q, k, v, causal, scale, backend)
    scale = check_attention(q, k, v, causal=causal, scale=scale)
    check_kernel_dtype(q, "q", "temporal_attention")  # k and v share its dtype
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError(
            "temporal_attention: the Triton kernel has no backward pass (it serves sampling); "
            "train with backend 'auto', 'sdpa', 'flash', 'xformers' or 'torch'"
        )
    s, heads, tq, d = q.shape
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    else:
        check_out(out, q.shape, q.dtype, q.device)
    _kernel.launch(q, k, v, out, s * heads, heads, tq, k.shape[2], d, scale, causal)
    return out


# -- deprecated: this module's dispatcher, its backend names and its status report ------------

_OLD_BACKENDS = ("auto", "triton", "flash", "xformers", "sdpa", "reference")


def _through_the_op_table(q, k, v, causal, scale, backend):
    warn_deprecated(
        "cdt_fast.kernels.temporal_attention.temporal_attention(..., backend=...)",
        "cdt_fast.generation.attention(q, k, v, causal=..., backend=..., axis='time')",
        stacklevel=4,
    )
    if backend not in _OLD_BACKENDS:
        raise ValueError(f"backend must be one of {_OLD_BACKENDS}, got {backend!r}")
    from cdt_fast.engine.dispatch import OpTable

    name = "torch" if backend == "reference" else backend
    table = OpTable(name, q.device, ops=("temporal_attention",), env_var=None)
    return table("temporal_attention", q, k, v, causal=causal, scale=scale)


def _attention_backends(device=None, dtype=None):
    """name -> (available, reason) under the old names."""
    out = {}
    for name in ("flash", "xformers", "triton", "sdpa"):
        status = backend_status(name, device, dtype=dtype)
        out[name] = (status.available, status.reason)
    out["reference"] = (True, "plain fp32 softmax attention (cdt_fast.functional)")
    return out


__getattr__ = deprecated_names(
    __name__,
    {
        "temporal_attention_triton": (f"{__name__}.temporal_attention", lambda: temporal_attention),
        "temporal_attention_reference": ("cdt_fast.functional.temporal_attention", lambda: _spec),
        "attention_backends": (
            "cdt_fast.generation.attention_backends",
            lambda: _attention_backends,
        ),
        "BACKENDS": ("cdt_fast.generation.attention.BACKENDS", lambda: _OLD_BACKENDS),
    },
)
