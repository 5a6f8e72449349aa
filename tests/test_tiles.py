"""Tile choice without run-time autotuning (``kernels/_tiles.py``): one tile per shape class from
the tables beside the kernels, autotuning only on request, its winners in a JSON tile file that
is read back."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import triton

from cdt_fast import devices
from cdt_fast.kernels import _temporal_attention_kernel as temporal
from cdt_fast.kernels import _tiles
from cdt_fast.kernels import causal_conv3d as conv
from cdt_fast.kernels import causal_conv3d_kernel as conv_kernel
from cdt_fast.kernels import channel_norm as norm
from cdt_fast.kernels import linear_attention_kernel as attention_kernel
from cdt_fast.kernels import linear_attention_tiles as attention_tiles
from cdt_fast.kernels import time_resample as resample
from cdt_fast.kernels._tiles import Tile

TUNED = {
    "causal_conv3d": conv_kernel.conv_tuned,
    "causal_conv3d full row": conv_kernel.conv_tuned_full_n,
    "channel_norm": norm._channel_norm_tuned,
    "norm_project": attention_kernel.norm_project_tuned,
    "context_partial": attention_kernel.context_partial_tuned,
    "attention_apply": attention_kernel.attention_apply_tuned,
    "time_downsample": resample._time_downsample_tuned,
    "time_upsample": resample._time_upsample_tuned,
    "temporal_attention": temporal._temporal_attention_tuned,
}


def test_autotuning_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv(_tiles.AUTOTUNE_ENV, raising=False)
    assert _tiles.autotune_enabled() is False
    monkeypatch.setenv(_tiles.AUTOTUNE_ENV, "1")
    assert _tiles.autotune_enabled() is True
    # an explicit argument, or tile_options, beats the variable
    assert _tiles.autotune_enabled(False) is False
    with _tiles.tile_options(autotune=False):
        assert _tiles.autotune_enabled() is False
        with _tiles.tile_options(autotune=True):
            assert _tiles.autotune_enabled() is True
        assert _tiles.autotune_enabled(True) is True
    monkeypatch.setenv(_tiles.AUTOTUNE_ENV, "0")
    assert _tiles.autotune_enabled() is False
    with _tiles.tile_options(autotune=True):
        assert _tiles.autotune_enabled() is True
    monkeypatch.setenv(_tiles.AUTOTUNE_ENV, "yes")
    with pytest.raises(ValueError, match=_tiles.AUTOTUNE_ENV):
        _tiles.autotune_enabled()
    with pytest.raises(TypeError, match="autotune"):
        _tiles.autotune_enabled("1")
    with pytest.raises(TypeError, match="autotune"):
        with _tiles.tile_options(autotune=1):
            pass


@pytest.mark.parametrize("name", sorted(TUNED))
def test_no_autotune_key_holds_a_row_or_pixel_count(name):
    """Keyed on a raw row (or pixel) count, tuning would rerun for every resolution and chunk."""
    keys = set(TUNED[name].keys)
    assert not keys & {"M", "HW", "N_ROWS", "rows", "S", "positions"}, keys


def test_tile_file_round_trip_and_override(tmp_path, monkeypatch):
    path = tmp_path / "tiles.json"
    monkeypatch.setenv(_tiles.TILES_ENV, str(path))
    shape = dict(CIN=64, COUT=128, DTYPE=torch.bfloat16, NORM=False)
    default = Tile.of(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8)
    assert _tiles.lookup("causal_conv3d", "sm_90", shape, default) == default  # no file yet
    won = Tile.of(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8)
    _tiles.record("causal_conv3d", "sm_90", shape, won)
    _tiles.record("channel_norm", "sm_80", dict(C=64), Tile.of(2, 3, BLOCK_M=32))
    data = json.loads(path.read_text())
    assert data["schema"] == _tiles.SCHEMA and data["triton"] == triton.__version__
    assert data["tiles"]["sm_90"]["causal_conv3d"]["CIN=64,COUT=128,DTYPE=bf16,NORM=False"] == {
        "meta": {"BLOCK_K": 64, "BLOCK_M": 64, "BLOCK_N": 128, "GROUP_M": 8},
        "num_warps": 4,
        "num_stages": 4,
    }
    assert _tiles.lookup("causal_conv3d", "sm_90", shape, default) == won
    # another arch family or shape class keeps the table's tile
    assert _tiles.lookup("causal_conv3d", "sm_80", shape, default) == default
    assert _tiles.lookup("causal_conv3d", "sm_90", dict(shape, CIN=32), default) == default
    # an explicit file wins over the variable
    other = tmp_path / "other.json"
    with _tiles.tile_options(tiles=other):
        assert _tiles.lookup("causal_conv3d", "sm_90", shape, default) == default
    path.write_text("{not json")
    with pytest.raises(ValueError, match="tile file"):
        _tiles.lookup("causal_conv3d", "sm_90", shape, default)


class _Recorder:
    """Stands in for a JIT kernel and its autotuner: records what a launch was given."""

    def __init__(self, best=None):
        self.calls, self.cache, self.best_config = [], {}, best

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            if self.best_config is not None:
                self.cache[len(self.cache)] = self.best_config

        return run


def test_launch_runs_the_tables_tile_or_tunes_and_records(tmp_path, monkeypatch):
    monkeypatch.setenv(_tiles.TILES_ENV, str(tmp_path / "tiles.json"))
    # Tuning needs a GPU benchmarker: under the interpreter it is refused, saying why.
    if _tiles.interpreting():
        with pytest.raises(RuntimeError, match="autotuning times kernels on a GPU"):
            _tiles.launch(
                _Recorder(),
                _Recorder(),
                lambda meta: (1,),
                (),
                {},
                autotune=True,
                name="k",
                arch="sm_90",
                shape_class={},
                tile=Tile.of(4, 3, BLOCK_M=64),
            )
        monkeypatch.setattr(_tiles, "interpreting", lambda: False)  # the recorders stand in
    kernel = _Recorder()
    tuned = _Recorder(best=triton.Config({"BLOCK_M": 32}, num_warps=2, num_stages=2))
    tile = Tile.of(4, 3, BLOCK_M=64)
    common = dict(name="k", arch="sm_90", shape_class=dict(C=8), tile=tile)

    def grid(meta):
        return (100 // meta["BLOCK_M"],)

    ran = _tiles.launch(kernel, tuned, grid, (1, 2), dict(FLAG=True), autotune=False, **common)
    assert ran == tile and not tuned.calls
    assert kernel.calls == [((1,), (1, 2), dict(FLAG=True, BLOCK_M=64, num_warps=4, num_stages=3))]
    ran = _tiles.launch(kernel, tuned, grid, (1, 2), dict(FLAG=True), autotune=True, **common)
    assert ran == Tile.of(2, 2, BLOCK_M=32) and len(tuned.calls) == 1
    # the winner went to the tile file, and the fixed path now runs it
    assert _tiles.load_tiles(tmp_path / "tiles.json") == {("sm_90", "k", "C=8"): ran}
    _tiles.launch(kernel, tuned, grid, (1, 2), dict(FLAG=True), autotune=False, **common)
    assert kernel.calls[-1] == (
        (3,),
        (1, 2),
        dict(FLAG=True, BLOCK_M=32, num_warps=2, num_stages=2),
    )
    # a constexpr the launcher fixes wins over the tile (the fused norm's full-row BLOCK_N)
    _tiles.launch(kernel, tuned, grid, (), dict(BLOCK_M=50), autotune=False, **common)
    assert kernel.calls[-1][0] == (2,) and kernel.calls[-1][2]["BLOCK_M"] == 50


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_conv_tiles_keep_a_warpgroup_and_bounded_accumulators(arch):
    """What the sm_90 audit found: fewer than 4 warps or fewer than 64 rows lose wgmma, and a
    full-row (fused norm) accumulator above 128 x 128 fp32 spills."""
    for cin in (3, 16, 19, 64, 192, 768):
        for cout in (3, 16, 64, 128, 192, 512):
            for full_row in (False, True):
                if full_row and cout > conv.FUSED_NORM_MAX_CHANNELS:
                    continue
                t = conv.conv_tile(arch, cin=cin, cout=cout, full_row=full_row, ieee=False)
                m, n, k = (t.kwargs[f"BLOCK_{d}"] for d in "MNK")
                # (the RGB input's gathers take 64 rows, its 8 warps then split N)
                rows = 64 if cin < 16 else 64 * (t.num_warps // 4)
                assert t.num_warps >= 4 and m >= rows, t
                assert m * n <= 128 * 128 and 16 <= k <= 32 and n >= 16, t
                assert n <= max(16, triton.next_power_of_2(cout)), t  # no idle columns beyond
                if full_row:
                    assert n == max(16, triton.next_power_of_2(cout)), t
    # narrow output (the 3-channel final conv): a 16-wide N tile
    assert (
        conv.conv_tile("sm_90", cin=64, cout=3, full_row=False, ieee=False).kwargs["BLOCK_N"] == 16
    )


def test_other_tables_stay_in_their_budgets():
    for block_c in (16, 64, 256, 512, 4096):
        t = norm.norm_tile("sm_90", block_c=block_c)
        assert 1 <= t.kwargs["BLOCK_M"] <= 128 and t.kwargs["BLOCK_M"] * block_c <= 16384
        assert t.num_warps * 32 <= max(t.kwargs["BLOCK_M"] * block_c, 128)
    for c in (64, 128, 256, 512):
        for size in (2, 4):
            t = attention_tiles.project_tile("sm_90", block_k=c, n_out=3 * c, size=size)
            assert t.kwargs["BLOCK_M"] * c * size <= attention_tiles.X_TILE_BYTES, (c, size, t)
            assert t.kwargs["BLOCK_N"] * c * size * t.num_stages <= attention_tiles.W_TILE_BYTES
    for c_in, c_out in ((64, 128), (256, 256), (192, 384)):
        for size, upsample in itertools.product((2, 4), (False, True)):
            t = resample.resample_tile(
                "sm_90", c_in=c_in, c_out=c_out, ieee=False, size=size, upsample=upsample
            )
            assert t.num_warps >= 4 and t.kwargs["BLOCK_M"] >= 64
        ieee = resample.resample_tile(
            "sm_90", c_in=c_in, c_out=c_out, ieee=True, size=4, upsample=False
        )
        assert ieee.kwargs["BLOCK_M"] * ieee.kwargs["BLOCK_N"] <= 64 * 64


def test_tile_options_plan_launches_as_on_another_gpu(monkeypatch):
    """arch: the family whose tables CPU launches read (as on that GPU: TF32 for fp32 where torch
    allows it); dtype: a bf16 plan on fp32 CPU tensors under the interpreter. Nested blocks keep
    what they do not set."""
    from types import SimpleNamespace

    from cdt_fast.kernels import _common

    x = torch.zeros(2)
    assert _tiles.tile_family(x) == "sm_80" and _common.exact_fp32(x)
    with _tiles.tile_options(autotune=False):
        with _tiles.tile_options(arch="sm_90"):
            assert _tiles.tile_family(x) == "sm_90" and _tiles.autotune_enabled() is False
            assert _tiles.emulates_gpu(x) and not _common.exact_fp32(x)
            with torch.backends.cudnn.flags(allow_tf32=False):
                assert _common.exact_fp32(x)
            with _tiles.tile_options(dtype=torch.bfloat16):
                assert _tiles.tile_family(x) == "sm_90"
                with pytest.raises(ValueError, match="stands in for fp32 CPU tensors"):
                    _tiles.launch_dtype(x.half())
                if _common.interpreting():
                    assert _tiles.launch_dtype(x) == torch.bfloat16
                    assert not _common.exact_fp32(x)
        assert _tiles.tile_family(x) == "sm_80"
    for bad in (dict(arch="sm_70"), dict(dtype=torch.float64)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            with _tiles.tile_options(**bad):
                pass
    # a CUDA device older than the asked family: its tiles may not fit, so it is refused
    monkeypatch.setattr(devices, "arch_family", lambda device: "sm_80")
    gpu = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32)
    assert _tiles.tile_family(gpu) == "sm_80"
    with _tiles.tile_options(arch="sm_80"):
        assert _tiles.tile_family(gpu) == "sm_80"
    with _tiles.tile_options(arch="sm_90", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match="sm_80 device"):
            _tiles.tile_family(gpu)
        with pytest.raises(ValueError, match="stands in for fp32 CPU tensors"):
            _tiles.launch_dtype(gpu)


@pytest.mark.parametrize(
    "generic, cudnn, leaf, tf32",
    [
        ("ieee", "none", "tf32", True),
        ("tf32", "none", "ieee", False),
        ("ieee", "tf32", "none", True),
        ("tf32", "ieee", "none", False),
        ("tf32", "none", "none", True),
        ("none", "none", "none", False),
        (None, None, None, False),  # a torch before the per-op flags: the legacy flag...
        (None, None, None, True),  # ...either way
    ],
)
def test_tf32_rule_defers_a_none_to_its_parents(monkeypatch, generic, cudnn, leaf, tf32):
    """The rule's own reading of the per-op flags, on stand-ins of torch.backends whose getters
    return what was set (this torch's getters resolve "none" themselves, which would hide a rule
    that reads the leaf alone): the first of conv, cuDNN, generic that is not "none" decides, and
    a torch without them is read through allow_tf32."""
    from types import SimpleNamespace

    from cdt_fast.kernels import _common

    if leaf is None:
        cudnn_flags = SimpleNamespace(allow_tf32=tf32)
        backends = SimpleNamespace(cudnn=cudnn_flags)
    else:
        conv_flags = SimpleNamespace(fp32_precision=leaf)
        cudnn_flags = SimpleNamespace(conv=conv_flags, fp32_precision=cudnn)
        backends = SimpleNamespace(cudnn=cudnn_flags, fp32_precision=generic)
    monkeypatch.setattr(_common, "torch", SimpleNamespace(backends=backends))
    assert _common.cudnn_conv_tf32() is tf32


@pytest.mark.skipif(
    not all(
        hasattr(getattr(torch.backends.cudnn, op, None), "fp32_precision") for op in ("conv", "rnn")
    ),
    reason="this torch has no per-op fp32 precision flags for cuDNN convs and RNNs",
)
def test_tf32_rule_reads_torchs_per_op_conv_precision():
    """The conv-like kernels use TF32 exactly where torch's cuDNN convs do, read from the per-op
    flags: a leaf of "none" defers to its parents, only "tf32" allows TF32. Setting the conv's
    precision alone (PyTorch's recommended API) makes the legacy allow_tf32 getter raise; the
    rule must not."""
    from cdt_fast.kernels import _common

    flags = torch.backends
    names = ((flags, "fp32_precision"), (flags.cudnn, "fp32_precision"))
    names += ((flags.cudnn.conv, "fp32_precision"), (flags.cudnn.rnn, "fp32_precision"))
    saved = [getattr(obj, name) for obj, name in names]
    x = torch.zeros(2)
    try:
        with _tiles.tile_options(arch="sm_90"):
            assert _common.cudnn_conv_tf32() and not _common.exact_fp32(x)
            flags.cudnn.conv.fp32_precision = "ieee"
            with pytest.raises(RuntimeError):
                torch.backends.cudnn.allow_tf32  # noqa: B018 - the getter is what raises
            assert not _common.cudnn_conv_tf32() and _common.exact_fp32(x)
            flags.cudnn.conv.fp32_precision = "none"
            assert not _common.cudnn_conv_tf32()  # none all the way up: IEEE
            flags.cudnn.fp32_precision = "tf32"
            assert _common.cudnn_conv_tf32() and not _common.exact_fp32(x)
            flags.cudnn.fp32_precision, flags.fp32_precision = "none", "tf32"
            assert _common.cudnn_conv_tf32()
            flags.cudnn.conv.fp32_precision = "ieee"
            assert not _common.cudnn_conv_tf32()  # the leaf wins over its parents
            w = torch.randn(4, 3, 1, 3, 3)
            got = conv.causal_conv3d(torch.randn(1, 3, 2, 5, 5), w, space_padding=(1, 1))
            assert got.shape == (1, 4, 2, 5, 5)
    finally:
        for (obj, name), value in zip(names, saved):
            setattr(obj, name, value)
    assert torch.backends.cudnn.allow_tf32 == (saved[2] == "tf32")


def test_check_grid_names_the_kernel_and_the_axis():
    from cdt_fast.kernels._common import MAX_GRID, check_grid, same_data

    assert check_grid((2**31 - 1, 65535, 65535), "k") == MAX_GRID
    for grid, axis in (((2**31,), "x"), ((1, 65536), "y"), ((1, 1, 65536), "z")):
        with pytest.raises(ValueError, match=f"k: grid .* along axis {axis}"):
            check_grid(grid, "k")
    with pytest.raises(ValueError, match="1 to 3 axes"):
        check_grid((1, 1, 1, 1), "k")
    t = torch.zeros(4)
    assert same_data(t, t[:2]) and not same_data(t, t[1:])
    meta = torch.empty(4, device="meta")
    assert not same_data(meta, meta)  # no data, nothing to overwrite
