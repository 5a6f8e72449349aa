"""Fused CDT norm block: channel LayerNorm + affine (+ ReLU) (+ per-sample time bias) (+ residual).

One pass over a ``[B, C, T, H, W]`` activation: each program loads a tile of voxels with all ``C``
channels, computes mean and biased variance in fp32, normalises, applies ``g``/``b``, the optional
ReLU, time bias and residual, and stores once in the activation dtype. The reference is
:func:`cdt_fast.functional.channel_norm`; :func:`channel_norm` here has its signature and
semantics (plus ``out=``).

Conv epilogues: :func:`channel_norm_tile` is the per-voxel math as a ``@triton.jit`` helper. A conv
kernel whose output tile holds *every* output channel of its voxels (``BLOCK_N >= C_out``) can call
it on its fp32 accumulator (after adding the conv bias)::

    acc = acc + conv_bias[None, :]                                  # [BLOCK_M voxels, BLOCK_N]
    g = tl.load(g_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    y = channel_norm_tile(acc, g, b, 0.0, 0.0, mask_n, C_out, eps,
                          RELU=True, HAS_TIME_BIAS=False, HAS_RESIDUAL=False)

``time_bias``/``residual`` are tiles the caller has loaded (any shape broadcasting to the
accumulator; pass ``0.0`` when the flag is off), so the helper does not care about the caller's
layout. Columns at or beyond ``C`` are left out of the statistics; store them masked.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _tiles
from ._common import check_activation, check_launchable, check_out, param_vector, voxel_rows
from ._tiles import Tile, autotune_enabled, launch_dtype, tile_family

__all__ = ["channel_norm", "channel_norm_tile", "norm_shared_memory"]

# Tiles of 1K..16K elements; the row count follows from the (power-of-two padded) channel count.
_CONFIGS = [
    triton.Config({"BLOCK_M": m}, num_warps=w)
    for m in (1, 2, 4, 8, 16, 32, 64, 128)
    for w in (2, 4, 8)
]
_DEFAULT_TILE = 4096


@_tiles.per_shape_class
def norm_tile(arch: str, *, block_c: int, limit: Optional[int] = None) -> Tile:
    """The one tile of a channel-norm shape class: rows of ``block_c`` (next_pow2(C)) channels,
    4096 elements per program (32 fp32 values per thread of 4 warps: no spills on sm_90 at
    C = 16..512, ``tools/sass_audit.py``). A memory-bound row reduction: nothing in it depends on
    the arch family, which stays in the shape class for tables to come. Checked against ``limit``
    bytes of shared memory per block (default: the family's; :func:`~._tiles.fit_tile`)."""
    return _tiles.fit_tile(
        Tile.of(4, 3, BLOCK_M=max(1, min(128, _DEFAULT_TILE // block_c))),
        lambda t: norm_shared_memory(t, arch=arch, block_c=block_c),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="channel_norm",
    )


def norm_shared_memory(tile: Tile, *, arch: str, block_c: int) -> int:
    """Shared memory of the norm kernel with ``tile``: no ``tl.dot``, nothing pipelined; the row
    reductions (mean, variance) and layout changes of the [BLOCK_M, BLOCK_C] tile stage at most
    that tile in fp32 (the audit reads 0-3 KiB)."""
    return _tiles.shared_memory(arch, 0, (), 4, scratch=tile.kwargs["BLOCK_M"] * block_c * 4)


def _prune_configs(configs, named_args, **kwargs):
    block_c = kwargs.get("BLOCK_C", named_args.get("BLOCK_C"))
    kept = [
        c
        for c in configs
        if 1024 <= c.kwargs["BLOCK_M"] * block_c <= 16384
        and c.num_warps * 32 <= c.kwargs["BLOCK_M"] * block_c
    ]
    return kept or [min(configs, key=lambda c: abs(c.kwargs["BLOCK_M"] * block_c - _DEFAULT_TILE))]


@triton.jit
def channel_norm_tile(
    x,
    g,
    b,
    time_bias,
    residual,
    mask_c,
    C,
    eps,
    RELU: tl.constexpr,
    HAS_TIME_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    """``x``: fp32 [rows, BLOCK_C] voxels by channels; ``g``, ``b``: fp32 [BLOCK_C]; ``mask_c``:
    which columns are channels (< C). Returns the fp32 norm-block output of every voxel."""
    x = tl.where(mask_c[None, :], x, 0.0)
    mean = tl.sum(x, axis=1) / C
    centred = tl.where(mask_c[None, :], x - mean[:, None], 0.0)
    var = tl.sum(centred * centred, axis=1) / C
    y = centred / tl.sqrt(var + eps)[:, None] * g[None, :] + b[None, :]
    if RELU:
        y = tl.maximum(y, 0.0)
    if HAS_TIME_BIAS:
        y = y + time_bias
    if HAS_RESIDUAL:
        y = y + residual
    return y


# Row counts (M rows, S voxels a sample) change between a clip's chunks: not specialised, so
# each chunk kind does not compile anew; they only bound the row mask and split rows.
@triton.jit(do_not_specialize=["M", "S"])
def _channel_norm_kernel(
    x_ptr,
    g_ptr,
    b_ptr,
    tb_ptr,
    res_ptr,
    out_ptr,
    M,
    S,
    C,
    eps,
    sx_b,
    sx_s,
    sx_c,
    sr_b,
    sr_s,
    sr_c,
    so_b,
    so_s,
    so_c,
    stb_b,
    stb_c,
    RELU: tl.constexpr,
    HAS_TIME_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Rows in 64 bits from the program id on: offsets of 720p chunks pass 2**31, and so may a
    # tile's last rows before the mask cuts them.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rows < M
    sample = rows // S
    voxel = rows % S
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    mask = mask_m[:, None] & mask_c[None, :]
    cols_64 = cols.to(tl.int64)  # the channel stride of a contiguous tensor is T*H*W

    x = tl.load(
        x_ptr + (sample * sx_b + voxel * sx_s)[:, None] + cols_64[None, :] * sx_c,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    g = tl.load(g_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    time_bias = 0.0
    if HAS_TIME_BIAS:
        time_bias = tl.load(
            tb_ptr + sample[:, None] * stb_b + cols[None, :] * stb_c, mask=mask, other=0.0
        ).to(tl.float32)
    residual = 0.0
    if HAS_RESIDUAL:
        residual = tl.load(
            res_ptr + (sample * sr_b + voxel * sr_s)[:, None] + cols_64[None, :] * sr_c,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
    y = channel_norm_tile(
        x, g, b, time_bias, residual, mask_c, C, eps, RELU, HAS_TIME_BIAS, HAS_RESIDUAL
    )
    tl.store(
        out_ptr + (sample * so_b + voxel * so_s)[:, None] + cols_64[None, :] * so_c,
        y.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


# Opt-in autotuning (kernels/_tiles.py). restore_value: tuning reruns the kernel, and ``out`` may be ``x`` or ``residual`` (in place).
_channel_norm_tuned = triton.autotune(
    _CONFIGS,
    key=["C", "RELU", "HAS_TIME_BIAS", "HAS_RESIDUAL", "BLOCK_C"],
    prune_configs_by={"early_config_prune": _prune_configs},
    restore_value=["out_ptr"],
)(_channel_norm_kernel)


def _time_bias_matrix(time_bias: torch.Tensor, b: int, c: int) -> torch.Tensor:
    if tuple(time_bias.shape) not in ((b, c), (b, c, 1, 1, 1)):
        raise ValueError(
            f"time_bias must have shape [B, C] = [{b}, {c}] or [B, C, 1, 1, 1], "
            f"got {tuple(time_bias.shape)}"
        )
    return time_bias.reshape(b, c)


def _result_dtype(x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.dtype:
    """x's dtype, promoted with the residual's (checked to have x's shape)."""
    if residual is None:
        return x.dtype
    if tuple(residual.shape) != tuple(x.shape):
        raise ValueError(
            f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
        )
    return torch.promote_types(x.dtype, residual.dtype)


def channel_norm(
    x: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    eps: float = 1e-5,
    *,
    relu: bool = False,
    time_bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.channel_norm` in one Triton pass (fp32 statistics).

    ``out``: optional preallocated result of x's shape and result dtype (it may be ``x`` or
    ``residual`` itself: every voxel is read before it is written). Without it the result keeps
    x's memory format.
    """
    check_activation(x, "x", "channel_norm")
    check_launchable(x, "channel_norm")
    bsz, c = x.shape[:2]
    g, b = param_vector(g, c, "g"), param_vector(b, c, "b")
    dtype = _result_dtype(x, residual)
    if time_bias is not None:
        time_bias = _time_bias_matrix(time_bias, bsz, c)
    out = (
        torch.empty_like(x, dtype=dtype)
        if out is None
        else check_out(out, x.shape, dtype, x.device)
    )
    if x.numel() == 0:
        return out

    x_rows, sx_b, sx_s, sx_c = voxel_rows(x)
    out_rows, so_b, so_s, so_c = voxel_rows(out)
    res_rows, sr_b, sr_s, sr_c = voxel_rows(residual) if residual is not None else (x_rows, 0, 0, 0)
    tb = time_bias if time_bias is not None else g
    stb_b, stb_c = (time_bias.stride(0), time_bias.stride(1)) if time_bias is not None else (0, 0)
    voxels = x.shape[2] * x.shape[3] * x.shape[4]
    rows = bsz * voxels
    block_c = triton.next_power_of_2(c)
    args = (
        x_rows,
        g,
        b,
        tb,
        res_rows,
        out_rows,
        rows,
        voxels,
        c,
        float(eps),
        sx_b,
        sx_s,
        sx_c,
        sr_b,
        sr_s,
        sr_c,
        so_b,
        so_s,
        so_c,
        stb_b,
        stb_c,
    )
    flags = dict(
        RELU=bool(relu),
        HAS_TIME_BIAS=time_bias is not None,
        HAS_RESIDUAL=residual is not None,
        BLOCK_C=block_c,
    )
    arch = tile_family(x)
    _tiles.launch(
        _channel_norm_kernel,
        _channel_norm_tuned,
        lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]),),
        args,
        flags,
        name="channel_norm",
        arch=arch,
        shape_class=dict(flags, C=c, DTYPE=launch_dtype(x), OUT_DTYPE=dtype),
        tile=norm_tile(arch, block_c=block_c, limit=_tiles.shared_memory_limit(x, arch)),
        autotune=autotune_enabled(),
    )
    if out_rows is not out:  # out had a layout the kernel cannot address: copy the result back
        out.copy_(out_rows)
    return out
