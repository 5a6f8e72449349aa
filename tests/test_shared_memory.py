"""Every committed tile fits the shared memory of a block on its architecture.

Each kernel's footprint is a formula beside its table, read off its code (the operand tiles its
main loop pipelines through shared memory, times the stages, or what its epilogue stages, plus the
static reserve; ``kernels/_tiles.py``); the limits are the CUDA programming guide's opt-in maxima
per block (:data:`cdt_fast.kernels._tiles.SHARED_MEMORY_LIMIT`). The tables are swept over both
presets' channel widths and every width around their branch points, for each dtype class (16-bit,
fp32 on TF32 dots, exact fp32) and arch family. The formulas are checked against what Triton
compiled for sm_90 (``benchmarks/results/sass-sm90-*.json``, written by ``tools/sass_audit.py``).
Every sweep runs twice: at each family's limit (the tables' own tiles) and at the 99 KB of a
block on compute capability 8.6/8.9 and consumer Blackwell, which each table meets by fitting its
tile (``_tiles.fit_tile``), as a launch does with the device's own limit
(``_tiles.shared_memory_limit``).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton

from cdt_fast import CDT, CDTConfig
from cdt_fast.generation.model import GenConfig
from cdt_fast.kernels import _temporal_attention_kernel as temporal
from cdt_fast.kernels import _tiles
from cdt_fast.kernels import causal_conv3d as conv
from cdt_fast.kernels import causal_conv3d_tiles as conv_tiles
from cdt_fast.kernels import channel_norm as norm
from cdt_fast.kernels import linear_attention as attention
from cdt_fast.kernels import linear_attention_tiles as attention_tiles
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
# The shared memory per block the tables are swept at: each family's own (None), and the 99 KB of
# compute capability 8.6, 8.9 and 12.x (RTX 30/40/50, A10, L4, L40), whose blocks get less than
# the family they share tables with.
CONSUMER = 99 * 1024
LIMITS = {"family": None, "99KB": CONSUMER}


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


def _fits(footprints, limit=None):
    """The entries above ``limit`` (None: their family's), as readable lines."""
    found = []
    for (what, arch), nbytes in footprints.items():
        bound = SHARED_MEMORY_LIMIT[arch] if limit is None else limit
        if nbytes > bound:
            found.append(f"{what}: {nbytes / 1024:.1f} KiB > {bound / 1024:.0f} KiB on {arch}")
    return found


def test_the_presets_are_swept():
    assert {3, 16, 64, 128, 192, 256, 384, 512} <= set(WIDTHS) and HEADS, (WIDTHS, HEADS)
    assert len(PAIRS) > 10 and any(cin == 3 for cin, _ in PAIRS), PAIRS  # the RGB input too
    assert all(cin in CHANNELS and cout in CHANNELS for cin, cout in PAIRS)


@pytest.mark.parametrize("limit", LIMITS.values(), ids=LIMITS)
def test_conv_tiles_fit(limit):
    found = {}
    for arch, (size, ieee), cin, cout in itertools.product(ARCHS, DTYPES, CHANNELS, CHANNELS):
        for full_row in (False, True) if cout <= conv.FUSED_NORM_MAX_CHANNELS else (False,):
            tile = conv.conv_tile(
                arch, cin=cin, cout=cout, full_row=full_row, ieee=ieee, size=size, limit=limit
            )
            what = f"conv {tile.label()} ({size}-byte)"
            found[(what, arch)] = conv.conv_shared_memory(tile, arch=arch, size=size)
    assert not _fits(found, limit), _fits(found, limit)


@pytest.mark.parametrize("limit", LIMITS.values(), ids=LIMITS)
def test_norm_tiles_fit(limit):
    found = {}
    for arch, c in itertools.product(ARCHS, CHANNELS):
        block_c = triton.next_power_of_2(c)
        tile = norm.norm_tile(arch, block_c=block_c, limit=limit)
        what = f"norm C={c} {tile.label()}"
        found[(what, arch)] = norm.norm_shared_memory(tile, arch=arch, block_c=block_c)
    assert not _fits(found, limit), _fits(found, limit)


@pytest.mark.parametrize("limit", LIMITS.values(), ids=LIMITS)
def test_linear_attention_tiles_fit(limit):
    """The projection over every input width up to 1024 (CDT's attention sees at most 384; on a
    99 KB block, 512 fp32 channels: wider rows do not fit beside a 16-column weight tile) and
    qkv width, the context, merge and apply passes over every head width (CDT's heads span the
    whole channel vector) and output width."""
    found = {}
    for arch, size in itertools.product(ARCHS, (2, 4)):
        widest = 512 if limit == CONSUMER and size == 4 else 1024
        for c, hidden in itertools.product([c for c in CHANNELS if c <= widest], CHANNELS):
            block_k = attention_tiles.block_width(c, 1 << 30)
            tile = attention_tiles.project_tile(
                arch, block_k=block_k, n_out=3 * hidden, size=size, limit=limit
            )
            what = f"norm_project C={c} {tile.label()} ({size}-byte)"
            found[(what, arch)] = attention.project_shared_memory(
                tile, arch=arch, block_k=block_k, size=size
            )
        for dh in CHANNELS:
            block_d, block_e = (
                attention_tiles.block_width(dh, 64),
                attention_tiles.block_width(dh, 128),
            )
            tile = attention_tiles.partial_tile(
                arch, block_d=block_d, block_e=block_e, size=size, limit=limit
            )
            found[(f"context_partial d={dh} ({size}-byte)", arch)] = (
                attention.partial_shared_memory(
                    tile, arch=arch, block_d=block_d, block_e=block_e, size=size
                )
            )
            found[(f"context_combine d={dh}", arch)] = attention.combine_shared_memory(
                arch=arch, block_d=block_d, block_e=block_e
            )
            for c_out in CHANNELS:
                block_c = attention_tiles.apply_block_c(c_out)
                tile = attention_tiles.apply_tile(
                    arch, dh=dh, block_c=block_c, size=size, limit=limit
                )
                what = f"attention_apply d={dh} C_out={c_out} ({size}-byte)"
                found[(what, arch)] = attention.apply_shared_memory(
                    tile, arch=arch, block_c=block_c, size=size
                )
    assert not _fits(found, limit), _fits(found, limit)
    # rows too wide for any column tile: refused, saying why
    with pytest.raises(ValueError, match="shared memory.*whole channel vector"):
        attention_tiles.project_tile("sm_90", block_k=4096, n_out=3 * 4096, size=4, limit=limit)


@pytest.mark.parametrize("limit", LIMITS.values(), ids=LIMITS)
def test_time_resampling_tiles_fit(limit):
    found = {}
    for arch, (size, ieee), c_in, c_out in itertools.product(ARCHS, DTYPES, CHANNELS, CHANNELS):
        for upsample in (False, True):
            tile = resample.resample_tile(
                arch,
                c_in=c_in,
                c_out=c_out,
                ieee=ieee,
                size=size,
                upsample=upsample,
                limit=limit,
            )
            what = f"time_{'up' if upsample else 'down'}sample {tile.label()} ({size}-byte)"
            found[(what, arch)] = resample.resample_shared_memory(
                tile, arch=arch, upsample=upsample, size=size
            )
    assert not _fits(found, limit), _fits(found, limit)


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


@pytest.mark.parametrize("limit", LIMITS.values(), ids=LIMITS)
def test_temporal_attention_tiles_fit(limit):
    """Query and key lengths around the packing threshold (64 frames), head widths of the
    generation presets and around them."""
    head_dims = {c.hidden // c.heads for c in map(GenConfig.preset, ("tiny", "S", "B"))}
    found = {}
    for arch, size, d in itertools.product(ARCHS, (2, 4), sorted(head_dims | {16, 32, 128})):
        for tq, tk in itertools.product((1, 5, 17, 32, 63, 64, 65, 200), repeat=2):
            _, block_m, block_n, block_d = temporal.tile_shape(tq, tk, d)
            blocks = dict(block_m=block_m, block_n=block_n, block_d=block_d)
            tile = temporal.temporal_tile(arch, **blocks, size=size, limit=limit)
            what = f"temporal_attention Tq={tq} Tk={tk} d={d} {tile.label()} ({size}-byte)"
            found[(what, arch)] = temporal.temporal_shared_memory(
                tile, block_m, block_n, block_d, arch=arch, size=size
            )
    assert not _fits(found, limit), _fits(found, limit)


# -- fitting the tables' tiles to the device's block ---------------------------------------------


def test_the_family_limits_keep_the_tables_tiles():
    """On an A100 or H100 nothing changes: every table tile fits, so it runs as it is."""
    for arch, (size, ieee), cin, cout in itertools.product(ARCHS, DTYPES, CHANNELS, CHANNELS):
        geometry = dict(cin=cin, cout=cout, full_row=False, ieee=ieee)
        assert conv.conv_tile(arch, **geometry, size=size) == conv_tiles._table_tile(
            arch, **geometry
        )
        for upsample in (False, True):
            geometry = dict(c_in=cin, c_out=cout, ieee=ieee, size=size, upsample=upsample)
            table = resample._table_tile(arch, **geometry)
            assert resample.resample_tile(arch, **geometry) == table


def test_a_99kb_block_fits_the_bf16_time_downsample():
    """The case that made the fitting necessary: the bf16 downsample's 128 x 128 x 64 tile in 3
    stages needs 129 KiB on sm_80 (RTX 4090: 99 KB); 2 stages hold 65. On the sm_90 family
    (consumer Blackwell: 99 KB) 2 stages still need 129 KiB, so K halves: 65 KiB."""
    geometry = dict(c_in=256, c_out=256, ieee=False, size=2, upsample=False)
    footprint = resample.resample_shared_memory
    for arch, k in (("sm_80", 64), ("sm_90", 32)):
        table = resample.resample_tile(arch, **geometry)
        assert footprint(table, arch=arch, upsample=False, size=2) > CONSUMER
        tile = resample.resample_tile(arch, **geometry, limit=CONSUMER)
        assert (tile.num_stages, tile.kwargs["BLOCK_K"], tile.num_warps) == (2, k, 8)
        assert footprint(tile, arch=arch, upsample=False, size=2) == 65 * 1024


def test_fit_tile_order_and_refusal():
    """Stages down to 2, then the named blocks halved in order down to 16, then one stage."""
    tile = Tile.of(8, 4, BLOCK_M=64, BLOCK_K=32)

    def elements(t):  # a footprint: the product of the blocks times the stages
        return t.kwargs["BLOCK_M"] * t.kwargs["BLOCK_K"] * t.num_stages

    fit = _tiles.fit_tile
    assert fit(tile, elements, 64 * 32 * 4, name="k") is tile
    assert fit(tile, elements, 64 * 32 * 3, name="k") == Tile.of(8, 3, BLOCK_M=64, BLOCK_K=32)
    shrink = ("BLOCK_K", "BLOCK_M")
    assert fit(tile, elements, 64 * 16 * 2, name="k", shrink=shrink) == Tile.of(
        8, 2, BLOCK_M=64, BLOCK_K=16
    )
    assert fit(tile, elements, 16 * 16 * 2, name="k", shrink=shrink) == Tile.of(
        8, 2, BLOCK_M=16, BLOCK_K=16
    )
    assert fit(tile, elements, 16 * 16, name="k", shrink=shrink) == Tile.of(
        8, 1, BLOCK_M=16, BLOCK_K=16
    )
    with pytest.raises(ValueError, match=r"kern: .*255 bytes of shared memory.*needs 256; why"):
        fit(tile, elements, 255, name="kern", shrink=shrink, why="why")


def test_the_tables_fit_each_shape_class_once():
    """Every launch asks its table for a tile: the fitting runs once per shape class and limit,
    later launches get the same Tile back, and a refusal is raised again (never remembered)."""
    asks = [
        (norm.norm_tile, dict(block_c=64)),
        (conv.conv_tile, dict(cin=64, cout=64, full_row=False, ieee=True, size=4)),
        (resample.resample_tile, dict(c_in=64, c_out=64, ieee=False, size=2, upsample=True)),
        (temporal.temporal_tile, dict(block_m=64, block_n=64, block_d=64, size=2)),
        (attention_tiles.project_tile, dict(block_k=64, n_out=192, size=2)),
        (attention_tiles.partial_tile, dict(block_d=32, block_e=32, size=2)),
        (attention_tiles.apply_tile, dict(dh=32, block_c=64, size=2)),
    ]
    for table, shape_class in asks:
        first = table("sm_90", **shape_class, limit=CONSUMER)
        hits = table.cache_info().hits
        assert table("sm_90", **shape_class, limit=CONSUMER) is first, table.__name__
        assert table.cache_info().hits == hits + 1, table.__name__
    for _ in range(2):
        with pytest.raises(ValueError, match="norm_project: no tile fits"):
            attention_tiles.project_tile("sm_90", block_k=1 << 16, n_out=192, size=4, limit=1024)


class _OnDevice:
    """Stands in for a tensor on ``device``: all :func:`_tiles.shared_memory_limit` reads."""

    def __init__(self, device: str):
        self.device = torch.device(device)


def test_shared_memory_limit_reads_the_device(monkeypatch):
    """A CUDA device's opt-in maximum per block lowers its family's limit; a CPU tensor has the
    family's, or what tile_options asks for (at most a CUDA device's own)."""
    cpu = _OnDevice("cpu")
    for arch in ARCHS:
        assert _tiles.shared_memory_limit(cpu, arch) == SHARED_MEMORY_LIMIT[arch]
        with _tiles.tile_options(shared_memory=CONSUMER):
            assert _tiles.shared_memory_limit(cpu, arch) == CONSUMER
    with pytest.raises(ValueError, match="shared_memory must be a positive int"):
        with _tiles.tile_options(shared_memory=0):
            pass
    gpu = _OnDevice("cuda:0")
    for optin, arch, expected in [
        (101376, "sm_80", CONSUMER),  # compute capability 8.6 / 8.9
        (166912, "sm_80", 163 * 1024),  # 8.0
        (101376, "sm_90", CONSUMER),  # 12.0
        (232448, "sm_90", 227 * 1024),  # 9.0
        (232448, "sm_80", 163 * 1024),  # an H100 planned as sm_80 keeps sm_80's tables' limit
    ]:
        props = SimpleNamespace(shared_memory_per_block_optin=optin)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, p=props: p)
        assert _tiles.shared_memory_limit(gpu, arch) == expected, (optin, arch)
    with _tiles.tile_options(shared_memory=64 * 1024):
        assert _tiles.shared_memory_limit(gpu, "sm_90") == 64 * 1024
    with pytest.raises(ValueError, match="blocks get at most 232448 bytes"):
        with _tiles.tile_options(shared_memory=300 * 1024):
            _tiles.shared_memory_limit(gpu, "sm_90")
    # a torch without the property: Triton's driver reads the same attribute
    from triton.runtime import driver

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace())
    utils = SimpleNamespace(get_device_properties=lambda index: {"max_shared_mem": 101376})
    monkeypatch.setattr(driver, "_active", SimpleNamespace(utils=utils))
    assert _tiles.shared_memory_limit(gpu, "sm_90") == CONSUMER


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
