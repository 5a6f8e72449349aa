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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from . import _tiles
from ._common import check_grid, check_launchable, loop_arg, param_vector, voxel_rows
from ._tiles import Tile, arch_family, autotune_enabled, launch_dtype
from .channel_norm import channel_norm_tile

__all__ = [
    "LinearAttentionWeights",
    "linear_attention",
    "linear_attention_block",
    "project_shared_memory",
    "partial_shared_memory",
    "apply_shared_memory",
    "combine_shared_memory",
    "apply_grid",
]

# Programs wanted per context pass (a few waves on an H100's 132 SMs) when choosing the slices.
_TARGET_PROGRAMS = 528

_PARTIAL_CONFIGS = [
    triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)
    for n in (32, 64, 128)
    for w in (4, 8)
    for s in (2, 3)
]
_APPLY_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_D": d}, num_warps=w, num_stages=s)
    for n in (32, 64, 128)
    for d in (32, 64)
    for w in (4, 8)
    for s in (2, 3)
]
_PROJECT_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
    for m in (16, 32, 64, 128)
    for n in (32, 64, 128, 256)
    for w in (4, 8)
    for s in (1, 2, 3)
]
# Shared-memory budgets (bytes) of the resident activation tile and the pipelined weight tiles.
_X_TILE_BYTES = 64 * 1024
_W_TILE_BYTES = 128 * 1024
# Output channels per apply program (each recomputes the softmax of its q rows).
_MAX_BLOCK_C = 128


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
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rows < M
    rows = rows.to(tl.int64)
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


def _prune_project_configs(configs, named_args, **kwargs):
    block_k = kwargs.get("BLOCK_K", named_args.get("BLOCK_K"))
    size = named_args["w_ptr"].element_size()
    widest = max(32, triton.next_power_of_2(int(named_args["N_OUT"])))
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] * block_k * size <= _X_TILE_BYTES
        and c.kwargs["BLOCK_N"] * block_k * size * c.num_stages <= _W_TILE_BYTES
        and c.kwargs["BLOCK_N"] <= widest
    ]
    return kept or [
        min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))
    ]


