"""The linear attention's passes as launches (see :mod:`.linear_attention` for the block they
make up): :func:`project_qkv`, :func:`attention_context` (split over slices of positions, then
merged), :func:`projected_context` (a tiny torch matmul) and :func:`apply_attention`."""

from __future__ import annotations

from typing import Optional

import torch
import triton

from . import _tiles
from ._common import check_grid, loop_arg, on_device, param_vector, voxel_rows
from ._tiles import autotune_enabled, launch_dtype, tile_family
from .linear_attention_kernel import (
    _attention_apply_kernel,
    _context_combine_kernel,
    _context_partial_kernel,
    _norm_project_kernel,
    attention_apply_tuned,
    context_partial_tuned,
    norm_project_tuned,
)
from .linear_attention_tiles import (
    apply_block_c,
    apply_tile,
    block_width,
    partial_tile,
    project_tile,
)

__all__ = [
    "project_qkv",
    "attention_context",
    "projected_context",
    "apply_attention",
    "apply_grid",
    "slices",
    "dot_precision",
]

# Programs wanted per context pass (a few waves on an H100's 132 SMs) when choosing the slices.
TARGET_PROGRAMS = 528


def apply_grid(frames: int, positions: int, block_n: int, block_c: int, c_out: int) -> tuple:
    """The apply pass's grid: (frame, block of positions) pairs on axis 0, whose limit is
    2**31 - 1 (a 4K frame alone has 129,600 blocks of 64 positions: beyond the 65,535 of axes 1
    and 2), blocks of output channels on axis 1."""
    return (frames * triton.cdiv(positions, block_n), triton.cdiv(c_out, block_c))


def slices(positions: int, programs: int, block: int, wanted: Optional[int]):
    """(number of slices, positions per slice, a multiple of ``block``)."""
    if wanted is None:
        wanted = triton.cdiv(TARGET_PROGRAMS, programs)
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
    block_k = block_width(c, 1 << 30)
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
    meta = dict(NORM=norm, BLOCK_K=block_k, DOT_PRECISION=dot_precision(dtype))
    rows = b * voxels
    arch = tile_family(x)
    _tiles.launch(
        _norm_project_kernel,
        norm_project_tuned,
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
    block_d, block_e = block_width(dh, 64), block_width(dh, 128)
    blocks = triton.cdiv(dh, block_d) * triton.cdiv(dh, block_e)
    tuned = autotune_enabled()
    arch = tile_family(qkv)
    dtype = launch_dtype(qkv)
    meta = dict(BLOCK_D=block_d, BLOCK_E=block_e, DOT_PRECISION=dot_precision(dtype))
    shape_class = dict(meta, DH=dh, HIDDEN=hidden, DTYPE=dtype)
    # The tile file's override, if any, before the slicing that depends on its BLOCK_N.
    limit = _tiles.shared_memory_limit(qkv, arch)
    table = partial_tile(arch, block_d=block_d, block_e=block_e, size=dtype.itemsize, limit=limit)
    tile = _tiles.lookup("context_partial", arch, shape_class, table)
    # Slices hold whole blocks: the tile's BLOCK_N, or the largest tuned one when tuning.
    partial_block_n = 128 if tuned else tile.kwargs["BLOCK_N"]
    num_splits, split_len = slices(positions, fh * blocks, partial_block_n, splits)

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
        context_partial_tuned,
        lambda cfg: (fh, num_splits, blocks),
        args,
        meta,
        name="context_partial",
        arch=arch,
        shape_class=shape_class,
        tile=tile,
        autotune=tuned,
    )
    with on_device(qkv):
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


def dot_precision(dtype: torch.dtype) -> str:
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
        DOT_PRECISION=dot_precision(dtype),
    )
    arch = tile_family(qkv)
    _tiles.launch(
        _attention_apply_kernel,
        attention_apply_tuned,
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
