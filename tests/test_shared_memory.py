"""Every committed tile fits the shared memory of a block on its architecture.

Each kernel's footprint is a formula beside its table, read off its code (the operand tiles its
main loop pipelines through shared memory, times the stages, or what its epilogue stages, plus the
static reserve; ``kernels/_tiles.py``); the limits are the CUDA programming guide's opt-in maxima
per block (:data:`cdt_fast.kernels._tiles.SHARED_MEMORY_LIMIT`). The tables are swept over both
presets' channel widths and every width around their branch points, for each dtype class (16-bit,
fp32 on TF32 dots, exact fp32) and arch family. The formulas are checked against what Triton
compiled for sm_90 (``benchmarks/results/sass-sm90-*.json``, written by ``tools/sass_audit.py``).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import triton

from cdt_fast import CDT, CDTConfig
from cdt_fast.generation.model import GenConfig
from cdt_fast.kernels import _temporal_attention_kernel as temporal
from cdt_fast.kernels import _tiles
from cdt_fast.kernels import causal_conv3d as conv
from cdt_fast.kernels import channel_norm as norm
from cdt_fast.kernels import linear_attention as attention
from cdt_fast.kernels import time_resample as resample
from cdt_fast.kernels._tiles import SHARED_MEMORY_LIMIT, Tile
from cdt_fast.reference.layers import LinearAttention

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
ARCHS = tuple(SHARED_MEMORY_LIMIT)
# (element bytes, exact fp32 products): bf16/fp16, fp32 on TF32 dots, fp32 on IEEE dots
DTYPES = ((2, False), (4, False), (4, True))
# Channel counts on both sides of every branch of the tables (16, 32, 64, 128, ... and their
# powers of two), beside the presets' own.
AROUND = (1, 3, 8, 15, 16, 17, 19, 31, 32, 33, 48, 63, 64, 65, 96, 127, 128, 129, 192, 255, 256)
AROUND += (257, 320, 384, 511, 512, 513, 640, 768, 1024)


def _presets():
    """(conv (Cin, Cout) pairs, every channel count, attention (heads, dim_head)) of CDT-base and
    CDT-small, read off their layers (built on the meta device: no memory)."""
    pairs, widths, heads = set(), set(), set()
    for preset in ("base", "small"):
        with torch.device("meta"):
            model = CDT(CDTConfig.preset(preset))
        for p in model.parameters():
            if p.dim() == 5:
                pairs.add((p.shape[1], p.shape[0]))
            widths.update(p.shape[:2])
        heads |= {(m.heads, m.dim_head) for m in model.modules() if isinstance(m, LinearAttention)}
    return sorted(pairs), sorted(widths), sorted(heads)


PAIRS, WIDTHS, HEADS = _presets()
CHANNELS = sorted(set(AROUND) | set(WIDTHS))


def _fits(footprints):
    """The entries above their family's limit, as readable lines."""
    return [
        f"{what}: {nbytes / 1024:.1f} KiB > {SHARED_MEMORY_LIMIT[arch] / 1024:.0f} KiB on {arch}"
        for (what, arch), nbytes in footprints.items()
        if nbytes > SHARED_MEMORY_LIMIT[arch]
    ]


def test_the_presets_are_swept():
    assert {3, 16, 64, 128, 192, 256, 384, 512} <= set(WIDTHS) and HEADS, (WIDTHS, HEADS)
    assert len(PAIRS) > 10 and any(cin == 3 for cin, _ in PAIRS), PAIRS  # the RGB input too
    assert all(cin in CHANNELS and cout in CHANNELS for cin, cout in PAIRS)


def test_conv_tiles_fit():
    found = {}
    for arch, (size, ieee), cin, cout in itertools.product(ARCHS, DTYPES, CHANNELS, CHANNELS):
        for full_row in (False, True) if cout <= conv.FUSED_NORM_MAX_CHANNELS else (False,):
            tile = conv.conv_tile(arch, cin=cin, cout=cout, full_row=full_row, ieee=ieee)
            what = f"conv {tile.label()} ({size}-byte)"
            found[(what, arch)] = conv.conv_shared_memory(tile, arch=arch, size=size)
    assert not _fits(found), _fits(found)


def test_norm_tiles_fit():
    found = {}
    for arch, c in itertools.product(ARCHS, CHANNELS):
        block_c = triton.next_power_of_2(c)
        tile = norm.norm_tile(arch, block_c=block_c)
        what = f"norm C={c} {tile.label()}"
        found[(what, arch)] = norm.norm_shared_memory(tile, arch=arch, block_c=block_c)
    assert not _fits(found), _fits(found)


