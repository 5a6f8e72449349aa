"""Causal softmax attention along time, for the latent video model planned after CDT.

Layout: ``q`` [S, heads, Tq, d], ``k``/``v`` [S, heads, Tk, d] with ``S = B*H*W`` (every pixel is
a sequence of frames), any strides. ``causal`` aligns the last query with the last key (query
``i`` sees keys ``j <= i + Tk - Tq``), so a chunk's queries can attend to cached keys of earlier
chunks; it needs ``Tk >= Tq``.

Sequences along time are short (a few to a few dozen frames) and there are very many of them, so
the Triton kernel packs ``G`` whole sequences into one tile when they fit (a block-diagonal mask
keeps them apart) and runs the usual flash-attention loop (online softmax, fp32 accumulation)
over key blocks otherwise. The dispatcher :func:`temporal_attention` prefers flash-attn, then
xformers, when installed; then this kernel on CUDA; then ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "temporal_attention",
    "temporal_attention_triton",
    "temporal_attention_reference",
    "attention_backends",
    "BACKENDS",
]

BACKENDS = ("auto", "triton", "flash", "xformers", "sdpa", "reference")
# CUDA grids allow 65535 blocks along y/z; flash-attn and xformers put the batch there.
_MAX_LIBRARY_BATCH = 65535


def _check_qkv(q, k, v, causal: bool) -> Tuple[int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point [S, heads, T, d] tensor, got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
    s, heads, tq, d = q.shape
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != d:
        raise ValueError(
            f"k and v must be [S, heads, Tk, d] = [{s}, {heads}, Tk, {d}], got "
            f"k {list(k.shape)}, v {list(v.shape)}"
        )
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError("q, k and v must share dtype and device")
    tk = k.shape[2]
    if causal and tk < tq:
        raise ValueError(
            f"causal attention needs at least as many keys as queries, got Tq={tq}, Tk={tk}"
        )
    return s, heads, tq, tk, d


def _causal_mask(tq: int, tk: int, device) -> torch.Tensor:
    """[Tq, Tk] bool, True where query i may see key j (bottom-right aligned)."""
    i = torch.arange(tq, device=device)[:, None]
    return torch.arange(tk, device=device)[None, :] <= i + (tk - tq)


def temporal_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Plain softmax attention in fp32, the oracle: ``softmax(q k^T * scale + mask) v``."""
    _, _, tq, tk, d = _check_qkv(q, k, v, causal)
    scale = d**-0.5 if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        scores = scores.masked_fill(~_causal_mask(tq, tk, q.device), float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v.float()).to(q.dtype)


# --------------------------------------------------------------------------------------------
# Triton kernel (imported lazily: the dispatcher works without Triton)
# --------------------------------------------------------------------------------------------


def _triton_kernels():
    """The jitted kernel and its autotuned wrapper; built on first use and kept by Python's
    module cache, so importing this file never imports Triton."""
    from . import _temporal_attention_kernel as kernels

    return kernels


