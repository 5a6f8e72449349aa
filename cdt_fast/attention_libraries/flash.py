"""``temporal_attention`` on flash-attn's ``flash_attn_func`` (backend ``flash``): CUDA tensors
in fp16 or bf16 (:data:`COMPUTE_DTYPES`), with autograd."""

from __future__ import annotations

import importlib
from typing import Optional

import torch

from . import in_batches

__all__ = ["COMPUTE_DTYPES", "temporal_attention"]

# The dtypes flash-attn computes in (availability reports the backend unavailable for others).
COMPUTE_DTYPES = (torch.float16, torch.bfloat16)


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
) -> torch.Tensor:
    if q.dtype not in COMPUTE_DTYPES:
        raise TypeError(
            f"q, k and v: flash-attn computes in float16 or bfloat16, got {q.dtype}; "
            "use backend 'auto', 'xformers' or 'sdpa' for other dtypes"
        )
    flash_attn = importlib.import_module("flash_attn")

    def attend(a, b, c):
        # flash-attn >= 2.1 aligns a causal mask with the last key, as the op does.
        return flash_attn.flash_attn_func(
            a, b, c, dropout_p=0.0, softmax_scale=scale, causal=causal
        )

    return in_batches(attend, q, k, v)