def test_linear_attention_tiles_fit():
    """The projection over every input width up to 1024 (CDT's attention sees at most 384) and
    qkv width, the context, merge and apply passes over every head width (CDT's heads span the
    whole channel vector) and output width."""
    found = {}
    for arch, size in itertools.product(ARCHS, (2, 4)):
        for c, hidden in itertools.product([c for c in CHANNELS if c <= 1024], CHANNELS):
            block_k = attention._block_width(c, 1 << 30)
            tile = attention.project_tile(arch, block_k=block_k, n_out=3 * hidden, size=size)
            what = f"norm_project C={c} {tile.label()} ({size}-byte)"
            found[(what, arch)] = attention.project_shared_memory(
                tile, arch=arch, block_k=block_k, size=size
            )
        for dh in CHANNELS:
            block_d, block_e = attention._block_width(dh, 64), attention._block_width(dh, 128)
            tile = attention.partial_tile(arch, block_d=block_d, block_e=block_e)
            found[(f"context_partial d={dh} ({size}-byte)", arch)] = (
                attention.partial_shared_memory(
                    tile, arch=arch, block_d=block_d, block_e=block_e, size=size
                )
            )
            found[(f"context_combine d={dh}", arch)] = attention.combine_shared_memory(
                arch=arch, block_d=block_d, block_e=block_e
            )
            for c_out in CHANNELS:
                tile = attention.apply_tile(arch, dh=dh)
                block_c = attention.apply_block_c(c_out)
                what = f"attention_apply d={dh} C_out={c_out} ({size}-byte)"
                found[(what, arch)] = attention.apply_shared_memory(
                    tile, arch=arch, block_c=block_c, size=size
                )
    assert not _fits(found), _fits(found)
    # rows too wide for any column tile: refused, saying why
    with pytest.raises(ValueError, match="shared memory"):
        attention.project_tile("sm_90", block_k=4096, n_out=3 * 4096, size=4)


def test_time_resampling_tiles_fit():
    found = {}
    for arch, (size, ieee), c_in, c_out in itertools.product(ARCHS, DTYPES, CHANNELS, CHANNELS):
        for upsample in (False, True):
            tile = resample.resample_tile(
                arch, c_in=c_in, c_out=c_out, ieee=ieee, size=size, upsample=upsample
            )
            what = f"time_{'up' if upsample else 'down'}sample {tile.label()} ({size}-byte)"
            found[(what, arch)] = resample.resample_shared_memory(
                tile, arch=arch, upsample=upsample, size=size
            )
    assert not _fits(found), _fits(found)


def test_fp32_resampling_keeps_three_stages_within_the_limit():
    """The known offender: 128 x 128 x 64 in 3 stages on fp32 needs 289 KiB for the upsample and
    385 KiB for the downsample's two loops on sm_90; the table halves K for 4-byte elements
    instead of dropping stages (KiB on sm_90 / sm_80)."""
    old = Tile.of(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64)
    footprint = resample.resample_shared_memory
    assert footprint(old, arch="sm_90", upsample=True, size=4) == 289 * 1024
    assert footprint(old, arch="sm_90", upsample=False, size=4) == 385 * 1024
    for arch, kib in dict(sm_90=(97, 193), sm_80=(65, 129)).items():
        for upsample, expected in zip((True, False), kib):
            tile = resample.resample_tile(
                arch, c_in=256, c_out=256, ieee=False, size=4, upsample=upsample
            )
            assert tile.num_stages == 3 and tile.kwargs["BLOCK_K"] == 32
            assert footprint(tile, arch=arch, upsample=upsample, size=4) == expected * 1024


