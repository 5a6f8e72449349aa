"""Causal temporal resampling in Triton: the stride-2 downsample and the 2x pixel-shuffle upsample.

Both are GEMMs over pixels (rows: ``b, t, h, w``; reduction: input channels, times 3 taps for the
downsample) that upstream runs through ``rearrange(...).contiguous()`` round trips. Here one
kernel reads the frames where they lie -- the chunk, the cached past frame or the padding -- and
writes the output frames in place, so nothing is copied. Channels-last inputs (the engine's
layout) give coalesced loads along channels; any strides are accepted.

Semantics are exactly :func:`cdt_fast.functional.time_downsample` /
:func:`cdt_fast.functional.time_upsample`; accumulation is fp32, results are rounded once to the
input dtype. fp32 inputs use IEEE fp32 products unless torch allows TF32 for its cuDNN convs
(:func:`~._common.cudnn_conv_tf32`), as the reference conv then does.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from cdt_fast.functional import PAD_MODES, cast_like

from . import _tiles
from ._common import (
    check_activation,
    check_launchable,
    check_out,
    empty_like_layout,
    exact_fp32,
    param_vector,
)
from ._gemm_rows import accumulate_rows
from ._tiles import Tile, autotune_enabled, launch_dtype, tile_family

__all__ = ["time_downsample", "time_upsample", "resample_tile", "resample_shared_memory"]

_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (128, 128, 32, 4, 4),
        (64, 64, 64, 4, 4),
        (128, 256, 64, 8, 3),
    ]
]
# Channel counts are constexpr: loop bounds must be compile-time constants for the Triton 3.6
# interpreter under NumPy >= 2.4 (it cannot turn a runtime scalar into a Python int), and a
# network has only a handful of widths to specialise for.


# Frame counts change between a clip's chunks: not specialised, so each chunk kind does not
# compile anew (they only index frames).
@triton.jit(do_not_specialize=["T_OUT", "FRONT"])
def _time_downsample_kernel(
    x_ptr,
    past_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    T_OUT,
    HW,
    WIDTH,
    FRONT,
    s_xb,
    s_xc,
    s_xt,
    s_xh,
    s_xw,
    s_pb,
    s_pc,
    s_pt,
    s_ph,
    s_pw,
    s_wo,
    s_wi,
    s_wk,
    s_ob,
    s_oc,
    s_ot,
    s_oh,
    s_ow,
    C_IN: tl.constexpr,
    C_OUT: tl.constexpr,
    HAS_PAST: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    REPLICATE: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Output frame `to` reads frames 2*to + k (k = 0, 1, 2) of [front | x], where front is the
    # cached past (FRONT = its frame count) or, on a stream's first chunk, 2 padding frames.
    pid_m = tl.program_id(0)
    pid_bt = tl.program_id(1)
    pid_n = tl.program_id(2)
    # Batch, frame, row and channel offsets in 64 bits: a 720p chunk passes 2**31 elements, so
    # `to * s_ot` (channels-last) or `c * s_oc` (contiguous) would wrap in 32 bits.
    b = (pid_bt // T_OUT).to(tl.int64)
    to = (pid_bt % T_OUT).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < HW
    mask_n = offs_n < C_OUT
    hh = (offs_m // WIDTH).to(tl.int64)
    ww = (offs_m % WIDTH).to(tl.int64)
    x_rows = x_ptr + b * s_xb + hh * s_xh + ww * s_xw
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.static_range(3):
        j = 2 * to + k
        w_cols = offs_n * s_wo + k * s_wk
        if j >= FRONT:
            acc = accumulate_rows(
                acc,
                x_rows + (j - FRONT) * s_xt,
                s_xc,
                mask_m,
                w_ptr,
                s_wi,
                w_cols,
                mask_n,
                C_IN,
                IEEE,
                BLOCK_K,
            )
        elif HAS_PAST:
            acc = accumulate_rows(
                acc,
                past_ptr + b * s_pb + j * s_pt + hh * s_ph + ww * s_pw,
                s_pc,
                mask_m,
                w_ptr,
                s_wi,
                w_cols,
                mask_n,
                C_IN,
                IEEE,
                BLOCK_K,
            )
        elif REPLICATE:  # padding frames are copies of the chunk's first frame
            acc = accumulate_rows(
                acc, x_rows, s_xc, mask_m, w_ptr, s_wi, w_cols, mask_n, C_IN, IEEE, BLOCK_K
            )
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = (
        out_ptr
        + b * s_ob
        + to * s_ot
        + (hh * s_oh + ww * s_ow)[:, None]
        + offs_n.to(tl.int64)[None, :] * s_oc
    )
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit(do_not_specialize=["T_IN", "DROP"])
def _time_upsample_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    T_IN,
    HW,
    WIDTH,
    DROP,
    s_xb,
    s_xc,
    s_xt,
    s_xh,
    s_xw,
    s_wo,
    s_wi,
    s_ob,
    s_oc,
    s_ot,
    s_oh,
    s_ow,
    C: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Conv output channel 2c+p is output frame 2t+p (minus DROP) of channel c: one x tile feeds
    # both phases, each written straight to its frame.
    pid_m = tl.program_id(0)
    pid_bt = tl.program_id(1)
    pid_n = tl.program_id(2)
    b = (pid_bt // T_IN).to(tl.int64)  # 64-bit offsets, as in the downsample
    t = (pid_bt % T_IN).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < HW
    mask_n = offs_n < C
    hh = (offs_m // WIDTH).to(tl.int64)
    ww = (offs_m % WIDTH).to(tl.int64)
    x_rows = x_ptr + b * s_xb + t * s_xt + hh * s_xh + ww * s_xw
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        ck = c0 + offs_k
        mask_k = ck < C
        a = tl.load(
            x_rows[:, None] + ck.to(tl.int64)[None, :] * s_xc,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        # The weight tiles are loaded [N, K] and transposed for the dot: upstream's [2C, C] weight
        # is contiguous along K (Cin), so this way the loads are 16 bytes wide instead of one
        # element (its N rows interleave the two phases, stride 2C).
        w_off = (2 * offs_n)[:, None] * s_wo + ck[None, :] * s_wi
        w_mask = mask_n[:, None] & mask_k[None, :]
        w0 = tl.trans(tl.load(w_ptr + w_off, mask=w_mask, other=0.0))
        w1 = tl.trans(tl.load(w_ptr + w_off + s_wo, mask=w_mask, other=0.0))
        if IEEE:
            acc0 = tl.dot(a, w0, acc0, input_precision="ieee")
            acc1 = tl.dot(a, w1, acc1, input_precision="ieee")
        else:
            acc0 = tl.dot(a, w0, acc0)
            acc1 = tl.dot(a, w1, acc1)
    if HAS_BIAS:
        acc0 += tl.load(b_ptr + 2 * offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        acc1 += tl.load(b_ptr + 2 * offs_n + 1, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = (
        out_ptr + b * s_ob + (hh * s_oh + ww * s_ow)[:, None] + offs_n.to(tl.int64)[None, :] * s_oc
    )
    mask = mask_m[:, None] & mask_n[None, :]
    t0 = 2 * t - DROP
    if t0 >= 0:
        tl.store(out + t0 * s_ot, acc0.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out + (t0 + 1) * s_ot, acc1.to(out_ptr.dtype.element_ty), mask=mask)


def _prune_ieee(configs, named_args, **kwargs):
    """IEEE fp32 dots unroll into FMAs: big tiles take minutes to compile, so fp32 without TF32
    tunes over the small ones only."""
    if not kwargs.get("IEEE"):
        return configs
    return [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]


_IEEE_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=2)
]


@_tiles.per_shape_class
def resample_tile(
    arch: str,
    *,
    c_in: int,
    c_out: int,
    ieee: bool,
    size: int,
    upsample: bool,
    limit: Optional[int] = None,
) -> Tile:
    """The table's tile (:func:`_table_tile`) fitted to ``limit`` bytes of shared memory per
    block (default: the family's, which the table's tiles fit; :func:`~._tiles.fit_tile`:
    stages, then K, N and M tiles)."""
    tile = _table_tile(arch, c_in=c_in, c_out=c_out, ieee=ieee, size=size, upsample=upsample)
    return _tiles.fit_tile(
        tile,
        lambda t: resample_shared_memory(t, arch=arch, upsample=upsample, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="time_upsample" if upsample else "time_downsample",
        shrink=("BLOCK_K", "BLOCK_N", "BLOCK_M"),
    )


def _table_tile(arch: str, *, c_in: int, c_out: int, ieee: bool, size: int, upsample: bool) -> Tile:
    """The one tile of a temporal down/upsample shape class (``c_out``: the GEMM's N, the output
    channels of one phase; ``size``: bytes per element). 128 x 128 x 64 in 3 stages with 8 warps
    compiles to ``wgmma`` with 16-byte ``cp.async`` loads and no spills on sm_90
    (``tools/sass_audit.py``); fewer than 128 channels take a 64-wide N tile and one warpgroup.

    4-byte elements (fp32 on TF32 dots) take 32-wide K tiles: at 64, 3 stages of the upsample's
    three tiles (x and the two phases' weights) needed 289 KiB of shared memory on sm_90 and the
    downsample's two K loops 385 KiB, more than any GPU gives a block
    (:func:`resample_shared_memory`). Halving K keeps the bytes of a stage and the 3-stage
    pipeline of the 16-bit tile; 2 stages at K = 64 would still leave the downsample at 257 KiB
    on sm_90, and would halve the loads in flight. The fp32 upsample's two 128 x 128 fp32
    accumulators then sat at the register cap and spilled (16 bytes): it takes 64-wide N tiles
    (166 registers). In KiB on sm_90 / sm_80: downsample 193 / 129, upsample 97 / 65.

    Exact fp32 dots unroll into FMAs: one small tile (big ones take minutes to compile)."""
    if ieee:
        return Tile.from_config(_IEEE_CONFIGS[0])
    # 64 channels of 16-bit elements (128 bytes) per K step, or 32 of fp32.
    block_k = 128 // size
    if c_out >= 128:
        block_n = 64 if upsample and size == 4 else 128
        return Tile.of(8, 3, BLOCK_M=128, BLOCK_N=block_n, BLOCK_K=block_k)
    return Tile.of(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=block_k if c_in >= 64 else 32)


def resample_shared_memory(tile: Tile, *, arch: str, upsample: bool, size: int) -> int:
    """Shared memory of a temporal resampling kernel with ``tile`` on ``size``-byte elements: each
    K step loads an input tile [BLOCK_M, BLOCK_K] and a weight tile [BLOCK_K, BLOCK_N] per output
    phase (two for the upsample), pipelined over ``num_stages``. The downsample's taps read the
    chunk or, in another branch, the cached frame or the replicated first frame: two K loops,
    each with its own buffers (the zero-padded first chunk has one)."""
    m, n, k = (tile.kwargs[f"BLOCK_{d}"] for d in "MNK")
    phases, loops = (2, 1) if upsample else (1, 2)
    operands = (loops * m * k, loops * phases * k * n)
    return _tiles.shared_memory(arch, tile.num_stages, operands, size)


# Opt-in autotuning (kernels/_tiles.py); keyed on the channels, not the frame size.
_time_downsample_tuned = triton.autotune(
    _CONFIGS + _IEEE_CONFIGS,
    key=["C_IN", "C_OUT", "IEEE"],
    prune_configs_by={"early_config_prune": _prune_ieee},
)(_time_downsample_kernel)
# Two accumulators (one per output phase): keep tiles at most 128x128.
_time_upsample_tuned = triton.autotune(
    [c for c in _CONFIGS if c.kwargs["BLOCK_N"] <= 128] + _IEEE_CONFIGS,
    key=["C", "IEEE"],
    prune_configs_by={"early_config_prune": _prune_ieee},
)(_time_upsample_kernel)


def _check_weight(weight, shape, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(shape):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a tensor of shape {list(shape)}, got {got}")


def _check_bias(bias, channels: int) -> None:
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.numel() != channels):
        raise ValueError(
            f"bias must be None or a tensor of {channels} elements, got "
            f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else bias!r}"
        )


def _bias_vector(bias: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    """The bias in x's dtype as the dense vector the kernels index (a strided view is copied)."""
    return None if bias is None else param_vector(cast_like(bias, x), bias.numel(), "bias")


def _launch(kernel, tuned, x, grid_frames, hw, args, meta, name, c_in):
    def grid(m):
        return (triton.cdiv(hw, m["BLOCK_M"]), grid_frames, triton.cdiv(args["n"], m["BLOCK_N"]))

    arch = tile_family(x)
    dtype = launch_dtype(x)
    _tiles.launch(
        kernel,
        tuned,
        grid,
        (*args["tensors"], *args["scalars"]),
        meta,
        name=name,
        arch=arch,
        shape_class=dict(meta, DTYPE=dtype),
        tile=resample_tile(
            arch,
            c_in=c_in,
            c_out=args["n"],
            ieee=meta["IEEE"],
            size=dtype.itemsize,
            upsample=name == "time_upsample",
            limit=_tiles.shared_memory_limit(x, arch),
        ),
        autotune=autotune_enabled(),
    )


def time_downsample(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    past: Optional[torch.Tensor] = None,
    pad_mode: str = "zeros",
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Triton :func:`cdt_fast.functional.time_downsample`: kernel 3, stride 2 along time over
    ``[past | x]`` (or ``[2 padding frames | x]`` on a stream's first chunk). ``weight`` is
    [C_out, C_in, 3]; ``out`` an optional [B, C_out, T_out, H, W] buffer of x's dtype."""
    check_activation(x, "x", "temporal resampling")
    check_launchable(x, "time_downsample", "cdt_fast.functional.time_downsample")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    bsz, c_in, t_in, h, w = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError("weight must be a [C_out, C_in, 3] tensor (upstream's Conv1d weight)")
    c_out = weight.shape[0]
    _check_weight(weight, (c_out, c_in, 3))
    _check_bias(bias, c_out)
    if past is not None:
        check_activation(past, "past", "temporal resampling")
        if past.shape[:2] != x.shape[:2] or past.shape[3:] != x.shape[3:] or past.shape[2] < 1:
            raise ValueError(
                f"past must be [B, C, P>=1, H, W] matching x {list(x.shape)}, "
                f"got {list(past.shape)}"
            )
        past = past.to(x.dtype)
    front = past.shape[2] if past is not None else 2
    t_out = (front + t_in - 3) // 2 + 1
    if t_out < 1:
        raise ValueError(
            f"x has too few frames ({t_in}) for a stride-2 kernel-3 step after "
            f"{front} {'past' if past is not None else 'padding'} frames"
        )
    weight, bias = cast_like(weight, x), _bias_vector(bias, x)
    shape = (bsz, c_out, t_out, h, w)
    out = empty_like_layout(x, shape) if out is None else check_out(out, shape, x.dtype, x.device)
    p = past if past is not None else x
    args = {
        "n": c_out,
        "tensors": (x, p, weight, bias if bias is not None else weight, out),
        "scalars": (
            t_out,
            h * w,
            w,
            front,
            *x.stride(),
            *p.stride(),
            *weight.stride(),
            *out.stride(),
        ),
    }
    meta = dict(
        C_IN=c_in,
        C_OUT=c_out,
        HAS_PAST=past is not None,
        HAS_BIAS=bias is not None,
        REPLICATE=pad_mode == "replicate",
        IEEE=exact_fp32(x),
    )
    _launch(
        _time_downsample_kernel,
        _time_downsample_tuned,
        x,
        bsz * t_out,
        h * w,
        args,
        meta,
        "time_downsample",
        c_in,
    )
    return out


def time_upsample(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    drop_first: bool,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Triton :func:`cdt_fast.functional.time_upsample`: pointwise conv to 2C channels, channel
    2c+p written as frame 2t+p of channel c, frame 0 dropped when ``drop_first``. ``weight`` is
    [2C, C, 1]; ``out`` an optional [B, C, 2T - drop_first, H, W] buffer of x's dtype."""
    check_activation(x, "x", "temporal resampling")
    bsz, c, t_in, h, w = x.shape
    _check_weight(weight, (2 * c, c, 1))
    _check_bias(bias, 2 * c)
    drop_first = bool(drop_first)
    check_launchable(x, "time_upsample", "cdt_fast.functional.time_upsample")
    weight, bias = cast_like(weight, x), _bias_vector(bias, x)
    shape = (bsz, c, 2 * t_in - int(drop_first), h, w)
    out = empty_like_layout(x, shape) if out is None else check_out(out, shape, x.dtype, x.device)
    if out.numel() == 0:
        return out
    args = {
        "n": c,
        "tensors": (x, weight, bias if bias is not None else weight, out),
        "scalars": (
            t_in,
            h * w,
            w,
            int(drop_first),
            *x.stride(),
            weight.stride(0),
            weight.stride(1),
            *out.stride(),
        ),
    }
    meta = dict(C=c, HAS_BIAS=bias is not None, IEEE=exact_fp32(x))
    _launch(
        _time_upsample_kernel,
        _time_upsample_tuned,
        x,
        bsz * t_in,
        h * w,
        args,
        meta,
        "time_upsample",
        c,
    )
    return out
