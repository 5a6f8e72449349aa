"""The GPU's own launch path, run on the CPU: every Triton kernel through its launcher as on an
H100 (``tile_options(arch="sm_90")``), with the tiles the committed tables pick for sm_90, against
the torch ops of :mod:`cdt_fast.functional`.

Under the interpreter a bf16 launch is planned with ``tile_options(dtype=torch.bfloat16)`` on fp32
tensors holding bf16 values (the interpreter has no bf16 arithmetic): bf16 tiles and flags, fp32
arithmetic, so the tolerance is fp32's, scaled by the reduction length. Each shape cuts through
every mask of its tile: a partial last tile along rows, output channels and the reduction, and the
causal history split between padding, cached frames and the chunk. Every launch is recorded and
checked against the sm_90 table's tile and the grid those cuts imply.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import triton

from cdt_fast import functional as CF
from cdt_fast.kernels import _temporal_attention_kernel as temporal
from cdt_fast.kernels import _tiles, denoise
from cdt_fast.kernels import causal_conv3d as conv
from cdt_fast.kernels import channel_norm as norm
from cdt_fast.kernels import linear_attention as attention
from cdt_fast.kernels import linear_attention_tiles as attention_tiles
from cdt_fast.kernels import time_resample as resample
from cdt_fast.kernels._tiles import Tile
from cdt_fast.kernels.temporal_attention import temporal_attention

from .helpers import DEVICE, INTERPRETED, tolerance

if not INTERPRETED and (not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9):
    pytest.skip("the sm_90 plan runs under the interpreter or on sm_90", allow_module_level=True)

PLANS = ("bf16", "fp32")


@dataclass
class Ran:
    name: str
    tile: _tiles.Tile
    kwargs: dict  # the tile's constexprs with the launcher's own (e.g. a full-row BLOCK_N)
    grid: tuple


@pytest.fixture
def ran(monkeypatch):
    """Every table-driven launch in the test: kernel name, tile, constexprs and grid."""
    seen = []
    real = _tiles.launch

    def spy(kernel, tuned, grid, args, meta, **kw):
        grids = []

        def grid_seen(cfg):
            grids.append(grid(cfg))
            return grids[-1]

        tile = real(kernel, tuned, grid_seen, args, meta, **kw)
        seen.append(Ran(kw["name"], tile, {**tile.kwargs, **meta}, grids[-1]))
        return tile

    monkeypatch.setattr(_tiles, "launch", spy)
    return seen


def _one(ran, name) -> Ran:
    found = [r for r in ran if r.name == name]
    assert len(found) == 1, [r.name for r in ran]
    return found[0]


def _plan(plan: str):
    """(storage dtype of the test's tensors, tile_options of an sm_90 launch of that plan)."""
    if plan == "fp32":
        return torch.float32, dict(arch="sm_90")
    if INTERPRETED:
        return torch.float32, dict(arch="sm_90", dtype=torch.bfloat16)
    return torch.bfloat16, dict(arch="sm_90")


def _rand(*shape, plan, scale=1.0, channels_last=True):
    """Standard normal values, rounded to bf16 for a bf16 plan, in the plan's storage dtype."""
    dtype, _ = _plan(plan)
    x = torch.randn(*shape, device=DEVICE) * scale
    if plan == "bf16":
        x = x.to(torch.bfloat16)
    x = x.to(dtype)
    if channels_last and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _close(y, ref, plan, k):
    dtype = _plan(plan)[0]
    torch.testing.assert_close(y.float(), ref.float(), **tolerance(dtype, k))


def _cuts(extent: int, block: int) -> None:
    """More than one tile along this extent, the last one partial: every mask edge is crossed."""
    assert extent > block and extent % block, (extent, block)


# -- causal conv ------------------------------------------------------------------------------

# Cin, Cout, kernel, stride, space padding, history, past frames, chunk frames, (H, W), batch,
# pad mode, upsample2x
CONVS = {
    # 128 x 128 x 32 tiles: rows, output channels and Cin = 40 (two 32-channel K steps per tap)
    # all end in partial tiles; the 2-frame history is 1 padding frame + 1 cached frame.
    "wide": (40, 130, (3, 3, 3), (1, 1, 1), (1, 1), 2, 1, 2, (5, 7), 2, "zeros", False),
    # the RGB input's tile (64 rows, 16-wide K), on a nearest-2x upsampled, replicate-padded read
    "rgb-up2x": (3, 20, (1, 5, 5), (1, 1, 1), (2, 2), 0, 0, 1, (5, 6), 2, "replicate", True),
    # spatial stride 2 with the temporal kernel of a time-strided conv
    "strided": (24, 72, (3, 3, 3), (2, 2, 2), (1, 1), 2, 2, 3, (17, 23), 1, "replicate", False),
}


# fp32 without TF32 takes 64 x 64 x 16 tiles (FMA dots): Cin = 20 (two K steps per tap), Cout =
# 72 and 70 rows cut them, the history as in "wide".
EXACT = (20, 72, (3, 3, 3), (1, 1, 1), (1, 1), 2, 1, 2, (5, 7), 1, "zeros", False)


def _conv_case(spec, plan):
    cin, cout, kernel, stride, pad, history, past_n, frames, (h, w), b, mode, up = spec
    x = _rand(b, cin, frames, h, w, plan=plan)
    past = _rand(b, cin, past_n, h, w, plan=plan) if past_n else None
    weight = _rand(cout, cin, *kernel, plan=plan, scale=(cin * kernel[1] * kernel[2]) ** -0.5)
    bias = _rand(cout, plan=plan)
    kw = dict(past=past, history=history, space_padding=pad, stride=stride, pad_mode=mode)
    return x, weight, bias, dict(kw, upsample2x=up), cin * kernel[0] * kernel[1] * kernel[2]


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("name", sorted(CONVS))
def test_causal_conv3d_on_sm90_tiles(name, plan, ran):
    x, weight, bias, kw, k = _conv_case(CONVS[name], plan)
    with _tiles.tile_options(**_plan(plan)[1]):
        y = conv.causal_conv3d(x, weight, bias, **kw)
    _close(y, CF.causal_conv3d(x, weight, bias, **kw), plan, k)
    r = _one(ran, "causal_conv3d")
    cout, cin = weight.shape[:2]
    # fp32 on an H100 runs TF32 dots (torch.backends.cudnn.allow_tf32, on by default)
    assert r.tile == conv.conv_tile("sm_90", cin=cin, cout=cout, full_row=False, ieee=False)
    m = y.shape[0] * y.shape[2] * y.shape[3] * y.shape[4]
    _cuts(m, r.kwargs["BLOCK_M"])
    assert cin % r.kwargs["BLOCK_K"]
    if name == "wide":
        _cuts(cout, r.kwargs["BLOCK_N"])
    assert r.grid == (triton.cdiv(m, r.kwargs["BLOCK_M"]) * triton.cdiv(cout, r.kwargs["BLOCK_N"]),)


def test_causal_conv3d_exact_fp32_on_sm90_tiles(ran):
    """fp32 without TF32: the table's IEEE tile."""
    x, weight, bias, kw, k = _conv_case(EXACT, "fp32")
    with torch.backends.cudnn.flags(allow_tf32=False), _tiles.tile_options(arch="sm_90"):
        y = conv.causal_conv3d(x, weight, bias, **kw)
    _close(y, CF.causal_conv3d(x, weight, bias, **kw), "fp32", k)
    r = _one(ran, "causal_conv3d")
    assert r.tile == conv.conv_tile("sm_90", cin=20, cout=72, full_row=False, ieee=True)
    for extent, block in ((70, "BLOCK_M"), (72, "BLOCK_N"), (20, "BLOCK_K")):
        _cuts(extent, r.kwargs[block])


@pytest.mark.parametrize("plan", PLANS)
def test_causal_conv3d_norm_epilogue_on_sm90_tiles(plan, ran):
    """The fused Block: a full-row tile (BLOCK_N = next_pow2(Cout) = 128 over 100 channels), the
    norm, ReLU, time bias and residual in the epilogue."""
    x = _rand(2, 24, 1, 9, 8, plan=plan)
    weight = _rand(100, 24, 1, 3, 3, plan=plan, scale=(24 * 9) ** -0.5)
    bias, g, beta = (_rand(100, plan=plan) for _ in range(3))
    time_bias, residual = _rand(2, 100, plan=plan), _rand(2, 100, 1, 9, 8, plan=plan)
    kw = dict(
        space_padding=(1, 1), relu=True, time_bias=time_bias, residual=residual, pad_mode="zeros"
    )
    with _tiles.tile_options(**_plan(plan)[1]):
        y = conv.causal_conv3d_norm(x, weight, bias, g, beta, **kw)
    _close(y, CF.causal_conv3d_norm(x, weight, bias, g, beta, **kw), plan, 24 * 9 + 100)
    r = _one(ran, "causal_conv3d")
    assert r.tile == conv.conv_tile("sm_90", cin=24, cout=100, full_row=True, ieee=False)
    assert r.kwargs["BLOCK_N"] == 128 and r.kwargs["NORM"]
    _cuts(2 * 9 * 8, r.kwargs["BLOCK_M"])


# -- norm block, linear attention ---------------------------------------------------------------


@pytest.mark.parametrize("plan", PLANS)
def test_channel_norm_on_sm90_tiles(plan, ran):
    x = _rand(2, 130, 2, 3, 3, plan=plan, scale=2.0)
    g, b, time_bias = _rand(130, plan=plan), _rand(130, plan=plan), _rand(2, 130, plan=plan)
    residual = _rand(2, 130, 2, 3, 3, plan=plan)
    kw = dict(relu=True, time_bias=time_bias, residual=residual)
    with _tiles.tile_options(**_plan(plan)[1]):
        y = norm.channel_norm(x, g, b, **kw)
    _close(y, CF.channel_norm(x, g, b, **kw), plan, 130)
    r = _one(ran, "channel_norm")
    assert r.tile == norm.norm_tile("sm_90", block_c=256)
    _cuts(2 * 2 * 3 * 3, r.kwargs["BLOCK_M"])


@pytest.mark.parametrize("plan", PLANS)
def test_linear_attention_block_on_sm90_tiles(plan, ran):
    """C = 130 channels (one 256-wide row block), 2 heads of 72 (two 64-wide d blocks), 99
    positions a frame (two 64-position blocks; the context pass splits them in two slices), 130
    output channels (two 128-wide blocks), 432 qkv columns (seven 64-wide steps)."""
    heads, dh, c = 2, 72, 130
    x = _rand(2, c, 2, 9, 11, plan=plan)
    g, b = _rand(c, plan=plan), _rand(c, plan=plan)
    w_qkv = _rand(3 * heads * dh, c, plan=plan, scale=c**-0.5)
    w_out = _rand(c, heads * dh, plan=plan, scale=(heads * dh) ** -0.5)
    b_out = _rand(c, plan=plan)
    with _tiles.tile_options(**_plan(plan)[1]):
        y = attention.linear_attention_block(x, g, b, w_qkv, w_out, b_out, heads=heads)
    ref = CF.linear_attention_block(x, g, b, w_qkv, w_out, b_out, heads=heads)
    _close(y, ref, plan, 99 + c)
    size = 2 if plan == "bf16" else 4
    frames, positions = 4, 99

    project = _one(ran, "norm_project")
    assert project.tile == attention_tiles.project_tile("sm_90", block_k=256, n_out=432, size=size)
    _cuts(frames * positions, project.kwargs["BLOCK_M"])
    _cuts(3 * heads * dh, project.kwargs["BLOCK_N"])

    partial = _one(ran, "context_partial")
    assert partial.tile == attention_tiles.partial_tile("sm_90", block_d=64, block_e=128)
    _cuts(dh, partial.kwargs["BLOCK_D"])
    assert partial.grid == (frames * heads, 2, 2)  # 2 slices of positions, 2 d blocks

    apply = _one(ran, "attention_apply")
    assert apply.tile == attention_tiles.apply_tile("sm_90", dh=dh)
    _cuts(positions, apply.kwargs["BLOCK_N"])
    _cuts(dh, apply.kwargs["BLOCK_D"])
    _cuts(c, apply.kwargs["BLOCK_C"])
    assert apply.grid == (frames * 2, 2)  # (frame, position block) pairs, channel blocks


# -- temporal resampling ------------------------------------------------------------------------


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("first", [True, False], ids=["first-chunk", "past"])
def test_time_downsample_on_sm90_tiles(plan, first, ran):
    """128 x 128 tiles (K 64 for bf16, 32 for fp32) over 135 pixels a frame and 130 channels in
    and out; output frame 0 reads padding (first chunk) or the cached frame, then the chunk."""
    x = _rand(1, 130, 4, 9, 15, plan=plan)
    weight, bias = _rand(130, 130, 3, plan=plan, scale=(3 * 130) ** -0.5), _rand(130, plan=plan)
    kw = dict(pad_mode="replicate") if first else dict(past=_rand(1, 130, 1, 9, 15, plan=plan))
    with _tiles.tile_options(**_plan(plan)[1]):
        y = resample.time_downsample(x, weight, bias, **kw)
    _close(y, CF.time_downsample(x, weight, bias, **kw), plan, 3 * 130)
    r = _one(ran, "time_downsample")
    size = 2 if plan == "bf16" else 4
    assert r.tile == resample.resample_tile(
        "sm_90", c_in=130, c_out=130, ieee=False, size=size, upsample=False
    )
    for extent, block in ((135, "BLOCK_M"), (130, "BLOCK_N"), (130, "BLOCK_K")):
        _cuts(extent, r.kwargs[block])


@pytest.mark.parametrize("plan", PLANS)
def test_time_upsample_on_sm90_tiles(plan, ran):
    """fp32 runs the 32-wide K tile (and 64-wide N) that keeps 3 stages within shared memory."""
    x = _rand(1, 130, 2, 9, 15, plan=plan)
    weight, bias = _rand(260, 130, 1, plan=plan, scale=130**-0.5), _rand(260, plan=plan)
    with _tiles.tile_options(**_plan(plan)[1]):
        y = resample.time_upsample(x, weight, bias, drop_first=True)
    _close(y, CF.time_upsample(x, weight, bias, drop_first=True), plan, 130)
    r = _one(ran, "time_upsample")
    size = 2 if plan == "bf16" else 4
    assert r.tile == resample.resample_tile(
        "sm_90", c_in=130, c_out=130, ieee=False, size=size, upsample=True
    )
    assert r.kwargs["BLOCK_K"] == 128 // size
    for extent, block in ((135, "BLOCK_M"), (130, "BLOCK_N"), (130, "BLOCK_K")):
        _cuts(extent, r.kwargs[block])


def test_time_resampling_exact_fp32_on_sm90_tiles(ran):
    """fp32 without TF32: the IEEE tile (64 x 64 x 32)."""
    x = _rand(1, 72, 3, 9, 8, plan="fp32")
    wd, bd = _rand(72, 72, 3, plan="fp32", scale=(3 * 72) ** -0.5), _rand(72, plan="fp32")
    wu, bu = _rand(144, 72, 1, plan="fp32", scale=72**-0.5), _rand(144, plan="fp32")
    with torch.backends.cudnn.flags(allow_tf32=False), _tiles.tile_options(arch="sm_90"):
        down = resample.time_downsample(x, wd, bd)
        up = resample.time_upsample(x, wu, bu, drop_first=False)
    _close(down, CF.time_downsample(x, wd, bd), "fp32", 3 * 72)
    _close(up, CF.time_upsample(x, wu, bu, drop_first=False), "fp32", 72)
    ieee = resample.resample_tile("sm_90", c_in=72, c_out=72, ieee=True, size=4, upsample=False)
    assert [r.tile for r in ran] == [ieee, ieee]
    for extent, block in ((72, "BLOCK_M"), (72, "BLOCK_N"), (72, "BLOCK_K")):
        _cuts(extent, ran[0].kwargs[block])


# -- temporal attention, sampler steps ----------------------------------------------------------


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize(
    "s, heads, tq, tk",
    [(25, 2, 5, 7), (3, 1, 70, 70)],
    ids=["packed", "long"],
)
def test_temporal_attention_on_sm90_tiles(plan, s, heads, tq, tk, ran):
    """Packed: 9 sequences of 5 queries / 7 keys a tile, 50 (sequence, head) rows (the last tile
    holds 5); long: one sequence a tile, 70 frames in two 64-wide query and key blocks."""
    d = 40
    q = _rand(s, heads, tq, d, plan=plan)
    k, v = _rand(s, heads, tk, d, plan=plan), _rand(s, heads, tk, d, plan=plan)
    with _tiles.tile_options(**_plan(plan)[1]):
        y = temporal_attention(q, k, v, causal=True)
    _close(y, CF.temporal_attention(q, k, v, causal=True), plan, tk + d)
    r = _one(ran, "temporal_attention")
    g, block_m, block_n, block_d = temporal.tile_shape(tq, tk, d)
    assert r.tile == temporal._TILE and r.kwargs["G"] == g
    assert d % block_d  # the head dim's mask
    if g > 1:
        _cuts(s * heads, g)
    else:
        _cuts(tq, block_m)
    assert r.grid == (triton.cdiv(s * heads, g), triton.cdiv(g * tq, block_m))


def test_sampler_steps_on_the_gpu_launch_path():
    """The DDIM update and the uint8 frames have no table: one 1024-element program per block,
    the last one partial (4140 elements)."""
    x_t, x0 = _rand(2, 3, 1, 23, 30, plan="fp32"), _rand(2, 3, 1, 23, 30, plan="fp32")
    coefficients = (1.1, 0.9, 0.7, 0.3)
    _cuts(x_t.numel(), 1024)
    with _tiles.tile_options(arch="sm_90"):
        y = denoise.ddim_update(x_t, x0, coefficients, clamp=True)
        frames = denoise.to_uint8_frames(x0)
    _close(y, CF.ddim_update(x_t, x0, coefficients, clamp=True), "fp32", 4)
    assert torch.equal(frames.cpu(), CF.to_uint8_frames(x0).cpu())


# -- a 99 KB block: compute capability 8.6/8.9 (sm_80 tables) and 12.x (sm_90 tables) ----------

CONSUMER = 99 * 1024


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_time_resampling_on_a_99kb_block(arch, ran):
    """The bf16 tiles that outgrow a 99 KB block (the downsample's 129 KiB on sm_80, both
    resamplings on sm_90) run fitted: fewer stages, then half the K tile, the shapes of the sm_90
    tests above cutting every mask."""
    plan = "bf16"
    options = dict(_plan(plan)[1], arch=arch, shared_memory=CONSUMER)
    x = _rand(1, 130, 2, 9, 15, plan=plan)
    wd, bd = _rand(130, 130, 3, plan=plan, scale=(3 * 130) ** -0.5), _rand(130, plan=plan)
    wu, bu = _rand(260, 130, 1, plan=plan, scale=130**-0.5), _rand(260, plan=plan)
    past = _rand(1, 130, 1, 9, 15, plan=plan)
    with _tiles.tile_options(**options):
        down = resample.time_downsample(x, wd, bd, past=past)
        up = resample.time_upsample(x, wu, bu, drop_first=True)
    _close(down, CF.time_downsample(x, wd, bd, past=past), plan, 3 * 130)
    _close(up, CF.time_upsample(x, wu, bu, drop_first=True), plan, 130)
    geometry = dict(c_in=130, c_out=130, ieee=False, size=2)
    for r, upsample in zip(ran, (False, True)):
        table = resample.resample_tile(arch, **geometry, upsample=upsample)
        fitted = resample.resample_tile(arch, **geometry, upsample=upsample, limit=CONSUMER)
        assert r.tile == fitted and (fitted != table or (arch, upsample) == ("sm_80", True))
        footprint = resample.resample_shared_memory(r.tile, arch=arch, upsample=upsample, size=2)
        assert footprint <= CONSUMER
        for extent, block in ((135, "BLOCK_M"), (130, "BLOCK_N"), (130, "BLOCK_K")):
            _cuts(extent, r.kwargs[block])


def test_temporal_attention_on_a_99kb_block(ran):
    """fp32 heads of 100 (128-wide d blocks) in 64-frame blocks need 161 KiB in 2 stages on the
    sm_90 family: a 99 KB block runs them in one."""
    q, k, v = (_rand(1, 1, 70, 100, plan="fp32") for _ in range(3))
    with _tiles.tile_options(arch="sm_90", shared_memory=CONSUMER):
        y = temporal_attention(q, k, v, causal=True)
    _close(y, CF.temporal_attention(q, k, v, causal=True), "fp32", 70 + 100)
    r = _one(ran, "temporal_attention")
    assert r.tile == Tile.of(4, 1) and temporal._TILE == Tile.of(4, 2)
    _cuts(70, r.kwargs["BLOCK_M"])