def test_temporal_attention_tiles_fit():
    """Query and key lengths around the packing threshold (64 frames), head widths of the
    generation presets and around them."""
    head_dims = {c.hidden // c.heads for c in map(GenConfig.preset, ("tiny", "S", "B"))}
    found = {}
    for arch, size, d in itertools.product(ARCHS, (2, 4), sorted(head_dims | {16, 32, 128})):
        for tq, tk in itertools.product((1, 5, 17, 32, 63, 64, 65, 200), repeat=2):
            _, block_m, block_n, block_d = temporal.tile_shape(tq, tk, d)
            what = f"temporal_attention Tq={tq} Tk={tk} d={d} ({size}-byte)"
            found[(what, arch)] = temporal.temporal_shared_memory(
                temporal._TILE, block_m, block_n, block_d, arch=arch, size=size
            )
    assert not _fits(found), _fits(found)


# -- the formulas against the compiled code --------------------------------------------------------


def _audit_tile(config: str):
    """(Tile, all constexprs) of a sass-audit config label, e.g. "BLOCK_M=128,...,w=8,s=3"."""
    fields = dict(item.split("=") for item in config.split(",") if "=" in item)
    warps, stages = int(fields.pop("w")), int(fields.pop("s"))
    meta = {k: int(v) for k, v in fields.items()}
    return Tile.of(warps, stages, **meta), meta


def _formula(kernel: str, config: str, size: int) -> int:
    """The sm_90 footprint of one audited variant by its kernel's formula, at ``size`` bytes."""
    tile, meta = _audit_tile(config)
    sm90 = dict(arch="sm_90")
    if kernel == "_causal_conv3d_kernel":
        return conv.conv_shared_memory(tile, size=size, **sm90)
    if kernel == "_channel_norm_kernel":
        return norm.norm_shared_memory(tile, block_c=meta["BLOCK_C"], **sm90)
    if kernel in ("_time_downsample_kernel", "_time_upsample_kernel"):
        upsample = kernel == "_time_upsample_kernel"
        return resample.resample_shared_memory(tile, upsample=upsample, size=size, **sm90)
    if kernel == "_norm_project_kernel":
        return attention.project_shared_memory(tile, block_k=meta["BLOCK_K"], size=size, **sm90)
    if kernel == "_context_partial_kernel":
        d, e = meta["BLOCK_D"], meta["BLOCK_E"]
        return attention.partial_shared_memory(tile, block_d=d, block_e=e, size=size, **sm90)
    if kernel == "_context_combine_kernel":
        d, e = meta["BLOCK_D"], meta["BLOCK_E"]
        return attention.combine_shared_memory(block_d=d, block_e=e, **sm90)
    if kernel == "_attention_apply_kernel":
        return attention.apply_shared_memory(tile, block_c=meta["BLOCK_C"], size=size, **sm90)
    if kernel == "_ddim_update_kernel":
        return _tiles.shared_memory("sm_90", 0, (), 4)
    raise AssertionError(f"no shared-memory formula for {kernel}")


AUDITS = sorted(RESULTS.glob("sass-sm90-triton*.json"))
# Variants whose shared memory the formula gives exactly (kernel, tile, element bytes): the
# pipelined operands of the conv, the resampling (the downsample's two loops: CDT-small's
# replicate padding) and the attention passes, the projection's rows staged once, and the
# fused-norm conv bound by its fp32 epilogue.
EXACT = [  # kernel, tile, element bytes, compiled bytes
    ("_causal_conv3d_kernel", "BLOCK_K=32,BLOCK_M=128,BLOCK_N=128,GROUP_M=8,w=8,s=3", 2, 50176),
    ("_causal_conv3d_kernel", "BLOCK_K=32,BLOCK_M=128,BLOCK_N=16,GROUP_M=8,w=4,s=4", 2, 37888),
    ("_causal_conv3d_kernel", "BLOCK_K=16,BLOCK_M=128,BLOCK_N=128,GROUP_M=8,w=8,s=3", 4, 66560),
    ("_time_upsample_kernel", "BLOCK_K=64,BLOCK_M=128,BLOCK_N=128,w=8,s=3", 2, 148480),
    ("_time_downsample_kernel", "BLOCK_K=64,BLOCK_M=128,BLOCK_N=128,w=8,s=3", 2, 197632),
    ("_norm_project_kernel", "BLOCK_K=512,BLOCK_M=16,BLOCK_N=64,w=4,s=1", 2, 82944),
    ("_context_partial_kernel", "BLOCK_D=64,BLOCK_E=128,BLOCK_N=64,w=4,s=2", 2, 50176),
    ("_attention_apply_kernel", "BLOCK_C=128,BLOCK_D=64,BLOCK_N=64,w=4,s=2", 2, 50176),
]


@pytest.mark.parametrize("audit", AUDITS, ids=[p.stem for p in AUDITS])
def test_formulas_bound_the_compiled_sm90_code(audit):
    """Every variant of an engine encode and decode (bf16 run; its fp32 steps included) uses at
    most the formula's bytes for 4-byte elements, and the listed ones exactly what the formula
    gives for their dtype."""
    rows = [r for rows in json.loads(audit.read_text())["results"].values() for r in rows]
    assert rows
    for r in rows:
        assert r["shared_bytes"] <= _formula(r["kernel"], r["config"], 4), r
    compiled = {}
    for r in rows:
        compiled.setdefault((r["kernel"], r["config"]), set()).add(r["shared_bytes"])
    for kernel, config, size, nbytes in EXACT:
        assert nbytes in compiled[(kernel, config)], (kernel, config, compiled[(kernel, config)])
        assert _formula(kernel, config, size) == nbytes, (kernel, config)