def project_tile(
    arch: str, *, block_k: int, n_out: int, size: int, limit: Optional[int] = None
) -> Tile:
    """The qkv projection's tile: each program holds its rows' whole channel vector (BLOCK_K =
    next_pow2(C)) in registers for the norm, so the row count shrinks as C grows (4096 elements:
    no spills at C = 512 on sm_90, ``tools/sass_audit.py``); from 64 rows, with 4 warps, the
    product runs on ``wgmma``. Output columns in tiles of 64 while the weight tile stays within
    its shared-memory budget, else 32; rows wider than 512 fp32 or 1024 16-bit channels take
    narrower column tiles, then fewer rows, until the block fits ``limit`` bytes of shared memory
    (default: the family's; :func:`project_shared_memory`, :func:`~._tiles.fit_tile`), and raise
    where even 16 x 16 does not fit."""
    block_m = max(16, min(64, 4096 // block_k))
    widest = max(32, triton.next_power_of_2(n_out))
    block_n = 64 if 64 * block_k * size <= _W_TILE_BYTES // 2 and widest >= 64 else 32
    while block_m > 16 and block_m * block_k * size > _X_TILE_BYTES:
        block_m //= 2
    return _tiles.fit_tile(
        Tile.of(4, 1, BLOCK_M=block_m, BLOCK_N=block_n),
        lambda t: project_shared_memory(t, arch=arch, block_k=block_k, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="norm_project",
        shrink=("BLOCK_N", "BLOCK_M"),
        why=f"the kernel holds a whole channel vector per row ({block_k} channels of {size} bytes)",
    )


def project_shared_memory(tile: Tile, *, arch: str, block_k: int, size: int) -> int:
    """Shared memory of the norm + projection kernel: the normalised rows [BLOCK_M, BLOCK_K],
    staged once as the dots' first operand, and each column step's weight tile [BLOCK_K,
    BLOCK_N], pipelined over ``num_stages``; ``size``-byte elements (the activation dtype)."""
    m, n = tile.kwargs["BLOCK_M"], tile.kwargs["BLOCK_N"]
    return _tiles.shared_memory(arch, tile.num_stages, (block_k * n,), size, once=m * block_k)


def partial_tile(
    arch: str, *, block_d: int, block_e: int, size: int = 4, limit: Optional[int] = None
) -> Tile:
    """The context pass's tile: 64 positions per step, 4 warps, 2 stages (``wgmma``, no spills
    at d = 32..128 on sm_90), fitted to ``limit`` bytes of shared memory per block on
    ``size``-byte elements (default: the family's; :func:`~._tiles.fit_tile`)."""
    return _tiles.fit_tile(
        Tile.of(4, 2, BLOCK_N=64),
        lambda t: partial_shared_memory(t, arch=arch, block_d=block_d, block_e=block_e, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="context_partial",
        shrink=("BLOCK_N",),
    )


def partial_shared_memory(tile: Tile, *, arch: str, block_d: int, block_e: int, size: int) -> int:
    """Shared memory of the context pass: each step loads k [BLOCK_N, BLOCK_D] and v [BLOCK_N,
    BLOCK_E] (``size``-byte elements), pipelined over ``num_stages``; ``exp(k - max)`` enters the
    dot from registers."""
    n = tile.kwargs["BLOCK_N"]
    return _tiles.shared_memory(arch, tile.num_stages, (n * block_d, n * block_e), size)


def combine_shared_memory(*, arch: str, block_d: int, block_e: int) -> int:
    """Shared memory of the merge of the slices: no ``tl.dot``; a layout change of its fp32
    [BLOCK_D, BLOCK_E] tile at most (the audit reads 256 bytes)."""
    return _tiles.shared_memory(arch, 0, (), 4, scratch=block_d * block_e * 4)


def apply_tile(
    arch: str,
    *,
    dh: int,
    block_c: int = _MAX_BLOCK_C,
    size: int = 4,
    limit: Optional[int] = None,
) -> Tile:
    """The apply pass's tile: 64 positions (from 64 rows the product runs on ``wgmma``; 32 fell
    back to ``mma.sync``), head dims in tiles of up to 64, 4 warps, 2 stages; fitted to ``limit``
    bytes of shared memory per block for ``block_c`` output channels of ``size``-byte elements
    (default: the family's; :func:`~._tiles.fit_tile`)."""
    return _tiles.fit_tile(
        Tile.of(4, 2, BLOCK_N=64, BLOCK_D=_block_width(dh, 64)),
        lambda t: apply_shared_memory(t, arch=arch, block_c=block_c, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="attention_apply",
        shrink=("BLOCK_D", "BLOCK_N"),
    )


def apply_block_c(c_out: int) -> int:
    """Output channels per apply program: all of them up to :data:`_MAX_BLOCK_C`."""
    return _block_width(c_out, _MAX_BLOCK_C)


def apply_shared_memory(tile: Tile, *, arch: str, block_c: int, size: int) -> int:
    """Shared memory of the apply pass: each step loads q [BLOCK_N, BLOCK_D] and mix [BLOCK_D,
    BLOCK_C] (``size``-byte elements), pipelined over ``num_stages``; softmax(q) enters the dot
    from registers."""
    n, d = tile.kwargs["BLOCK_N"], tile.kwargs["BLOCK_D"]
    return _tiles.shared_memory(arch, tile.num_stages, (n * d, d * block_c), size)


def apply_grid(frames: int, positions: int, block_n: int, block_c: int, c_out: int) -> tuple:
    """The apply pass's grid: (frame, block of positions) pairs on axis 0, whose limit is
    2**31 - 1 (a 4K frame alone has 129,600 blocks of 64 positions: beyond the 65,535 of axes 1
    and 2), blocks of output channels on axis 1."""
    return (frames * triton.cdiv(positions, block_n), triton.cdiv(c_out, block_c))


# Opt-in autotuning (kernels/_tiles.py).
_norm_project_tuned = triton.autotune(
    _PROJECT_CONFIGS,
    key=["C", "N_OUT", "NORM", "BLOCK_K", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_project_configs},
)(_norm_project_kernel)
_context_partial_tuned = triton.autotune(
    _PARTIAL_CONFIGS, key=["DH", "HIDDEN", "BLOCK_D", "BLOCK_E", "DOT_PRECISION"]
)(_context_partial_kernel)
# restore_value: tuning reruns the kernel, and ``out`` may be the residual ``x`` (in place).
_attention_apply_tuned = triton.autotune(
    _APPLY_CONFIGS,
    key=["DH", "HEADS", "C_OUT", "BLOCK_C", "HAS_BIAS", "HAS_RESIDUAL", "DOT_PRECISION"],
    restore_value=["out_ptr"],
)(_attention_apply_kernel)


def _block_width(dh: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(dh)))  # tl.dot wants >= 16


def _slices(positions: int, programs: int, block: int, wanted: Optional[int]):
    """(number of slices, positions per slice, a multiple of ``block``)."""
    if wanted is None:
        wanted = triton.cdiv(_TARGET_PROGRAMS, programs)
    wanted = max(1, min(int(wanted), triton.cdiv(positions, block)))
    length = triton.cdiv(triton.cdiv(positions, wanted), block) * block
    return triton.cdiv(positions, length), length


def project_qkv(
    x: torch.Tensor,
    w_t: torch.Tensor,
    norm_g: Optional[torch.Tensor],
    norm_b: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """``[rows, N_OUT]`` = (LayerNorm of, when ``norm_g`` is given) x's voxel rows @ ``w_t``
    ([C, N_OUT], x's dtype), rows ordered (sample, t, h, w)."""
    b, c = x.shape[:2]
    voxels = x.shape[2] * x.shape[3] * x.shape[4]
    x_rows, sx_b, sx_s, sx_c = voxel_rows(x)
    n_out = w_t.shape[1]
    out = torch.empty(b * voxels, n_out, device=x.device, dtype=x.dtype)
    norm = norm_g is not None
    g = param_vector(norm_g, c, "norm_g") if norm else w_t
    beta = param_vector(norm_b, c, "norm_b") if norm else w_t
    block_k = _block_width(c, 1 << 30)
    args = (
        x_rows,
        g,
        beta,
        w_t,
        out,
        b * voxels,
        voxels,
        c,
        loop_arg(n_out),
        float(eps),
        sx_b,
        sx_s,
        sx_c,
        out.stride(0),
    )
    dtype = launch_dtype(x)
    meta = dict(NORM=norm, BLOCK_K=block_k, DOT_PRECISION=_dot_precision(dtype))
    rows = b * voxels
    arch = arch_family(x)
    _tiles.launch(
        _norm_project_kernel,
        _norm_project_tuned,
        lambda cfg: (triton.cdiv(rows, cfg["BLOCK_M"]),),
        args,
        meta,
        name="norm_project",
        arch=arch,
        shape_class=dict(meta, C=c, N_OUT=n_out, DTYPE=dtype),
        tile=project_tile(
            arch,
            block_k=block_k,
            n_out=n_out,
            size=dtype.itemsize,
            limit=_tiles.shared_memory_limit(x, arch),
        ),
        autotune=autotune_enabled(),
    )
    return out


def attention_context(
    qkv: torch.Tensor,
    frames: int,
    positions: int,
    heads: int,
    scale: float,
    splits: Optional[int] = None,
) -> torch.Tensor:
    """``scale * softmax_n(k) v^T`` of every frame and head from ``qkv`` rows
    [frames*positions, 3*hidden] (row = frame*positions + n): fp32 [frames, heads, d, d].
    ``splits`` forces the number of position slices of the context pass (tests)."""
    width = qkv.shape[1]
    hidden = width // 3
    dh = hidden // heads
    fh = frames * heads
    device = qkv.device
    block_d, block_e = _block_width(dh, 64), _block_width(dh, 128)
    blocks = triton.cdiv(dh, block_d) * triton.cdiv(dh, block_e)
    tuned = autotune_enabled()
    arch = arch_family(qkv)
    dtype = launch_dtype(qkv)
    meta = dict(BLOCK_D=block_d, BLOCK_E=block_e, DOT_PRECISION=_dot_precision(dtype))
    shape_class = dict(meta, DH=dh, HIDDEN=hidden, DTYPE=dtype)
    # The tile file's override, if any, before the slicing that depends on its BLOCK_N.
    limit = _tiles.shared_memory_limit(qkv, arch)
    table = partial_tile(arch, block_d=block_d, block_e=block_e, size=dtype.itemsize, limit=limit)
    tile = _tiles.lookup("context_partial", arch, shape_class, table)
    # Slices hold whole blocks: the tile's BLOCK_N, or the largest tuned one when tuning.
    partial_block_n = 128 if tuned else tile.kwargs["BLOCK_N"]
    num_splits, split_len = _slices(positions, fh * blocks, partial_block_n, splits)

    m = torch.empty(fh * num_splits * dh, device=device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(fh * num_splits * dh * dh, device=device, dtype=torch.float32)
    ctx = torch.empty(frames, heads, dh, dh, device=device, dtype=torch.float32)
    args = (
        qkv,
        m,
        l,
        acc,
        positions,
        heads,
        hidden,
        dh,
        loop_arg(split_len),
        qkv.stride(0),
        num_splits,
    )
    _tiles.launch(
        _context_partial_kernel,
        _context_partial_tuned,
        lambda cfg: (fh, num_splits, blocks),
        args,
        meta,
        name="context_partial",
        arch=arch,
        shape_class=shape_class,
        tile=tile,
        autotune=tuned,
    )
    _context_combine_kernel[check_grid((fh, triton.cdiv(dh, block_d)), "context_combine")](
        m,
        l,
        acc,
        ctx,
        loop_arg(dh),
        loop_arg(num_splits),
        float(scale),
        BLOCK_D=block_d,
        BLOCK_E=block_e,
    )
    return ctx


def projected_context(
    ctx: torch.Tensor, out_heads: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``mix = context @ W_head^T`` ([frames, heads, d, C_out], tiny), computed in fp32 and stored
    in the dtype the apply kernel's product takes (it would round it there anyway; half the
    bytes every apply program reads)."""
    return torch.matmul(ctx, out_heads).to(dtype)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 activations keep fp32 products (the reference's); 16-bit ones use the tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


def apply_attention(
    qkv: torch.Tensor,
    mix: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    out: torch.Tensor,
    positions: int,
) -> None:
    """``out = sum_heads softmax(q)^T mix (+ bias) (+ residual)``; ``mix`` [frames, heads, d,
    C_out] (:func:`projected_context`); ``out``/``residual`` [B, C_out, T, H, W] (``out``:
    channels-last or contiguous; ``residual``: any layout)."""
    frames, heads, dh, c_out = mix.shape
    hidden = heads * dh
    out_rows, so_b, so_s, so_c = voxel_rows(out)
    if out_rows is not out:
        raise ValueError(
            "out: its T, H, W dims must collapse into one stride (channels-last or "
            f"contiguous), got strides {out.stride()}"
        )
    res, sr_b, sr_s, sr_c = voxel_rows(residual) if residual is not None else (out, 0, 0, 0)
    voxels = out.shape[2] * out.shape[3] * out.shape[4]
    block_c = apply_block_c(c_out)
    args = (
        qkv,
        mix,
        bias if bias is not None else mix,
        res,
        out,
        positions,
        voxels,
        loop_arg(heads),
        hidden,
        loop_arg(dh),
        c_out,
        qkv.stride(0),
        sr_b,
        sr_s,
        sr_c,
        so_b,
        so_s,
        so_c,
    )
    dtype = launch_dtype(qkv)
    meta = dict(
        HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None,
        BLOCK_C=block_c,
        DOT_PRECISION=_dot_precision(dtype),
    )
    arch = arch_family(qkv)
    _tiles.launch(
        _attention_apply_kernel,
        _attention_apply_tuned,
        lambda cfg: apply_grid(frames, positions, cfg["BLOCK_N"], block_c, c_out),
        args,
        meta,
        name="attention_apply",
        arch=arch,
        shape_class=dict(meta, DH=dh, HEADS=heads, C_OUT=c_out, DTYPE=dtype),
        tile=apply_tile(
            arch,
            dh=dh,
            block_c=block_c,
            size=dtype.itemsize,
            limit=_tiles.shared_memory_limit(qkv, arch),
        ),
        autotune=autotune_enabled(),
    )


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
        elif tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"out must be a {x.dtype} tensor of shape {shape} on {x.device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
        apply_attention(qkv, mix, self.bias, x if residual else None, out, h * w)
        return out


def _check_activation(x: torch.Tensor, c: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor [B, C, T, H, W], got {type(x).__name__}")
    if x.dim() != 5 or x.shape[1] != c:
        raise ValueError(f"x must be [B, C={c}, T, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be float32/float16/bfloat16, got {x.dtype}")


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
