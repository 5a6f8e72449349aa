"""The causal conv's tiles (see ``kernels/_tiles.py``): the one tile of each shape class
(:func:`conv_tile`, a table read off the sm_90 code of every conv of a CDT encode and decode), what
it holds in shared memory (:func:`conv_shared_memory`), and the candidates opt-in autotuning tries
(:func:`autotune_configs`, pruned by :func:`prune_configs`, keyed on :data:`AUTOTUNE_KEY`)."""

from __future__ import annotations

from typing import Optional

import triton

from . import _tiles
from ._tiles import Tile

__all__ = [
    "FUSED_NORM_MAX_CHANNELS",
    "AUTOTUNE_KEY",
    "autotune_configs",
    "prune_configs",
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


def autotune_configs(with_block_n: bool):
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


def prune_configs(configs, named_args, **kwargs):
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
AUTOTUNE_KEY = [
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


@_tiles.per_shape_class
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
