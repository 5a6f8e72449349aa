"""``temporal_attention`` on ``torch.nn.functional.scaled_dot_product_attention`` (backend
``sdpa``): torch's fused kernels (flash, memory-efficient or math, torch's choice), with autograd,
on every device."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..functional import causal_attention_mask

__all__ = ["temporal_attention"]


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
) -> torch.Tensor:
    tq, tk = q.shape[2], k.shape[2]
    if causal and tq != tk:
        # SDPA's is_causal aligns the first query with the first key; ours aligns the last ones.
        mask = causal_attention_mask(tq, tk, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
