"""Every launch grid of a 4K clip stays within CUDA's limits: 2**31 - 1 blocks along x, 65,535
along y and z (:data:`cdt_fast.kernels._common.MAX_GRID`).

Triton: the engine encodes and decodes 3840x2160 clips (both presets' real channel widths, batch
1 and 2, the chunk lengths the engine picks at 4K) on the meta device with every launch captured
(:func:`cdt_fast.engine.warmup.capture_model`): the launchers' own grid arithmetic on the real
shapes, no memory and no kernel run. The temporal attention and the uint8 frames, outside the
engine's encode and decode, are launched the same way at 4K latent and frame sizes.

CUDA (``csrc/cuda/*.cu``): the grid of every ``<<<...>>>`` launch is mirrored here and pinned to
its source text (a changed launch fails until its mirror changes with it), then evaluated at the
shapes the engine gives those ops at 4K.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import triton

from cdt_fast.engine.warmup import capture_launches, capture_model
from cdt_fast.kernels._common import MAX_GRID
from cdt_fast.kernels.denoise import to_uint8_frames
from cdt_fast.kernels.temporal_attention import temporal_attention

ROOT = Path(__file__).resolve().parents[1]
UHD = (2160, 3840)
CLIP_FRAMES = 17  # first chunk, steady chunks and a shorter last one at 4K's chunk lengths


def _within(grid) -> bool:
    return 1 <= len(grid) <= 3 and all(1 <= g <= limit for g, limit in zip(grid, MAX_GRID))


@pytest.fixture(scope="module")
def uhd_launches():
    """{(preset, batch, dtype): the Triton launches of one 4K encode and decode}."""
    runs = {}
    for preset in ("base", "small"):
        for batch in (1, 2):
            for dtype in (torch.bfloat16, torch.float32):
                runs[(preset, batch, dtype)] = capture_model(
                    preset, UHD, CLIP_FRAMES, dtype, batch=batch, device="meta"
                )
    return runs


def test_engine_launches_at_4k_fit_cudas_grid(uhd_launches):
    for setting, launches in uhd_launches.items():
        names = {launch.name for launch in launches}
        assert {"_causal_conv3d_kernel", "_attention_apply_kernel"} <= names, setting
        over = {(launch.name, launch.grid) for launch in launches if not _within(launch.grid)}
        assert not over, (setting, sorted(over))


def test_full_resolution_attention_folds_its_frames_into_the_first_axis(uhd_launches):
    """Both U-Nets attend at full resolution: 8,294,400 positions a frame, 129,600 blocks of 64,
    which axis 1 (65,535) could not hold."""
    for (_, batch, _), launches in uhd_launches.items():
        applies = [launch for launch in launches if launch.name == "_attention_apply_kernel"]
        positions = max(dict(zip(a.fn.arg_names, a.args))["N"] for a in applies)
        assert positions == UHD[0] * UHD[1]
        assert max(a.grid[0] for a in applies) >= triton.cdiv(positions, 64) * batch


def test_capture_model_refuses_other_devices_and_batches():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'meta'"):
        capture_model("small", (64, 64), 5, device="cuda")
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        capture_model("small", (64, 64), 5, batch=0, device="meta")


def test_temporal_attention_and_frames_at_4k_fit_cudas_grid():
    """The generator's temporal attention over every 4K latent pixel (480x270 sequences of 16
    frames, 6 heads of 64, batch 2), and a batch of two 17-frame 4K clips to uint8."""
    latent = torch.empty(2 * 270 * 480, 6, 16, 64, device="meta", dtype=torch.bfloat16)
    clip = torch.empty(2, 3, CLIP_FRAMES, *UHD, device="meta")
    with capture_launches(90) as launches:
        temporal_attention(latent, latent, latent, causal=True)
        to_uint8_frames(clip)
    assert len(launches) == 2 and all(_within(launch.grid) for launch in launches), [
        (launch.name, launch.grid) for launch in launches
    ]


# -- CUDA launches (csrc/cuda) ------------------------------------------------------------------

K_TILE = 32  # linear_attention.cu's kTile


def _cuda_linear_attention(frames: int, positions: int, heads: int, dim: int) -> dict:
    """The grids of linear_attention.cu's ``launch``, as it computes them."""
    hidden, dim_tiles, pairs = heads * dim, triton.cdiv(dim, K_TILE), frames * heads
    tiles = pairs * dim_tiles * dim_tiles
    splits = min(triton.cdiv(1024, tiles), triton.cdiv(positions, 8 * K_TILE))
    if splits * pairs > 65535:
        splits = 65535 // pairs
    splits = max(splits, 1)
    return {
        "k_stats": (triton.cdiv(hidden, K_TILE), frames),
        "context": (dim_tiles, dim_tiles, pairs * splits),
        "out": (triton.cdiv(positions, K_TILE), dim_tiles, pairs),
    }