def temporal_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The Triton kernel (fp32 softmax statistics and accumulation); ``out`` [S, heads, Tq, d]."""
    s, heads, tq, tk, d = _check_qkv(q, k, v, causal)
    scale = d**-0.5 if scale is None else float(scale)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be a {q.dtype} tensor of shape {list(q.shape)} on {q.device}")
    _triton_kernels().launch(q, k, v, out, s * heads, heads, tq, tk, d, scale, causal)
    return out


# --------------------------------------------------------------------------------------------
# library backends
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _import_optional(name: str):
    """The module, or None when not installed; a broken install warns and counts as absent, never
    crashes. Cached: a failed import searches the file system every time, far too slow per call."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None
    except Exception as exc:  # e.g. a CUDA extension built against another torch
        warnings.warn(
            f"{name} is installed but failed to import ({exc!r}); not using it for "
            f"temporal attention",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _in_batches(fn, q, k, v):
    """fn over [S, T, heads, d] views in slices of at most 65535 sequences."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    outs = [
        fn(
            qt[i : i + _MAX_LIBRARY_BATCH],
            kt[i : i + _MAX_LIBRARY_BATCH],
            vt[i : i + _MAX_LIBRARY_BATCH],
        )
        for i in range(0, q.shape[0], _MAX_LIBRARY_BATCH)
    ]
    return torch.cat(outs).transpose(1, 2) if len(outs) > 1 else outs[0].transpose(1, 2)


def _flash(q, k, v, causal, scale):
    flash_attn = importlib.import_module("flash_attn")
    # flash-attn >= 2.1 aligns a causal mask bottom-right, as we do.
    return _in_batches(
        lambda a, b, c: flash_attn.flash_attn_func(
            a, b, c, dropout_p=0.0, softmax_scale=scale, causal=causal
        ),
        q,
        k,
        v,
    )


def _xformers(q, k, v, causal, scale):
    xops = importlib.import_module("xformers.ops")
    bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask() if causal else None
    return _in_batches(
        lambda a, b, c: xops.memory_efficient_attention(a, b, c, attn_bias=bias, scale=scale),
        q,
        k,
        v,
    )


def _sdpa(q, k, v, causal, scale):
    tq, tk = q.shape[2], k.shape[2]
    if causal and tq != tk:  # SDPA's is_causal aligns top-left
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=_causal_mask(tq, tk, q.device), scale=scale
        )
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def attention_backends(
    device: torch.device = None, dtype: torch.dtype = None
) -> Dict[str, Tuple[bool, str]]:
    """name -> (available, reason) for the explicit backends on ``device`` / ``dtype``."""
    cuda = device is not None and torch.device(device).type == "cuda"
    half = dtype in (torch.float16, torch.bfloat16)
    found = {
        name: _import_optional(mod) is not None
        for name, mod in (
            ("flash", "flash_attn"),
            ("xformers", "xformers.ops"),
            ("triton", "triton"),
        )
    }
    return {
        "flash": (
            found["flash"] and cuda and half,
            "needs flash_attn installed, a CUDA tensor and fp16/bf16",
        ),
        "xformers": (found["xformers"] and cuda, "needs xformers installed and a CUDA tensor"),
        "triton": (found["triton"], "needs triton (CPU tensors need TRITON_INTERPRET=1)"),
        "sdpa": (True, "torch.nn.functional.scaled_dot_product_attention"),
        "reference": (True, "plain fp32 softmax attention"),
    }


def _auto_backend(q: torch.Tensor) -> str:
    if q.device.type == "cuda":
        available = attention_backends(q.device, q.dtype)
        for name in ("flash", "xformers", "triton"):
            if available[name][0]:
                return name
    return "sdpa"


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Softmax attention along time over [S, heads, T, d] tensors (see the module docstring).

    ``backend``: "auto" (flash-attn, then xformers, then Triton on CUDA; SDPA on CPU), or one of
    "triton", "flash", "xformers", "sdpa", "reference" (an unavailable one raises RuntimeError).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _, _, _, _, d = _check_qkv(q, k, v, causal)
    scale = d**-0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if backend == "auto":
        backend = _auto_backend(q)
    elif backend in ("flash", "xformers", "triton"):
        ok, reason = attention_backends(q.device, q.dtype)[backend]
        if not ok:
            raise RuntimeError(f"temporal_attention backend {backend!r} is unavailable: {reason}")
    if backend == "triton":
        return temporal_attention_triton(q, k, v, causal=causal, scale=scale)
    if backend == "flash":
        return _flash(q, k, v, causal, scale)
    if backend == "xformers":
        return _xformers(q, k, v, causal, scale)
    if backend == "sdpa":
        return _sdpa(q, k, v, causal, scale)
    return temporal_attention_reference(q, k, v, causal=causal, scale=scale)
