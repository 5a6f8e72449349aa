"""``temporal_attention`` on xformers' ``memory_efficient_attention`` (backend ``xformers``):
CUDA tensors, with autograd."""

from __future__ import annotations

import importlib
from typing import Optional

import torch

from . import in_batches

__all__ = ["temporal_attention"]


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
) -> torch.Tensor:
    xops = importlib.import_module("xformers.ops")
    bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask() if causal else None

    def attend(a, b, c):
        return xops.memory_efficient_attention(a, b, c, attn_bias=bias, scale=scale)

    return in_batches(attend, q, k, v)
