"""Fused CDT linear-attention block: ``x + to_out(attend(to_qkv(LayerNorm(x))))`` per frame.

CDT's attention (:func:`cdt_fast.functional.linear_attention`) takes, for every frame and head, a
softmax of ``q`` over channels (times ``scale``), a softmax of ``k`` over the frame's positions,
``context = k v^T`` ([d, d]), ``out = context^T q`` and a 1x1 output projection ``W`` plus bias.
Here, on channels-last rows (``[B*T*H*W, C]``, one row per voxel):

1. :func:`_norm_project_kernel`: channel LayerNorm (fp32 statistics, the norm block's
   :func:`~cdt_fast.kernels.channel_norm.channel_norm_tile`) and the qkv projection (a 1x1 conv is
   a GEMM on voxel rows) in one pass: each program normalises its voxels in registers and
   multiplies them by every weight column, so the normalised activation is never stored;
2. :func:`_context_partial_kernel`: per frame, head and slice of positions, an online softmax of
   ``k`` over positions fused with the accumulation of ``exp(k - max) v^T`` in fp32: no softmaxed
   ``k`` is ever written. Slices of positions run in parallel (a frame alone would leave most of
   the GPU idle at the bottom of the U-Net and at 16 frames);
3. :func:`_context_combine_kernel`: merges the slices' (max, sum, accumulator) triples into the
   normalised context, with ``scale`` folded in; then ``mix = context @ W_head^T`` ([d, C_out] per
   frame and head, a tiny batched matmul): the output projection is linear, so
   ``W (context^T softmax(q)) = mix^T softmax(q)`` and the projection never touches a voxel;
4. :func:`_attention_apply_kernel`: ``y = sum_heads softmax(q)^T mix + bias (+ x)``, the softmax
   of ``q`` over channels done online over channel blocks (as flash attention does over keys), so
   any head width fits; bias and residual are its epilogue. It writes the block's output directly.

Per voxel of a C-channel block (heads * d = C, as CDT) the traffic is: norm + projection 4C (x
in, q k v out), the context pass 2C (k, v), the apply pass 3C (q, x in; y out): 9C in all, against
the 2C floor of reading x and writing y.

Results are channels-last ``[B, C, T, H, W]`` tensors in x's dtype.

The family's modules, one job each: this block and its packed weights; the passes' launches
(``linear_attention_passes.py``); the kernels (``linear_attention_kernel.py``); their tiles
(``linear_attention_tiles.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ._common import check_activation, check_launchable, check_out
from .linear_attention_passes import (
    apply_attention,
    apply_grid,
    attention_context,
    project_qkv,
    projected_context,
)
from .linear_attention_tiles import (
    apply_shared_memory,
    combine_shared_memory,
    partial_shared_memory,
    project_shared_memory,
)

__all__ = [
    "LinearAttentionWeights",
    "linear_attention",
    "linear_attention_block",
    "project_qkv",
    "project_shared_memory",
    "partial_shared_memory",
    "apply_shared_memory",
    "combine_shared_memory",
    "apply_grid",
]


def _matrix(w: torch.Tensor, rows: int, name: str, expected: str) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(w).__name__}")
    if w.dim() not in (2, 5) or w.shape[0] != rows or any(k != 1 for k in w.shape[2:]):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(w.shape)}")
    return w.reshape(w.shape[0], w.shape[1])


@dataclass(frozen=True)
class LinearAttentionWeights:
    """A linear-attention layer's weights packed once for the kernels (the engine keeps one per
    layer): the qkv GEMM operand transposed in the activation dtype, the output projection split
    by head as fp32 [heads, d, C_out] (from the activation-dtype weight, as the reference rounds
    it), the bias, and the norm's affine (``norm_g``/``norm_b`` None: no PreNorm)."""

    qkv_t: torch.Tensor  # [C, 3*hidden]
    out_heads: torch.Tensor  # [heads, d, C_out], fp32
    bias: Optional[torch.Tensor]  # [C_out]
    norm_g: Optional[torch.Tensor]
    norm_b: Optional[torch.Tensor]
    scale: float
    eps: float

    @classmethod
    def pack(
        cls,
        w_qkv: torch.Tensor,
        w_out: torch.Tensor,
        b_out: Optional[torch.Tensor],
        *,
        heads: int = 1,
        scale: Optional[float] = None,
        norm_g: Optional[torch.Tensor] = None,
        norm_b: Optional[torch.Tensor] = None,
        eps: float = 1e-5,
        dtype: Optional[torch.dtype] = None,
    ) -> "LinearAttentionWeights":
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be a positive int, got {heads!r}")
        if (
            not isinstance(w_qkv, torch.Tensor)
            or w_qkv.dim() not in (2, 5)
            or w_qkv.shape[0] % (3 * heads)
        ):
            raise ValueError(
                f"w_qkv must be [3*heads*d, C(, 1, 1, 1)] with heads={heads}, got "
                f"{tuple(getattr(w_qkv, 'shape', ()))}"
            )
        hidden = w_qkv.shape[0] // 3
        qkv = _matrix(w_qkv, 3 * hidden, "w_qkv", "[3*heads*d, C(, 1, 1, 1)]")
        if (
            not isinstance(w_out, torch.Tensor)
            or w_out.dim() not in (2, 5)
            or w_out.shape[1] != hidden
        ):
            raise ValueError(
                f"w_out must be [C_out, heads*d = {hidden}(, 1, 1, 1)], got "
                f"{tuple(getattr(w_out, 'shape', ()))}"
            )
        out = _matrix(w_out, w_out.shape[0], "w_out", f"[C_out, {hidden}(, 1, 1, 1)]")
        c_out = out.shape[0]
        if b_out is not None and b_out.numel() != c_out:
            raise ValueError(
                f"b_out must hold C_out={c_out} elements, got shape {tuple(b_out.shape)}"
            )
        dtype = dtype or qkv.dtype
        d = hidden // heads
        out_heads = out.to(dtype).float().reshape(c_out, heads, d).permute(1, 2, 0).contiguous()
        return cls(
            qkv_t=qkv.to(dtype).t().contiguous(),
            out_heads=out_heads,
            bias=None if b_out is None else b_out.reshape(c_out).to(dtype).contiguous(),
            norm_g=norm_g,
            norm_b=norm_b,
            scale=float(d**-0.5 if scale is None else scale),
            eps=float(eps),
        )

    @property
    def heads(self) -> int:
        return self.out_heads.shape[0]

    def __call__(
        self,
        x: torch.Tensor,
        *,
        residual: bool = False,
        out: Optional[torch.Tensor] = None,
        splits: Optional[int] = None,
    ) -> torch.Tensor:
        """attn(LN(x)) (LN only when packed with a norm), plus x when ``residual``. Written into
        ``out`` when given ([B, C_out, T, H, W], x's dtype, channels-last or contiguous; it may
        be x itself), else into a new channels-last tensor. ``splits``: see
        :func:`attention_context`."""
        _check_activation(x, self.qkv_t.shape[0])
        check_launchable(x, "linear_attention")
        b, c, t, h, w = x.shape
        c_out = self.out_heads.shape[2]
        if residual and c_out != c:
            raise ValueError(f"the residual needs C_out == C, got C_out={c_out}, C={c}")
        qkv = project_qkv(x, self.qkv_t.to(x.dtype), self.norm_g, self.norm_b, self.eps)
        ctx = attention_context(qkv, b * t, h * w, self.heads, self.scale, splits)
        mix = projected_context(ctx, self.out_heads, x.dtype)
        shape = (b, c_out, t, h, w)
        if out is None:
            out = torch.empty(b, t, h, w, c_out, device=x.device, dtype=x.dtype).permute(
                0, 4, 1, 2, 3
            )
        else:
            check_out(out, shape, x.dtype, x.device)
        apply_attention(qkv, mix, self.bias, x if residual else None, out, h * w)
        return out


