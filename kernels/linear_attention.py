"""Fused CDT linear-attention block: ``x + to_out(attend(to_qkv(LayerNorm(x))))`` per frame.

CDT's attention (:func:`cdt_fast.functional.linear_attention`) takes, for every frame and head, a
softmax of ``q`` over channels (times ``scale``), a softmax of ``k`` over the frame's positions,
``context = k v^T`` ([d, d]) and ``out = context^T q``. Here, on channels-last rows
(``[B*T*H*W, C]``, one row per voxel):

1. channel LayerNorm: :func:`cdt_fast.kernels.channel_norm.channel_norm` (fp32 statistics);
2. qkv projection: one GEMM (a 1x1 conv is a GEMM on channels-last rows; cuBLAS does it best);
3. :func:`_context_partial_kernel`: per frame, head and slice of positions, an online softmax of
   ``k`` over positions fused with the accumulation of ``exp(k - max) v^T`` in fp32: no softmaxed
   ``k`` is ever written. Slices of positions run in parallel (a frame alone would leave most of
   the GPU idle at the bottom of the U-Net and at 16 frames);
4. :func:`_context_combine_kernel`: merges the slices' (max, sum, accumulator) triples into the
   normalised context, with ``scale`` folded in;
5. :func:`_context_apply_kernel`: ``out = context^T softmax(q)``, the softmax of ``q`` over
   channels done online over channel blocks (as flash attention does over keys), so any head width
   fits; it also writes a column of ones after the ``hidden`` output channels;
6. output projection: one GEMM against ``[w_out | b_out]`` (the ones column turns the bias into a
   GEMM term) with the residual ``x`` as the GEMM's accumulator input (``addmm``), so bias and
   residual cost no pass of their own.

Results are channels-last ``[B, C, T, H, W]`` tensors in x's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ._fused_common import check_launchable, interpreting, loop_arg
from .channel_norm import channel_norm

__all__ = ["LinearAttentionWeights", "linear_attention", "linear_attention_block"]

# The row stride of the attention output is padded to a multiple of this many elements (16-byte
# aligned rows for the GEMM); the padding holds the bias column.
_ROW_ALIGN = 8
# Programs wanted per context pass (a few waves on an H100's 132 SMs) when choosing the slices.
_TARGET_PROGRAMS = 528

_PARTIAL_CONFIGS = [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)
                    for n in (32, 64, 128) for w in (4, 8) for s in (2, 3)]
_APPLY_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_D": d}, num_warps=w, num_stages=s)
                  for n in (32, 64, 128) for d in (32, 64) for w in (4, 8) for s in (2, 3)]


@triton.jit
def _context_partial_kernel(qkv_ptr, m_ptr, l_ptr, acc_ptr, N, HEADS, HIDDEN, DH, SPLIT_LEN,
                            stride_row, NUM_SPLITS,
                            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
                            DOT_PRECISION: tl.constexpr):
    """(max_n k, sum_n exp(k - max), sum_n exp(k - max) v^T) of one slice of positions."""
    pid_fh = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_de = tl.program_id(2)
    blocks_e = tl.cdiv(DH, BLOCK_E)
    pid_d = pid_de // blocks_e
    pid_e = pid_de % blocks_e
    frame = pid_fh // HEADS
    head = pid_fh % HEADS
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_d = offs_d < DH
    mask_e = offs_e < DH
    k_cols = HIDDEN + head * DH + offs_d
    v_cols = 2 * HIDDEN + head * DH + offs_e
    base = qkv_ptr + frame.to(tl.int64) * N * stride_row
    start = pid_s * SPLIT_LEN
    end = tl.minimum(start + SPLIT_LEN, N)

    m = tl.full([BLOCK_D], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_D], tl.float32)
    acc = tl.zeros([BLOCK_D, BLOCK_E], tl.float32)
    for n0 in range(0, SPLIT_LEN, BLOCK_N):  # blocks past `end` are fully masked: no-ops
        offs_n = start + n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        rows = offs_n.to(tl.int64)[:, None] * stride_row
        k = tl.load(base + rows + k_cols[None, :], mask=mask_n[:, None] & mask_d[None, :],
                    other=0.0).to(tl.float32)
        k = tl.where(mask_n[:, None], k, float("-inf"))
        v = tl.load(base + rows + v_cols[None, :], mask=mask_n[:, None] & mask_e[None, :],
                    other=0.0)
        m_new = tl.maximum(m, tl.max(k, axis=0))  # finite: a slice's first block holds positions
        alpha = tl.exp(m - m_new)
        p = tl.exp(k - m_new[None, :])
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha[:, None] + tl.dot(tl.trans(p.to(v.dtype)), v,
                                            input_precision=DOT_PRECISION)
        m = m_new

    part = pid_fh * NUM_SPLITS + pid_s
    first_e = pid_e == 0
    tl.store(m_ptr + part * DH + offs_d, m, mask=mask_d & first_e)
    tl.store(l_ptr + part * DH + offs_d, l, mask=mask_d & first_e)
    tl.store(acc_ptr + (part * DH + offs_d)[:, None].to(tl.int64) * DH + offs_e[None, :], acc,
             mask=mask_d[:, None] & mask_e[None, :])


@triton.jit
def _context_combine_kernel(m_ptr, l_ptr, acc_ptr, ctx_ptr, DH, NUM_SPLITS, scale,
                            BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr):
    """context[d, e] * scale from the slices' partial softmax sums."""
    pid_fh = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DH
    first = pid_fh * NUM_SPLITS
    m_all = tl.full([BLOCK_D], float("-inf"), tl.float32)
    for s in range(0, NUM_SPLITS):
        m_all = tl.maximum(m_all, tl.load(m_ptr + (first + s) * DH + offs_d, mask=mask_d,
                                          other=0.0))
    total = tl.zeros([BLOCK_D], tl.float32)
    for s in range(0, NUM_SPLITS):
        m_s = tl.load(m_ptr + (first + s) * DH + offs_d, mask=mask_d, other=0.0)
        total += tl.load(l_ptr + (first + s) * DH + offs_d, mask=mask_d, other=0.0) \
            * tl.exp(m_s - m_all)
    norm = scale / tl.where(mask_d, total, 1.0)
    for e0 in range(0, DH, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask = mask_d[:, None] & (offs_e < DH)[None, :]
        ctx = tl.zeros([BLOCK_D, BLOCK_E], tl.float32)
        for s in range(0, NUM_SPLITS):
            m_s = tl.load(m_ptr + (first + s) * DH + offs_d, mask=mask_d, other=0.0)
            part = tl.load(acc_ptr + ((first + s) * DH + offs_d)[:, None].to(tl.int64) * DH
                           + offs_e[None, :], mask=mask, other=0.0)
            ctx += part * tl.exp(m_s - m_all)[:, None]
        tl.store(ctx_ptr + (pid_fh * DH + offs_d)[:, None].to(tl.int64) * DH + offs_e[None, :],
                 ctx * norm[:, None], mask=mask)


@triton.jit
def _context_apply_kernel(qkv_ptr, ctx_ptr, out_ptr, N, HEADS, HIDDEN, DH, stride_row,
                          stride_out, EXTRA,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
                          EXTRA_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """out[n, e] = sum_d context[d, e] softmax_d(q[n, :])[d]; the (head 0, block 0) programs also
    write the EXTRA columns after ``HIDDEN``: a one then zeros (the bias column and padding)."""
    pid_fh = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_e = tl.program_id(2)
    frame = pid_fh // HEADS
    head = pid_fh % HEADS
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_n = offs_n < N
    mask_e = offs_e < DH
    rows = frame.to(tl.int64) * N + offs_n.to(tl.int64)
    ctx_base = ctx_ptr + pid_fh.to(tl.int64) * DH * DH

    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_N], tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    for d0 in range(0, DH, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < DH
        q = tl.load(qkv_ptr + rows[:, None] * stride_row + (head * DH + offs_d)[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        dot_dtype = q.dtype
        q = tl.where(mask_d[None, :], q.to(tl.float32), float("-inf"))
        m_new = tl.maximum(m, tl.max(q, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(q - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        ctx = tl.load(ctx_base + offs_d[:, None] * DH + offs_e[None, :],
                      mask=mask_d[:, None] & mask_e[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(dot_dtype), ctx.to(dot_dtype),
                                            input_precision=DOT_PRECISION)
        m = m_new

    out = acc / l[:, None]
    tl.store(out_ptr + rows[:, None] * stride_out + (head * DH + offs_e)[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_e[None, :])
    if EXTRA_BLOCK > 0:
        extra = tl.arange(0, EXTRA_BLOCK)
        writer = (head == 0) & (pid_e == 0)
        ones = tl.where(extra == 0, 1.0, 0.0)
        tl.store(out_ptr + rows[:, None] * stride_out + (HIDDEN + extra)[None, :],
                 tl.broadcast_to(ones[None, :], [BLOCK_N, EXTRA_BLOCK]).to(out_ptr.dtype.element_ty),
                 mask=mask_n[:, None] & (extra < EXTRA)[None, :] & writer)


_context_partial_tuned = triton.autotune(
    _PARTIAL_CONFIGS, key=["DH", "HIDDEN", "BLOCK_D", "BLOCK_E", "DOT_PRECISION"])(
    _context_partial_kernel)
_context_apply_tuned = triton.autotune(
    _APPLY_CONFIGS, key=["DH", "HIDDEN", "BLOCK_E", "DOT_PRECISION"])(_context_apply_kernel)


def _block_width(dh: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(dh)))  # tl.dot wants >= 16


def _slices(positions: int, programs: int, block: int, wanted: Optional[int]):
    """(number of slices, positions per slice, a multiple of ``block``)."""
    if wanted is None:
        wanted = triton.cdiv(_TARGET_PROGRAMS, programs)
    wanted = max(1, min(int(wanted), triton.cdiv(positions, block)))
    length = triton.cdiv(triton.cdiv(positions, wanted), block) * block
    return triton.cdiv(positions, length), length


def attend_rows(qkv: torch.Tensor, frames: int, positions: int, heads: int, scale: float, *,
                bias_column: bool, splits: Optional[int] = None) -> torch.Tensor:
    """The attention part on ``qkv`` rows [frames*positions, 3*hidden] (row = frame*positions + n).

    Returns [rows, hidden_padded] in qkv's dtype: the attention output in the first ``hidden``
    columns, then (``bias_column``) a column of ones and zero padding to a multiple of 8.
    ``splits`` forces the number of position slices of the context pass (tests)."""
    rows, width = qkv.shape
    hidden = width // 3
    dh = hidden // heads
    fh = frames * heads
    device = qkv.device
    precision = "ieee" if qkv.dtype == torch.float32 else "tf32"
    extra = (triton.cdiv(hidden + 1, _ROW_ALIGN) * _ROW_ALIGN - hidden) if bias_column else 0
    out = torch.empty(rows, hidden + extra, device=device, dtype=qkv.dtype)

    block_d = _block_width(dh, 64)
    block_e = _block_width(dh, 128 if not interpreting() else 64)
    blocks = triton.cdiv(dh, block_d) * triton.cdiv(dh, block_e)
    tuned = not interpreting()
    partial_block_n = 128 if tuned else 16  # the largest tuned BLOCK_N: slices must hold whole blocks
    num_splits, split_len = _slices(positions, fh * blocks, partial_block_n, splits)

    m = torch.empty(fh * num_splits * dh, device=device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(fh * num_splits * dh * dh, device=device, dtype=torch.float32)
    ctx = torch.empty(fh * dh * dh, device=device, dtype=torch.float32)
    partial_args = (qkv, m, l, acc, positions, heads, hidden, dh, loop_arg(split_len),
                    qkv.stride(0), num_splits)
    partial_grid = (fh, num_splits, blocks)
    if tuned:
        _context_partial_tuned[partial_grid](*partial_args, BLOCK_D=block_d, BLOCK_E=block_e,
                                             DOT_PRECISION=precision)
    else:
        _context_partial_kernel[partial_grid](*partial_args, BLOCK_N=partial_block_n,
                                              BLOCK_D=block_d, BLOCK_E=block_e,
                                              DOT_PRECISION=precision)
    _context_combine_kernel[(fh, triton.cdiv(dh, block_d))](
        m, l, acc, ctx, loop_arg(dh), loop_arg(num_splits), float(scale),
        BLOCK_D=block_d, BLOCK_E=block_e)
    apply_args = (qkv, ctx, out, positions, heads, hidden, loop_arg(dh), qkv.stride(0),
                  out.stride(0), extra)
    extra_block = triton.next_power_of_2(extra) if extra else 0
    if tuned:
        _context_apply_tuned[lambda meta: (fh, triton.cdiv(positions, meta["BLOCK_N"]),
                                           triton.cdiv(dh, block_e))](
            *apply_args, BLOCK_E=block_e, EXTRA_BLOCK=extra_block, DOT_PRECISION=precision)
    else:
        _context_apply_kernel[(fh, triton.cdiv(positions, 16), triton.cdiv(dh, block_e))](
            *apply_args, BLOCK_N=16, BLOCK_D=block_d, BLOCK_E=block_e, EXTRA_BLOCK=extra_block,
            DOT_PRECISION=precision)
    return out


def _matrix(w: torch.Tensor, rows: int, name: str, expected: str) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(w).__name__}")
    if w.dim() not in (2, 5) or w.shape[0] != rows or any(k != 1 for k in w.shape[2:]):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(w.shape)}")
    return w.reshape(w.shape[0], w.shape[1])


@dataclass(frozen=True)
class LinearAttentionWeights:
    """A linear-attention layer's weights packed once for the kernels (the engine keeps one per
    layer): transposed GEMM operands in the activation dtype, the bias as an extra row of the
    output projection, the norm's affine (``norm_g``/``norm_b`` None: no PreNorm)."""

    qkv_t: torch.Tensor            # [C, 3*hidden]
    out_t: torch.Tensor            # [hidden (+ bias row + zero rows), C_out]
    norm_g: Optional[torch.Tensor]
    norm_b: Optional[torch.Tensor]
    heads: int
    scale: float
    eps: float
    has_bias: bool

    @classmethod
    def pack(cls, w_qkv: torch.Tensor, w_out: torch.Tensor, b_out: Optional[torch.Tensor], *,
             heads: int = 1, scale: Optional[float] = None, norm_g: Optional[torch.Tensor] = None,
             norm_b: Optional[torch.Tensor] = None, eps: float = 1e-5,
             dtype: Optional[torch.dtype] = None) -> "LinearAttentionWeights":
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be a positive int, got {heads!r}")
        if not isinstance(w_qkv, torch.Tensor) or w_qkv.dim() not in (2, 5) \
                or w_qkv.shape[0] % (3 * heads):
            raise ValueError(f"w_qkv must be [3*heads*d, C(, 1, 1, 1)] with heads={heads}, got "
                             f"{tuple(getattr(w_qkv, 'shape', ()))}")
        hidden = w_qkv.shape[0] // 3
        qkv = _matrix(w_qkv, 3 * hidden, "w_qkv", "[3*heads*d, C(, 1, 1, 1)]")
        if not isinstance(w_out, torch.Tensor) or w_out.dim() not in (2, 5) \
                or w_out.shape[1] != hidden:
            raise ValueError(f"w_out must be [C_out, heads*d = {hidden}(, 1, 1, 1)], got "
                             f"{tuple(getattr(w_out, 'shape', ()))}")
        out = _matrix(w_out, w_out.shape[0], "w_out", f"[C_out, {hidden}(, 1, 1, 1)]")
        dtype = dtype or qkv.dtype
        has_bias = b_out is not None
        if has_bias:
            if b_out.numel() != out.shape[0]:
                raise ValueError(f"b_out must hold C_out={out.shape[0]} elements, "
                                 f"got shape {tuple(b_out.shape)}")
            extra = triton.cdiv(hidden + 1, _ROW_ALIGN) * _ROW_ALIGN - hidden
            pad = out.new_zeros(out.shape[0], extra)
            pad[:, 0] = b_out.reshape(-1).to(out.dtype)
            out = torch.cat([out, pad], dim=1)
        d = hidden // heads
        return cls(qkv_t=qkv.to(dtype).t().contiguous(), out_t=out.to(dtype).t().contiguous(),
                   norm_g=norm_g, norm_b=norm_b, heads=heads,
                   scale=float(d ** -0.5 if scale is None else scale), eps=float(eps),
                   has_bias=has_bias)

    def __call__(self, x: torch.Tensor, *, residual: bool = False,
                 splits: Optional[int] = None) -> torch.Tensor:
        """attn(LN(x)) (LN only when packed with a norm), plus x when ``residual``."""
        _check_activation(x, self.qkv_t.shape[0])
        check_launchable(x, "linear_attention")
        b, c, t, h, w = x.shape
        frames, positions = b * t, h * w
        if self.norm_g is not None:
            normed = torch.empty(b, t, h, w, c, device=x.device, dtype=x.dtype)
            channel_norm(x, self.norm_g, self.norm_b, self.eps, out=normed.permute(0, 4, 1, 2, 3))
            rows_in = normed.view(-1, c)
        else:
            rows_in = _rows(x)
        qkv = torch.mm(rows_in, self.qkv_t.to(x.dtype))
        attended = attend_rows(qkv, frames, positions, self.heads, self.scale,
                               bias_column=self.has_bias, splits=splits)
        c_out = self.out_t.shape[1]
        y = torch.empty(b, t, h, w, c_out, device=x.device, dtype=x.dtype)
        out_t = self.out_t.to(x.dtype)
        if residual:
            if c_out != c:
                raise ValueError(f"the residual needs C_out == C, got C_out={c_out}, C={c}")
            torch.addmm(_rows(x), attended, out_t, out=y.view(-1, c_out))
        else:
            torch.mm(attended, out_t, out=y.view(-1, c_out))
        return y.permute(0, 4, 1, 2, 3)


def _check_activation(x: torch.Tensor, c: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [B, C, T, H, W], got {type(x).__name__}")
    if x.dim() != 5 or x.shape[1] != c:
        raise ValueError(f"x must be [B, C={c}, T, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be float32/float16/bfloat16, got {x.dtype}")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T*H*W, C] (a view when x is channels-last)."""
    return x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1])


def linear_attention(x: torch.Tensor, w_qkv: torch.Tensor, w_out: torch.Tensor,
                     b_out: Optional[torch.Tensor], *, heads: int = 1,
                     scale: Optional[float] = None) -> torch.Tensor:
    """:func:`cdt_fast.functional.linear_attention` on the fused kernels (no norm, no residual);
    the result is channels-last."""
    weights = LinearAttentionWeights.pack(w_qkv, w_out, b_out, heads=heads, scale=scale,
                                          dtype=getattr(x, "dtype", None))
    return weights(x)


def linear_attention_block(x: torch.Tensor, norm_g: torch.Tensor, norm_b: torch.Tensor,
                           w_qkv: torch.Tensor, w_out: torch.Tensor, b_out: Optional[torch.Tensor],
                           *, heads: int = 1, scale: Optional[float] = None,
                           eps: float = 1e-5) -> torch.Tensor:
    """``x + linear_attention(channel_norm(x, norm_g, norm_b, eps), ...)``: CDT's
    ``Residual(PreNorm(LinearAttention))`` block (``attention_block``); channels-last result."""
    weights = LinearAttentionWeights.pack(w_qkv, w_out, b_out, heads=heads, scale=scale,
                                          norm_g=norm_g, norm_b=norm_b, eps=eps,
                                          dtype=getattr(x, "dtype", None))
    return weights(x, residual=True)