# linear_attention.cu's dim3 grids, as _cuda_linear_attention names them.
LINEAR_ATTENTION_GRIDS = {
    "k_stats": "dim3(static_cast<unsigned>((L.hidden + kTile - 1) / kTile), "
    "static_cast<unsigned>(a.frames))",
    "context": "dim3(dim_tiles, dim_tiles, static_cast<unsigned>(pairs * splits))",
    "out": "dim3(static_cast<unsigned>((a.positions + kTile - 1) / kTile), dim_tiles, "
    "static_cast<unsigned>(pairs))",
}
# The grid of every launch in csrc/cuda (whitespace collapsed), in source order. Besides the dim3
# grids above, all are grid_for grids (common.cuh): a grid-stride loop's 1-D grid, capped at
# 65,535 blocks whatever the size; channel_norm.cu names its one `grid`.
CUDA_LAUNCHES = {
    "causal_conv3d_history.cu": [],  # its frame copies go through common.cuh's copy_rows
    "channel_norm.cu": ["grid", "grid"],
    "common.cuh": ["grid_for(rows * units, kBlock)"] * 3,
    "denoise.cu": [
        "detail::grid_for(a.numel / kVec, kBlock)",
        "detail::grid_for(a.numel, kBlock)",
        "detail::grid_for(numel / kVec, kBlock)",
        "detail::grid_for(numel, kBlock)",
    ],
    "linear_attention.cu": [
        LINEAR_ATTENTION_GRIDS["k_stats"],
        LINEAR_ATTENTION_GRIDS["context"],
        "detail::grid_for(partial_floats, 256)",  # the fixed-order sum of the split contexts
        "detail::grid_for(q_rows, 256 / 32)",
        LINEAR_ATTENTION_GRIDS["out"],
    ],
    "time_resample.cu": ["detail::grid_for(n, kBlock)"] * 2,
}
NAMED_GRIDS = {"channel_norm.cu": "const unsigned grid = detail::grid_for(a.rows, kBlock / 32);"}
GRID_FOR_CAP = "return static_cast<unsigned>(g < 1 ? 1 : (g > 65535 ? 65535 : g));"


def _launch_grids(source: str):
    """The first argument of every ``<<<...>>>`` in ``source``, whitespace collapsed."""
    grids = []
    for config in re.findall(r"<<<(.*?)>>>", source, flags=re.S):
        depth, end = 0, len(config)
        for i, ch in enumerate(config):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                end = i
                break
        grids.append(" ".join(config[:end].split()))
    return grids


def test_every_cuda_launch_grid_is_mirrored():
    sources = {p.name: p.read_text() for p in (ROOT / "csrc" / "cuda").glob("*.cu*")}
    assert set(sources) == set(CUDA_LAUNCHES)
    for name, text in sources.items():
        assert _launch_grids(text) == CUDA_LAUNCHES[name], name
        if name in NAMED_GRIDS:
            assert NAMED_GRIDS[name] in " ".join(text.split()), name
    assert GRID_FOR_CAP in " ".join(sources["common.cuh"].split())
    for grids in CUDA_LAUNCHES.values():
        for grid in grids:
            assert "grid_for(" in grid or grid == "grid" or grid in LINEAR_ATTENTION_GRIDS.values()


def test_cuda_linear_attention_grids_at_4k_fit(uhd_launches):
    """At the (frames, positions, heads, head width) of every attention of a 4K encode and
    decode; every other CUDA launch is a capped grid_for grid (at most 65,535 blocks)."""
    shapes = set()
    for launches in uhd_launches.values():
        for launch in launches:
            if launch.name == "_context_partial_kernel":
                a = dict(zip(launch.fn.arg_names, launch.args))
                shapes.add((launch.grid[0] // a["HEADS"], a["N"], a["HEADS"], a["DH"]))
    assert max(positions for _, positions, _, _ in shapes) == UHD[0] * UHD[1]
    for shape in sorted(shapes):
        grids = _cuda_linear_attention(*shape)
        assert all(_within(g) for g in grids.values()), (shape, grids)
