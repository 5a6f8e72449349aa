"""The ``temporal_attention`` op on attention libraries: torch's ``scaled_dot_product_attention``
(backend ``sdpa``), flash-attn (``flash``) and xformers (``xformers``), one module each.

Each module defines the op under its name with :mod:`cdt_fast.functional`'s signature, so the
engine's op table calls it like any backend (``cdt_fast.engine.registry.implementations``).
Whether a library can run here is :func:`cdt_fast.availability.backend_status`'s to say; these
modules import their library only when called, so importing them never fails.
"""

from __future__ import annotations

from typing import Callable

import torch

# CUDA grids allow 65535 blocks along y and z, where flash-attn and xformers put the batch.
MAX_BATCH = 65535


def in_batches(fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``fn`` over the [S, T, heads, d] views of [S, heads, T, d] tensors (the libraries' layout),
    in slices of at most :data:`MAX_BATCH` sequences; the result back as [S, heads, Tq, d]."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    outs = [
        fn(qt[i : i + MAX_BATCH], kt[i : i + MAX_BATCH], vt[i : i + MAX_BATCH])
        for i in range(0, q.shape[0], MAX_BATCH)
    ]
    return (torch.cat(outs) if len(outs) > 1 else outs[0]).transpose(1, 2)
