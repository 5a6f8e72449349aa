"""Causal 3D convolution as a Triton implicit GEMM, reading cached frames and padding in place.

The launcher :func:`causal_conv3d` has the signature and semantics of
:func:`cdt_fast.functional.causal_conv3d` (plus keyword-only ``out=`` and ``epilogue=``): the conv
reads the virtual sequence ``[temporal pad | past | x]`` and the spatial padding through index
clamps (``pad_mode="replicate"``) or masks (``"zeros"``), so no concatenated or padded tensor is
ever built. ``upsample2x`` reads the inputs nearest-2x-upsampled by index arithmetic
(``h_src = h_up // 2``), which is exactly ``nearest-exact`` at scale 2.

GEMM view: M runs over output voxels ``(b, t, h, w)``, N over output channels, K over
``kt * kh * kw * Cin`` (taps outer, channels inner, so a K tile is a run of channels of one input
voxel: contiguous in channels-last ``NDHWC`` memory). Any strides are accepted; channels-last
activations (``torch.channels_last_3d``) give coalesced loads. The weight is read as it comes when
either Cin or Cout is its innermost dim: a ``channels_last_3d`` weight (what the engine holds, and
what cuDNN wants) or one from :func:`pack_weight` compile to the same 16-byte ``cp.async`` loads
and ``wgmma`` on sm_90 (``tools/sass_audit.py``); any other layout is repacked per call. Accumulation is fp32 for fp16/bf16/fp32 inputs; the output has ``x``'s dtype.

Epilogue hook (the contract other kernels build on)
---------------------------------------------------
``epilogue=Epilogue(...)`` appends, on the fp32 accumulator and in this fixed order (the order of
:func:`cdt_fast.functional.channel_norm`, i.e. a CDT ``Block`` followed by ``ResnetBlock``'s adds):

1. ``+ bias[n]`` (the conv's own bias, always fused when given);
2. ``norm_weight``/``norm_bias`` given: LayerNorm over the output channels of each voxel (biased
   variance, ``eps``) with that affine. This needs every channel of a voxel in one program, so the
   launcher then uses one N tile of ``next_pow2(Cout)`` columns (fine for CDT's <= 512 channels);
3. ``relu=True``: ReLU;
4. ``channel_bias`` ([B, Cout] or [B, Cout, 1, 1, 1]): ``+ channel_bias[b, n]`` (the time bias);
5. ``residual`` (the output's logical shape, any strides, must not alias ``out``): ``+ residual``.

In the kernel each stage is a ``tl.constexpr`` flag (``NORM``, ``RELU``, ``HAS_CBIAS``,
``HAS_RES``) read by :func:`_conv_epilogue`, so a disabled stage costs nothing and a new stage is one
more flag and pointer there, not a copy of the main loop.

Tiles: one config per shape class from :func:`conv_tile` beside the kernel (see
``kernels/_tiles.py``); autotuning over :func:`_autotune_configs` only on request, keyed on the
conv geometry (never the row count). Under the Triton interpreter (``TRITON_INTERPRET=1``) the
launch takes the same path and tile (the ``sm_80`` family's, or another one's inside
``tile_options(arch=...)``). Programs are ordered in groups of ``GROUP_M`` row tiles
(program-id swizzle) so neighbouring programs reuse the same weight columns from L2.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from cdt_fast.functional import PAD_MODES

from . import _tiles
from ._common import check_launchable, exact_fp32, loop_arg, same_data
from ._tiles import Tile, arch_family, autotune_enabled, launch_dtype
from .channel_norm import channel_norm, channel_norm_tile

__all__ = [
    "Epilogue",
    "causal_conv3d",
    "causal_conv3d_frames",
    "causal_conv3d_norm",
    "pack_weight",
    "output_shape",
    "FUSED_NORM_MAX_CHANNELS",
    "conv_tile",
    "conv_shared_memory",
]

# Widest conv whose LayerNorm runs in its epilogue. The norm needs a voxel's every channel in one
# tile, so the fp32 accumulator is BLOCK_M x next_pow2(Cout): up to 128 columns it fits the
# register file beside a 64..128-row tile (the audit compiles these without spills); wider rows
# would force tiny BLOCK_M or spill, so those layers run the conv, then one channel_norm pass.
FUSED_NORM_MAX_CHANNELS = 128
# fp32 accumulator elements per program allowed for the full-row (fused norm) tiles.
_FULL_ROW_TILE = 128 * 128


@dataclass(frozen=True)
class Epilogue:
    """Ops fused after the conv (see the module docstring for order and contract)."""

    norm_weight: Optional[torch.Tensor] = None
    norm_bias: Optional[torch.Tensor] = None
    eps: float = 1e-5
    relu: bool = False
    channel_bias: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None


def _autotune_configs(with_block_n: bool):
    """Tile shapes the opt-in autotuning tries."""
    tiles = [  # BLOCK_M, BLOCK_N, BLOCK_K, stages, warps
        (128, 128, 32, 3, 8),
        (128, 128, 64, 3, 8),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (64, 64, 32, 4, 4),
        (256, 128, 32, 3, 8),
        (128, 256, 32, 3, 8),
        (64, 32, 16, 4, 2),
        (128, 32, 16, 4, 4),
        (64, 64, 16, 4, 4),
        (128, 256, 64, 3, 8),
        # Narrow N for the 3-channel output conv: without these the pruning fell back to a
        # 128-wide N tile (97% idle columns) that spilled registers.
        (128, 16, 64, 4, 4),
        (64, 16, 64, 4, 4),
        (128, 16, 32, 4, 4),
        (64, 16, 16, 4, 4),
    ]
    # Dropped after reading their sm_90 code: (128, 64, 64, 3, 4) and (256, 128, 64, 3, 8)
    # spill registers on the plain 3x3x3 conv.
    configs = []
    seen = set()
    for bm, bn, bk, stages, warps in tiles:
        meta = dict(BLOCK_M=bm, BLOCK_K=bk, GROUP_M=8)
        if with_block_n:
            meta["BLOCK_N"] = bn
        key = tuple(sorted(meta.items())) + (stages, warps)
        if key not in seen:  # without BLOCK_N some tiles coincide
            seen.add(key)
            configs.append(triton.Config(meta, num_stages=stages, num_warps=warps))
    return configs


def _prune_configs(configs, named_args, **kwargs):
    """Drop tiles far wider than the problem (Cin=3 or Cout=16 layers). The autotuner passes the
    positional arguments in ``named_args`` and the keyword ones (constexprs) in ``kwargs``."""
    args = {**named_args, **kwargs}
    # The kernel's K loop steps over taps of CIN_PAD channels: BLOCK_K must divide it.
    cin_pad = int(args.get("CIN_PAD", 0))
    if cin_pad:
        configs = [c for c in configs if cin_pad % c.kwargs["BLOCK_K"] == 0] or configs
    max_k = max(16, triton.next_power_of_2(args["CIN"]))
    max_n = max(16, triton.next_power_of_2(args["N"]))
    # Full-row tiles (fused norm): BLOCK_N is the launcher's, so bound the accumulator instead.
    full_row = args.get("BLOCK_N", 0)
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_K"] <= max_k
        and c.kwargs.get("BLOCK_N", 0) <= max_n
        and c.kwargs["BLOCK_M"] * full_row <= _FULL_ROW_TILE
    ]
    if kept:
        return kept

    # Nothing that narrow: the tiles wasting the fewest columns and channels.
    def waste(c):
        return (c.kwargs.get("BLOCK_N", 0), c.kwargs["BLOCK_M"] * full_row, c.kwargs["BLOCK_K"])

    least = min(map(waste, configs))
    return [c for c in configs if waste(c) == least]


# Opt-in autotuning's key: the shape class (the row count M is left out on purpose: tuning per
# frame size would retime every resolution and chunk length).
_AUTOTUNE_KEY = [
    "N",
    "CIN",
    "KT",
    "KH",
    "KW",
    "ST",
    "SH",
    "SW",
    "UPSAMPLE",
    "NORM",
    "DOT_PRECISION",
]


def conv_tile(
    arch: str,
    *,
    cin: int,
    cout: int,
    full_row: bool,
    ieee: bool,
    size: int = 4,
    limit: Optional[int] = None,
) -> Tile:
    """The one tile of a conv shape class (``full_row``: the fused norm's BLOCK_N =
    next_pow2(Cout); ``ieee``: exact fp32 products) on ``size``-byte elements, fitted to
    ``limit`` bytes of shared memory per block (default: the family's; see
    :func:`~._tiles.fit_tile`: stages, then K, N (not the fused norm's full row) and M tiles).
    The table's tiles fit every family's limit."""
    tile = _table_tile(arch, cin=cin, cout=cout, full_row=full_row, ieee=ieee)
    return _tiles.fit_tile(
        tile,
        lambda t: conv_shared_memory(t, arch=arch, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="causal_conv3d",
        shrink=("BLOCK_K", "BLOCK_M") if full_row else ("BLOCK_K", "BLOCK_N", "BLOCK_M"),
    )


def _table_tile(arch: str, *, cin: int, cout: int, full_row: bool, ieee: bool) -> Tile:
    """The table's tile of a conv shape class, read off the sm_90 code of every conv of a CDT
    encode and decode (``tools/sass_audit.py``):

    * 128 x 128 accumulators with 8 warps (two warpgroups, 64 fp32 registers each) and 32-wide
      K tiles in 3 stages compile to ``wgmma`` with 16-byte ``cp.async`` loads and no spills;
      64-wide K tiles or 256-row tiles spill on the 3x3x3 convs;
    * narrower N (Cout <= 64, the 3-channel output conv) keeps 128 rows with one warpgroup;
      a 128-wide N tile over 3 channels was 97% idle and spilled;
    * fewer than 4 warps or 64-row tiles with 2 warps fall back to ``mma.sync`` (no wgmma), so
      every tile has at least one full warpgroup;
    * K tiles of 16 for Cin <= 16 (the padded U-Net input): wider ones would load zeros;
    * 64 rows for Cin < 16 (the RGB input, gathered 16 bits at a time).

    Exact fp32 dots unroll into FMAs: small tiles there keep compile time and registers sane.
    ``arch`` (``sm_80``/``sm_90``): the narrow tiles' fourth stage is for Hopper's deeper
    ``cp.async`` pipeline; sm_80 keeps 3 (not yet measured on either)."""
    block_k = 16 if cin <= 16 else 32
    if full_row:
        block_n = max(16, triton.next_power_of_2(cout))
    else:
        block_n = min(128, max(16, triton.next_power_of_2(cout)))
    if ieee:
        return Tile.of(
            4,
            2,
            BLOCK_M=64,
            BLOCK_N=min(block_n, 64) if not full_row else block_n,
            BLOCK_K=16,
            GROUP_M=8,
        )
    if cin < 16:
        # The RGB input: voxels of 3 channels are never 16-byte aligned, so every tap is a 16-bit
        # gather; with 128 rows its convs sat at 253-255 registers (the cap) on both presets,
        # with 64 rows they need 128-174 and keep wgmma (8 warps split a 128-wide N).
        return Tile.of(
            8 if block_n >= 128 else 4,
            4 if arch == "sm_90" else 3,
            BLOCK_M=64,
            BLOCK_N=block_n,
            BLOCK_K=16,
            GROUP_M=8,
        )
    wide = block_n >= 128
    stages = 3 if wide or arch == "sm_80" else 4
    return Tile.of(
        8 if wide else 4, stages, BLOCK_M=128, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8
    )


def conv_shared_memory(tile: Tile, *, arch: str, size: int) -> int:
    """Shared memory of the conv kernel with ``tile`` on ``size``-byte elements: each K step loads
    an activation tile [BLOCK_M, BLOCK_K] and a weight tile [BLOCK_K, BLOCK_N] for ``tl.dot``,
    pipelined over ``num_stages``; the epilogue stages the [BLOCK_M, BLOCK_N] output tile in the
    output dtype for a coalesced store (what the fused norm's 16-wide K tiles are bound by)."""
    m, n, k = (tile.kwargs[f"BLOCK_{d}"] for d in "MNK")
    stages = tile.num_stages
    return _tiles.shared_memory(arch, stages, (m * k, k * n), size, scratch=m * n * size)


@triton.jit
def _conv_epilogue(
    acc,
    rn,
    n_ok,
    b,
    bias_ptr,
    g_ptr,
    beta_ptr,
    cbias_ptr,
    res_ptr,
    res_off,
    mask,
    N,
    scb,
    scc,
    eps,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr,
    RELU: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    cbias = 0.0
    if HAS_CBIAS:
        cbias = tl.load(cbias_ptr + b[:, None] * scb + rn[None, :] * scc, mask=mask, other=0.0).to(
            tl.float32
        )
    res = 0.0
    if HAS_RES:
        res = tl.load(res_ptr + res_off, mask=mask, other=0.0).to(tl.float32)
    if NORM:  # the norm block's own per-voxel math, on the accumulator tile
        g = tl.load(g_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        return channel_norm_tile(acc, g, beta, cbias, res, n_ok, N, eps, RELU, HAS_CBIAS, HAS_RES)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    return acc + cbias + res


# Row and frame counts change from one chunk of a clip to the next (first chunk, steady chunks,
# the last one); specialising them (== 1, divisible by 16) would compile each chunk kind anew.
# They only bound masks and index math, so they lose nothing; channel counts and strides keep
# their specialisation (it gives the K loop and the 16-byte loads).
@triton.jit(do_not_specialize=["M", "T_OUT", "P_FRAMES", "P_OFF", "FRONT"])
def _causal_conv3d_kernel(
    x_ptr,
    p_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    g_ptr,
    beta_ptr,
    cbias_ptr,
    res_ptr,
    M,
    N,
    T_OUT,
    H_OUT,
    W_OUT,
    P_FRAMES,
    P_OFF,
    FRONT,
    H_IN,
    W_IN,
    PAD_H,
    PAD_W,
    sxb,
    sxc,
    sxt,
    sxh,
    sxw,
    spb,
    spc,
    spt,
    sph,
    spw,
    swo,
    swi,
    swt,
    swh,
    sww,
    sob,
    soc,
    sot,
    soh,
    sow,
    srb,
    src,
    srt,
    srh,
    srw,
    scb,
    scc,
    eps,
    CIN,
    CIN_PAD,
    K_TOTAL,
    KT: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    ST: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    HAS_PAST: tl.constexpr,
    ZERO_PAD: tl.constexpr,
    UPSAMPLE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr,
    RELU: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped program ordering: GROUP_M row tiles share each weight column tile while it is hot.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    # Channel offsets of activations in 64 bits too: in a contiguous [B, C, T, H, W] tensor the
    # channel stride is T*H*W, and c * T*H*W passes 2**31 at 720p.
    rn_64 = rn.to(tl.int64)

    # Output voxel of each row (32-bit division: M < 2**31), then 64-bit so that offsets into
    # huge activations cannot overflow.
    rm_safe = tl.where(m_ok, rm, 0)
    wo = (rm_safe % W_OUT).to(tl.int64)
    ho = ((rm_safe // W_OUT) % H_OUT).to(tl.int64)
    to = ((rm_safe // (W_OUT * H_OUT)) % T_OUT).to(tl.int64)
    b = (rm_safe // (W_OUT * H_OUT * T_OUT)).to(tl.int64)
    t_base = to * ST - FRONT  # index into [past | x]; negative = temporal padding
    h_base = ho * SH - PAD_H  # index into the (upsampled) frame; outside = spatial padding
    w_base = wo * SW - PAD_W
    if UPSAMPLE:
        h_virtual = H_IN * 2
        w_virtual = W_IN * 2
    else:
        h_virtual = H_IN
        w_virtual = W_IN

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # The channel count is a run-time bound when compiled (one kernel serves every width of a
    # layer kind: fewer compilations). K runs over taps of CIN_PAD channels (CIN rounded up to a
    # multiple of BLOCK_K), K_TOTAL = taps * CIN_PAD in all; the launcher passes both through
    # ``loop_arg`` (the interpreter cannot loop over a bound computed in the kernel).
    for k0 in range(0, K_TOTAL, BLOCK_K):
        tap = k0 // CIN_PAD
        c0 = k0 - tap * CIN_PAD
        dt = tap // (KH * KW)
        dh = (tap // KW) % KH
        dw = tap % KW
        tv = t_base + dt
        hv = h_base + dh
        wv = w_base + dw
        if ZERO_PAD:
            ok = m_ok & (tv >= 0) & (hv >= 0) & (hv < h_virtual) & (wv >= 0) & (wv < w_virtual)
        else:
            ok = m_ok
        # Replicate padding is a clamp; for zero padding the clamp only keeps masked addresses sane.
        tv = tl.maximum(tv, 0)
        hv = tl.minimum(tl.maximum(hv, 0), h_virtual - 1)
        wv = tl.minimum(tl.maximum(wv, 0), w_virtual - 1)
        if UPSAMPLE:
            hv = hv // 2
            wv = wv // 2
        cin = c0 + rk
        k_ok = cin < CIN
        cin_64 = cin.to(tl.int64)
        if HAS_PAST:
            in_past = tv < P_FRAMES
            xt = tl.maximum(tv - P_FRAMES, 0)
            pt = tl.minimum(tv, P_FRAMES - 1) + P_OFF
            x_off = b * sxb + xt * sxt + hv * sxh + wv * sxw
            p_off = b * spb + pt * spt + hv * sph + wv * spw
            # One load through a row-wise pointer choice: the choice is constant along the
            # channels, so the loads stay as wide as without a past.
            a = tl.load(
                tl.where(
                    in_past[:, None],
                    p_ptr + p_off[:, None] + cin_64[None, :] * spc,
                    x_ptr + x_off[:, None] + cin_64[None, :] * sxc,
                ),
                mask=ok[:, None] & k_ok[None, :],
                other=0.0,
            )
        else:
            x_off = b * sxb + tv * sxt + hv * sxh + wv * sxw
            a = tl.load(
                x_ptr + x_off[:, None] + cin_64[None, :] * sxc,
                mask=ok[:, None] & k_ok[None, :],
                other=0.0,
            )
        w_tap = dt * swt + dh * swh + dw * sww
        w = tl.load(
            w_ptr + w_tap + cin[:, None] * swi + rn[None, :] * swo,
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)

    mask = m_ok[:, None] & n_ok[None, :]
    res_off = (b * srb + to * srt + ho * srh + wo * srw)[:, None] + rn_64[None, :] * src
    acc = _conv_epilogue(
        acc,
        rn,
        n_ok,
        b,
        bias_ptr,
        g_ptr,
        beta_ptr,
        cbias_ptr,
        res_ptr,
        res_off,
        mask,
        N,
        scb,
        scc,
        eps,
        HAS_BIAS,
        NORM,
        RELU,
        HAS_CBIAS,
        HAS_RES,
    )
    out_off = (b * sob + to * sot + ho * soh + wo * sow)[:, None] + rn_64[None, :] * soc
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


# Two entry points for opt-in autotuning over one kernel: the fused LayerNorm needs the whole
# channel row in one tile, so there BLOCK_N is the launcher's choice and only the other tile sizes
# are tuned.
_conv_tuned = triton.autotune(
    _autotune_configs(with_block_n=True),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_configs},
)(_causal_conv3d_kernel)
_conv_tuned_full_n = triton.autotune(
    _autotune_configs(with_block_n=False),
    key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_configs},
)(_causal_conv3d_kernel)


# -- launcher ---------------------------------------------------------------------------------


def pack_weight(weight: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``weight`` ([Cout, Cin, kt, kh, kw]) cast to ``dtype`` and stored channels-innermost
    (memory order kt, kh, kw, Cin, Cout) so the kernel's weight tiles load coalesced. The result
    has the same logical shape: any op that takes the weight accepts it."""
    w = weight.to(dtype or weight.dtype)
    return w.permute(2, 3, 4, 1, 0).contiguous().permute(4, 3, 0, 1, 2)


def _loads_coalesced(w: torch.Tensor) -> bool:
    """Whether the kernel reads ``w`` with wide loads as it is: Cout innermost (:func:`pack_weight`)
    or Cin innermost (``channels_last_3d``)."""
    return w.stride(0) == 1 or w.stride(1) == 1


def _ints(value, n: int, name: str, minimum: int) -> Tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of {n} ints, got {value!r}") from None
    if len(out) != n or any(v < minimum for v in out):
        raise ValueError(f"{name} must be {n} ints >= {minimum}, got {value!r}")
    return out


def output_shape(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    frames_in: int,
    space_padding: Sequence[int],
    stride: Sequence[int],
    upsample2x: bool,
) -> Tuple[int, int, int, int, int]:
    """Output shape of a conv over ``frames_in`` virtual frames ([pad | past | x])."""
    b, _, _, h, w = x_shape
    cout, _, kt, kh, kw = weight_shape
    scale = 2 if upsample2x else 1
    hv, wv = h * scale + 2 * space_padding[0], w * scale + 2 * space_padding[1]
    if frames_in < kt or hv < kh or wv < kw:
        raise ValueError(
            f"causal_conv3d: input of {frames_in} frames (padding and past included) x {hv}x{wv} "
            f"(padded) is smaller than the kernel {kt}x{kh}x{kw}"
        )
    return (
        b,
        cout,
        (frames_in - kt) // stride[0] + 1,
        (hv - kh) // stride[1] + 1,
        (wv - kw) // stride[2] + 1,
    )


def _check_tensor(t: torch.Tensor, name: str, x: torch.Tensor, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def causal_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    past: Optional[torch.Tensor] = None,
    history: int = 0,
    space_padding: Tuple[int, int] = (0, 0),
    stride: Sequence[int] = (1, 1, 1),
    pad_mode: str = "zeros",
    upsample2x: bool = False,
    out: Optional[torch.Tensor] = None,
    epilogue: Optional[Epilogue] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.causal_conv3d` on the Triton kernel (see the module docstring).

    ``out``: a preallocated output (logical shape of the result, ``x``'s dtype, any strides, e.g. a
    view into the next conv's cache buffer). ``epilogue``: fused ops after the conv.
    """
    if not isinstance(history, int) or isinstance(history, bool) or history < 0:
        raise ValueError(f"history must be an int >= 0, got {history!r}")
    if past is not None and history:
        _check_tensor(past, "past", x, 5)
        used = min(past.shape[2], history)  # the reference crops a longer past to `history`
        p_off = past.shape[2] - used
    else:
        past, used, p_off = None, 0, 0
    return causal_conv3d_frames(
        x,
        weight,
        bias,
        past=past,
        past_offset=p_off,
        past_frames=used,
        front=history - used,
        space_padding=space_padding,
        stride=stride,
        pad_mode=pad_mode,
        upsample2x=upsample2x,
        out=out,
        epilogue=epilogue,
    )


def causal_conv3d_frames(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    front: int,
    past: Optional[torch.Tensor] = None,
    past_offset: int = 0,
    past_frames: int = 0,
    space_padding: Tuple[int, int] = (0, 0),
    stride: Sequence[int] = (1, 1, 1),
    pad_mode: str = "zeros",
    upsample2x: bool = False,
    out: Optional[torch.Tensor] = None,
    epilogue: Optional[Epilogue] = None,
) -> torch.Tensor:
    """The conv over ``[front padding frames | past[:, :, past_offset:past_offset+past_frames] | x]``.

    The form a cache buffer uses: its valid history and the chunk are one tensor ``x`` and only
    the missing history is padding (``front``).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"x must be [B, C, T, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    check_launchable(x, "causal_conv3d")
    _check_tensor(weight, "weight", x, 5)
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    stride = _ints(stride, 3, "stride", 1)
    ph, pw = _ints(space_padding, 2, "space_padding", 0)
    bsz, cin, frames, h, w = x.shape
    cout, wcin, kt, kh, kw = weight.shape
    if wcin != cin:
        raise ValueError(f"weight expects {wcin} input channels but x has {cin}")
    if bias is not None:
        _check_tensor(bias, "bias", x, 1)
        if bias.shape[0] != cout:
            raise ValueError(f"bias must have {cout} elements, got shape {tuple(bias.shape)}")
    if front < 0:
        raise ValueError(f"front must be >= 0, got {front}")
    if past is not None:
        if past.shape[:2] != x.shape[:2] or past.shape[3:] != x.shape[3:]:
            raise ValueError(
                f"past must match x in batch, channels and frame size: past "
                f"{tuple(past.shape)} vs x {tuple(x.shape)}"
            )
        if past_offset < 0 or past_frames < 0 or past_offset + past_frames > past.shape[2]:
            raise ValueError(
                f"past_offset={past_offset}, past_frames={past_frames} do not fit "
                f"past's {past.shape[2]} frames"
            )
        past = past.to(x.dtype)
        if past_frames == 0:
            past = None
    else:
        past_frames = past_offset = 0
    shape = output_shape(
        x.shape,
        weight.shape,
        frames_in=front + past_frames + frames,
        space_padding=(ph, pw),
        stride=stride,
        upsample2x=upsample2x,
    )
    if out is None:
        fmt = (
            torch.contiguous_format
            if x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last_3d)
            else torch.channels_last_3d
        )
        out = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=fmt)
    else:
        _check_tensor(out, "out", x, 5)
        if tuple(out.shape) != shape or out.dtype != x.dtype:
            raise ValueError(f"out must be {shape} {x.dtype}, got {tuple(out.shape)} {out.dtype}")
    if not _loads_coalesced(weight) or weight.dtype != x.dtype:
        weight = pack_weight(weight, x.dtype)
    bias = bias.to(x.dtype) if bias is not None else None

    ep = epilogue or Epilogue()
    g = beta = cbias = res = None
    scb = scc = 0
    if ep.norm_weight is not None or ep.norm_bias is not None:
        if ep.norm_weight is None or ep.norm_bias is None:
            raise ValueError("epilogue: norm_weight and norm_bias go together")
        g, beta = ep.norm_weight.reshape(-1).contiguous(), ep.norm_bias.reshape(-1).contiguous()
        if g.numel() != cout or beta.numel() != cout:
            raise ValueError(f"epilogue: norm_weight/norm_bias must have {cout} elements")
    if ep.channel_bias is not None:
        cbias = ep.channel_bias.reshape(ep.channel_bias.shape[0], -1)
        if tuple(cbias.shape) != (bsz, cout):
            raise ValueError(
                f"epilogue: channel_bias must be [{bsz}, {cout}](, 1, 1, 1), got "
                f"{tuple(ep.channel_bias.shape)}"
            )
        scb, scc = cbias.stride()
    if ep.residual is not None:
        res = ep.residual
        if tuple(res.shape) != shape:
            raise ValueError(
                f"epilogue: residual must have the output's shape {shape}, got {tuple(res.shape)}"
            )
        if same_data(res, out):
            raise ValueError("epilogue: residual must not alias out (autotuning reruns the kernel)")
    for name, t in (("norm_weight", g), ("channel_bias", cbias), ("residual", res)):
        if t is not None and t.device != x.device:
            raise ValueError(f"epilogue: {name} is on {t.device} but x is on {x.device}")

    m = shape[0] * shape[2] * shape[3] * shape[4]
    if m == 0 or cout == 0:
        return out
    if m >= 2**31:
        raise ValueError(
            f"causal_conv3d: {m} output voxels exceed the kernel's 32-bit row index; "
            "split the batch or the chunk"
        )
    p = past if past is not None else x
    r = res if res is not None else out
    precision = "ieee" if exact_fp32(x) else "tf32"
    args = (
        x,
        p,
        weight,
        bias if bias is not None else x,
        out,
        g if g is not None else x,
        beta if beta is not None else x,
        cbias if cbias is not None else x,
        r,
        m,
        cout,
        shape[2],
        shape[3],
        shape[4],
        past_frames,
        past_offset,
        front,
        h,
        w,
        ph,
        pw,
        *x.stride(),
        *p.stride(),
        *weight.stride(),
        *out.stride(),
        *r.stride(),
        scb,
        scc,
        float(ep.eps),
    )
    flags = dict(
        CIN=cin,
        KT=kt,
        KH=kh,
        KW=kw,
        ST=stride[0],
        SH=stride[1],
        SW=stride[2],
        # Always the past path (a missing past is x with P_FRAMES = 0, never read): the first
        # chunk of a clip then shares the later chunks' compilation.
        HAS_PAST=True,
        ZERO_PAD=pad_mode == "zeros",
        UPSAMPLE=bool(upsample2x),
        HAS_BIAS=bias is not None,
        NORM=g is not None,
        RELU=bool(ep.relu),
        HAS_CBIAS=cbias is not None,
        HAS_RES=res is not None,
        DOT_PRECISION=precision,
    )

    full_n = max(16, triton.next_power_of_2(cout))
    taps = kt * kh * kw

    def k_loop(block_k: int) -> dict:
        cin_pad = triton.cdiv(cin, block_k) * block_k
        return dict(CIN_PAD=loop_arg(cin_pad), K_TOTAL=loop_arg(taps * cin_pad))

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(cout, meta.get("BLOCK_N", full_n)),)

    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        arch = arch_family(x)
        dtype = launch_dtype(x)
        shape_class = dict(
            CIN=cin,
            COUT=cout,
            KT=kt,
            KH=kh,
            KW=kw,
            ST=stride[0],
            SH=stride[1],
            SW=stride[2],
            UPSAMPLE=bool(upsample2x),
            NORM=g is not None,
            DTYPE=dtype,
            PRECISION=precision,
        )
        tile = conv_tile(
            arch,
            cin=cin,
            cout=cout,
            full_row=g is not None,
            ieee=precision == "ieee",
            size=dtype.itemsize,
            limit=_tiles.shared_memory_limit(x, arch),
        )
        # Tuning: channels rounded to 16, and only the candidates whose BLOCK_K divides that
        # (see _prune_configs); the fixed tile rounds to its own BLOCK_K.
        meta = dict(flags, **k_loop(16))
        if g is not None:
            meta["BLOCK_N"] = full_n
        _tiles.launch(
            _causal_conv3d_kernel,
            _conv_tuned_full_n if g is not None else _conv_tuned,
            grid,
            args,
            meta,
            name="causal_conv3d",
            arch=arch,
            shape_class=shape_class,
            tile=tile,
            autotune=autotune_enabled(),
            derived=lambda kw: k_loop(kw["BLOCK_K"]),
        )
    return out


def causal_conv3d_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    g: torch.Tensor,
    b: torch.Tensor,
    eps: float = 1e-5,
    *,
    past: Optional[torch.Tensor] = None,
    history: int = 0,
    space_padding: Tuple[int, int] = (0, 0),
    stride: Sequence[int] = (1, 1, 1),
    pad_mode: str = "zeros",
    upsample2x: bool = False,
    relu: bool = False,
    time_bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.causal_conv3d_norm` (a CDT Block plus the ResnetBlock's adds).

    Up to :data:`FUSED_NORM_MAX_CHANNELS` output channels the norm, ReLU, time bias and residual
    run in the conv's epilogue on the fp32 accumulator (so the result is rounded once, not after
    the conv and again after the norm); wider layers run the conv and then the Triton norm block
    in place on its output. ``out``: optional preallocated result (must not alias ``residual``).
    """
    conv = dict(
        past=past,
        history=history,
        space_padding=space_padding,
        stride=stride,
        pad_mode=pad_mode,
        upsample2x=upsample2x,
        out=out,
    )
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        raise ValueError("weight must be a 5-D [Cout, Cin, kt, kh, kw] tensor")
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.dtype != x.dtype:
            raise TypeError(
                f"residual must be a tensor of x's dtype {x.dtype}, got "
                f"{getattr(residual, 'dtype', type(residual).__name__)}"
            )
        if out is not None and same_data(residual, out):
            raise ValueError(
                "residual must not alias out (the conv writes out before the norm "
                "reads the residual)"
            )
    if weight.shape[0] <= FUSED_NORM_MAX_CHANNELS:
        return causal_conv3d(
            x,
            weight,
            bias,
            **conv,
            epilogue=Epilogue(
                norm_weight=g,
                norm_bias=b,
                eps=eps,
                relu=relu,
                channel_bias=time_bias,
                residual=residual,
            ),
        )
    y = causal_conv3d(x, weight, bias, **conv)
    return channel_norm(y, g, b, eps, relu=relu, time_bias=time_bias, residual=residual, out=y)
