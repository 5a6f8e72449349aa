"""The linear attention's kernels, one per pass (see :mod:`.linear_attention` for the block they
compute): the channel norm fused with the qkv projection, the context's partial softmax sums over
slices of positions and their merge, and the apply pass with the bias and residual as its
epilogue; and the autotuned entry points opt-in tuning launches."""

from __future__ import annotations

import triton
import triton.language as tl

from .channel_norm import channel_norm_tile
from .linear_attention_tiles import (
    APPLY_CONFIGS,
    PARTIAL_CONFIGS,
    PROJECT_CONFIGS,
    prune_project_configs,
)

__all__ = ["norm_project_tuned", "context_partial_tuned", "attention_apply_tuned"]


# Row counts change between a clip's chunks: not specialised (see the conv kernel), so each
# chunk kind does not compile anew; they only bound row masks and split rows.
@triton.jit(do_not_specialize=["M", "S"])
def _norm_project_kernel(
    x_ptr,
    g_ptr,
    b_ptr,
    w_ptr,
    out_ptr,
    M,
    S,
    C,
    N_OUT,
    eps,
    sx_b,
    sx_s,
    sx_c,
    stride_out,
    NORM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """qkv rows = LayerNorm(x rows) @ w ([C, N_OUT]); each program reads its voxels once and
    loops over the output columns, so the normalised activation never goes to memory."""
    # 64-bit from the program id on, as the norm kernel's rows.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rows < M
    cols = tl.arange(0, BLOCK_K)
    mask_k = cols < C
    x = tl.load(
        # 64-bit channel offsets: the channel stride of a contiguous tensor is T*H*W.
        x_ptr
        + ((rows // S) * sx_b + (rows % S) * sx_s)[:, None]
        + cols.to(tl.int64)[None, :] * sx_c,
        mask=mask_m[:, None] & mask_k[None, :],
        other=0.0,
    ).to(tl.float32)
    if NORM:
        g = tl.load(g_ptr + cols, mask=mask_k, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=mask_k, other=0.0).to(tl.float32)
        x = channel_norm_tile(x, g, b, 0.0, 0.0, mask_k, C, eps, False, False, False)
    # Rounded to the activation dtype before the product, as the reference's separate norm.
    x = x.to(w_ptr.dtype.element_ty)
    for n0 in range(0, N_OUT, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N_OUT
        w = tl.load(
            w_ptr + cols[:, None] * N_OUT + offs_n[None, :],
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = tl.dot(x, w, input_precision=DOT_PRECISION)
        tl.store(
            out_ptr + rows[:, None] * stride_out + offs_n[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=mask_m[:, None] & mask_n[None, :],
        )


@triton.jit(do_not_specialize=["N", "NUM_SPLITS"])
def _context_partial_kernel(
    qkv_ptr,
    m_ptr,
    l_ptr,
    acc_ptr,
    N,
    HEADS,
    HIDDEN,
    DH,
    SPLIT_LEN,
    stride_row,
    NUM_SPLITS,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
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
        k = tl.load(
            base + rows + k_cols[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0
        ).to(tl.float32)
        k = tl.where(mask_n[:, None], k, float("-inf"))
        v = tl.load(
            base + rows + v_cols[None, :], mask=mask_n[:, None] & mask_e[None, :], other=0.0
        )
        m_new = tl.maximum(m, tl.max(k, axis=0))  # finite: a slice's first block holds positions
        alpha = tl.exp(m - m_new)
        p = tl.exp(k - m_new[None, :])
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha[:, None] + tl.dot(
            tl.trans(p.to(v.dtype)), v, input_precision=DOT_PRECISION
        )
        m = m_new

    part = pid_fh * NUM_SPLITS + pid_s
    # The statistics of a d block are the same for every e block: the first one writes them. A
    # branch, not a mask: Triton >= 3.9 rejects a vector mask combined with a scalar predicate.
    if pid_e == 0:
        tl.store(m_ptr + part * DH + offs_d, m, mask=mask_d)
        tl.store(l_ptr + part * DH + offs_d, l, mask=mask_d)
    tl.store(
        acc_ptr + (part * DH + offs_d)[:, None].to(tl.int64) * DH + offs_e[None, :],
        acc,
        mask=mask_d[:, None] & mask_e[None, :],
    )


@triton.jit(do_not_specialize=["NUM_SPLITS"])
def _context_combine_kernel(
    m_ptr,
    l_ptr,
    acc_ptr,
    ctx_ptr,
    DH,
    NUM_SPLITS,
    scale,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """context[d, e] * scale from the slices' partial softmax sums."""
    pid_fh = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DH
    first = pid_fh * NUM_SPLITS
    m_all = tl.full([BLOCK_D], float("-inf"), tl.float32)
    for s in range(0, NUM_SPLITS):
        m_all = tl.maximum(
            m_all, tl.load(m_ptr + (first + s) * DH + offs_d, mask=mask_d, other=0.0)
        )
    total = tl.zeros([BLOCK_D], tl.float32)
    for s in range(0, NUM_SPLITS):
        m_s = tl.load(m_ptr + (first + s) * DH + offs_d, mask=mask_d, other=0.0)
        total += tl.load(l_ptr + (first + s) * DH + offs_d, mask=mask_d, other=0.0) * tl.exp(
            m_s - m_all
        )
    norm = scale / tl.where(mask_d, total, 1.0)
    for e0 in range(0, DH, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask = mask_d[:, None] & (offs_e < DH)[None, :]
        ctx = tl.zeros([BLOCK_D, BLOCK_E], tl.float32)
        for s in range(0, NUM_SPLITS):
            m_s = tl.load(m_ptr + (first + s) * DH + offs_d, mask=mask_d, other=0.0)
            part = tl.load(
                acc_ptr + ((first + s) * DH + offs_d)[:, None].to(tl.int64) * DH + offs_e[None, :],
                mask=mask,
                other=0.0,
            )
            ctx += part * tl.exp(m_s - m_all)[:, None]
        tl.store(
            ctx_ptr + (pid_fh * DH + offs_d)[:, None].to(tl.int64) * DH + offs_e[None, :],
            ctx * norm[:, None],
            mask=mask,
        )


@triton.jit(do_not_specialize=["N", "S"])
def _attention_apply_kernel(
    qkv_ptr,
    mix_ptr,
    bias_ptr,
    res_ptr,
    out_ptr,
    N,
    S,
    HEADS,
    HIDDEN,
    DH,
    C_OUT,
    stride_row,
    sr_b,
    sr_s,
    sr_c,
    so_b,
    so_s,
    so_c,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """y[n, c] = sum_h sum_d softmax_d(q_h[n, :])[d] mix_h[d, c] (+ bias[c]) (+ residual[n, c])
    for one frame's block of positions and block of output channels. Axis 0 runs over (frame,
    block of positions), frame-major (:func:`apply_grid`); axis 1 over blocks of channels."""
    blocks_n = tl.cdiv(N, BLOCK_N)
    frame = tl.program_id(0) // blocks_n
    offs_n = (tl.program_id(0) % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    mask_c = offs_c < C_OUT
    rows = frame.to(tl.int64) * N + offs_n.to(tl.int64)

    y = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
    for head in range(0, HEADS):
        mix_base = mix_ptr + (frame * HEADS + head).to(tl.int64) * DH * C_OUT
        m = tl.full([BLOCK_N], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_C], tl.float32)
        for d0 in range(0, DH, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < DH
            q = tl.load(
                qkv_ptr + rows[:, None] * stride_row + (offs_d + head * DH)[None, :],
                mask=mask_n[:, None] & mask_d[None, :],
                other=0.0,
            )
            dot_dtype = q.dtype
            q = tl.where(mask_d[None, :], q.to(tl.float32), float("-inf"))
            m_new = tl.maximum(m, tl.max(q, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(q - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)
            mix = tl.load(
                mix_base + offs_d[:, None] * C_OUT + offs_c[None, :],
                mask=mask_d[:, None] & mask_c[None, :],
                other=0.0,
            )
            acc = acc * alpha[:, None] + tl.dot(
                p.to(dot_dtype), mix.to(dot_dtype), input_precision=DOT_PRECISION
            )
            m = m_new
        y += acc / l[:, None]

    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    sample = rows // S
    voxel = rows % S
    mask = mask_n[:, None] & mask_c[None, :]
    offs_c_64 = offs_c.to(tl.int64)  # the channel stride of a contiguous tensor is T*H*W
    if HAS_RESIDUAL:
        y += tl.load(
            res_ptr + (sample * sr_b + voxel * sr_s)[:, None] + offs_c_64[None, :] * sr_c,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
    tl.store(
        out_ptr + (sample * so_b + voxel * so_s)[:, None] + offs_c_64[None, :] * so_c,
        y.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


# Opt-in autotuning (kernels/_tiles.py).
norm_project_tuned = triton.autotune(
    PROJECT_CONFIGS,
    key=["C", "N_OUT", "NORM", "BLOCK_K", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": prune_project_configs},
)(_norm_project_kernel)
context_partial_tuned = triton.autotune(
    PARTIAL_CONFIGS, key=["DH", "HIDDEN", "BLOCK_D", "BLOCK_E", "DOT_PRECISION"]
)(_context_partial_kernel)
# restore_value: tuning reruns the kernel, and ``out`` may be the residual ``x`` (in place).
attention_apply_tuned = triton.autotune(
    APPLY_CONFIGS,
    key=["DH", "HEADS", "C_OUT", "BLOCK_C", "HAS_BIAS", "HAS_RESIDUAL", "DOT_PRECISION"],
    restore_value=["out_ptr"],
)(_attention_apply_kernel)