def _check_activation(x: torch.Tensor, c: int) -> None:
    check_activation(x, "x", "linear_attention")
    if x.shape[1] != c:
        raise ValueError(f"x must be [B, C={c}, T, H, W], got shape {tuple(x.shape)}")


def linear_attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: Optional[torch.Tensor],
    *,
    heads: int = 1,
    scale: Optional[float] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.linear_attention` on the fused kernels (no norm, no residual);
    the result is channels-last unless ``out`` is given."""
    weights = LinearAttentionWeights.pack(
        w_qkv, w_out, b_out, heads=heads, scale=scale, dtype=getattr(x, "dtype", None)
    )
    return weights(x, out=out)


def linear_attention_block(
    x: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: Optional[torch.Tensor],
    *,
    heads: int = 1,
    scale: Optional[float] = None,
    eps: float = 1e-5,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``x + linear_attention(channel_norm(x, g, b, eps), ...)``: CDT's
    ``Residual(PreNorm(LinearAttention))`` block (``attention_block``); the result is
    channels-last unless ``out`` is given (it may be ``x``: the block then runs in place)."""
    weights = LinearAttentionWeights.pack(
        w_qkv,
        w_out,
        b_out,
        heads=heads,
        scale=scale,
        norm_g=g,
        norm_b=b,
        eps=eps,
        dtype=getattr(x, "dtype", None),
    )
    return weights(x, residual=True, out=out)
