"""Spatial tiling: the blend is a partition of unity, a covering tile is exact, real tiles stay
close to the untiled result, streams match whole calls, and memory is bounded by the tile."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cdt_fast
from cdt_fast import CDT, CDTConfig, randomize_, tiling


def _model(width: int = 4) -> CDT:
    cfg = CDTConfig.preset(
        "small", context_dim=width, unet_dim=width, latent_dim=16, out_channels=3
    )
    return randomize_(CDT(cfg).eval())


@pytest.fixture(scope="module")
def model() -> CDT:
    return _model()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).mean().item()
    return 10 * torch.log10(torch.tensor(4.0 / mse)).item()


# -- the plan and the weights --------------------------------------------------------------------
def test_resolve_validates():
    assert tiling.resolve(None) is None
    assert tiling.resolve(256) == tiling.Tiling((256, 256), (64, 64))
    assert tiling.resolve((64, 128), 16) == tiling.Tiling((64, 128), (16, 16))
    with pytest.raises(ValueError, match="multiple of 8"):
        tiling.resolve(100)
    with pytest.raises(ValueError, match="smaller than the tile"):
        tiling.resolve(64, 64)
    with pytest.raises(ValueError, match="tile_overlap"):
        tiling.resolve(64, 12)
    with pytest.raises(ValueError, match="needs tile"):
        tiling.resolve(None, 16)
    with pytest.raises(TypeError, match="tile"):
        tiling.resolve("64")
    with pytest.raises(TypeError, match="tile"):
        tiling.resolve(True)


@pytest.mark.parametrize(
    "length,tile,overlap", [(5, 8, 2), (8, 8, 2), (9, 8, 2), (23, 8, 3), (10, 4, 3)]
)
def test_weights_sum_to_one(length, tile, overlap):
    spec = tiling.Tiling((tile * 8, 8), (overlap * 8, 0))
    for scale in (1, 8):
        tiles = tiling.grid(length, 1, spec, 8, scale)
        total = torch.zeros(length * scale)
        for t in tiles:
            rows, _ = t.region(scale)
            assert t.wy.numel() == rows.stop - rows.start
            assert bool((t.wy > 0).all())
            total[rows] += t.wy
        torch.testing.assert_close(total, torch.ones_like(total))
        assert tiles[-1].y1 == length


def test_blend_rebuilds_identity_streams():
    """Tiles that return their own slice of a field blend back to the field exactly, whether run
    one after another or in lockstep with different chunk lengths per tile."""
    field = torch.randn(2, 3, 7, 40, 56)
    spec = tiling.resolve((16, 24), (8, 8))
    tiles = tiling.grid(5, 7, spec, 8, 8)
    assert len(tiles) > 4

    def stream(tile, cut):
        rows, cols = tile.region(8)
        piece = field[:, :, :, rows, cols]
        for a in range(0, 7, cut):
            yield piece[:, :, a : a + cut].clone()

    whole = tiling.blend_sequential(lambda t: stream(t, 3), tiles, 8, 7, 40, 56)
    torch.testing.assert_close(whole, field)
    cuts = [1 + i % 3 for i in range(len(tiles))]
    pieces = list(
        tiling.blend_lockstep([stream(t, c) for t, c in zip(tiles, cuts)], tiles, 8, 40, 56)
    )
    assert len(pieces) > 1
    torch.testing.assert_close(torch.cat(pieces, 2), field)


# -- the reference and the engine --------------------------------------------------------------
def test_covering_tile_is_exact(model):
    x = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    z = model.encode(x)
    assert torch.equal(model.encode(x, tile=(32, 48)), z)
    noise = model.initial_noise(z)
    ref = model.decode(z, noise=noise)
    assert torch.equal(model.decode(z, noise=noise, tile=64), ref)
    g = torch.Generator().manual_seed(1)
    drawn = model.decode(z, generator=g)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(model.decode(z, generator=g, tile=(32, 48)), drawn)


def test_real_tiles_close_and_overlap_hides_seams(model):
    """Tiles smaller than the frame differ from the untiled decode only a little, and the blended
    overlap does better than abutting tiles (a hard seam)."""
    z = model.encode(torch.rand(1, 3, 1, 48, 64) * 2 - 1)
    noise = model.initial_noise(z)
    ref = model.decode(z, noise=noise)
    blended = model.decode(z, noise=noise, tile=32, tile_overlap=16)
    abutting = model.decode(z, noise=noise, tile=32, tile_overlap=0)
    assert blended.shape == ref.shape
    assert _psnr(blended, ref) > 20.0
    assert _psnr(blended, ref) > _psnr(abutting, ref) + 1.0


def test_streams_match_whole_calls(model):
    x = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    whole = model.encode(x, tile=24, tile_overlap=8)
    params = torch.cat(list(model.encode_chunks(x, 4, tile=24, tile_overlap=8)), 2)
    torch.testing.assert_close(cdt_fast.DiagonalGaussian(params).mode(), whole)
    noise = model.initial_noise(whole)
    ref = model.decode(whole, noise=noise, tile=24, tile_overlap=8)
    pieces = list(model.decode_stream(whole, noise=noise, chunk_frames=1, tile=24, tile_overlap=8))
    assert len(pieces) == 3
    torch.testing.assert_close(torch.cat(pieces, 2), ref)


def test_engine_tiles_match_reference(model):
    engine = cdt_fast.accelerate(model, backend="torch")
    x = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    z = model.encode(x, tile=24, tile_overlap=8)
    torch.testing.assert_close(engine.encode(x, tile=24, tile_overlap=8), z)
    streamed = torch.cat(list(engine.encode_stream(x, tile=24, tile_overlap=8)), 2)
    torch.testing.assert_close(streamed, z)
    noise = model.initial_noise(z)
    ref = model.decode(z, noise=noise, tile=24, tile_overlap=8)
    torch.testing.assert_close(engine.decode(z, noise=noise, tile=24, tile_overlap=8), ref)
    pieces = engine.decode_stream(z, noise=noise, tile=24, tile_overlap=8)
    torch.testing.assert_close(torch.cat(list(pieces), 2), ref)
    with pytest.raises(TypeError, match="z must be a torch.Tensor when tiling"):
        engine.decode(iter([z]), tile=24)


# -- memory ------------------------------------------------------------------------------------
class _LargestIntermediate(TorchDispatchMode):
    """The most elements of any tensor an op returns, except RGB video tensors (input, noise,
    output: the caller's, full size by nature)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not (t.dim() == 5 and t.shape[1] == 3):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_decode(model, h, w, tile):
    z = torch.randn(1, 16, 1, h, w)
    with _LargestIntermediate() as probe:
        out = model.decode(z, tile=tile, tile_overlap=16)
    assert out.shape == (1, 3, 1, 8 * h, 8 * w)
    return probe.largest


def test_decode_memory_bounded_by_tile(model):
    """The largest intermediate tensor of a tiled decode does not grow with the frame."""
    small = _largest_decode(model, 8, 8, 64)
    large = _largest_decode(model, 16, 16, 64)
    assert large == small
    untiled = _largest_decode(model, 16, 16, 128)
    assert untiled > 3 * large


@pytest.mark.slow
def test_1080p_decode_memory_bounded_by_tile(model):
    small = _largest_decode(model, 32, 32, 256)
    full_hd = _largest_decode(model, 135, 240, 256)
    assert full_hd == small


# -- the CLI -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_tile_option(tmp_path):
    import numpy as np

    from cdt_fast.cli import main

    from .video_clips import pattern, read_pngs, tiny_model_file, write_pngs

    model_file = tiny_model_file(tmp_path / "small.safetensors", "small")
    src = write_pngs(tmp_path / "src", pattern(5, 30, 44, seed=2))
    common = ["--model", str(model_file), "--seed", "1", "--quiet"]

    def reconstruct(name, *extra):
        out = tmp_path / name
        assert main(["reconstruct", str(src), "-o", str(out), *common, *extra]) == 0
        return read_pngs(out)

    tile = ["--tile", "24", "--tile-overlap", "8"]
    tiled = reconstruct("tiled", *tile)
    assert tiled.shape == (5, 30, 44, 3)
    latent = tmp_path / "z.safetensors"
    assert main(["encode", str(src), "-o", str(latent), *common[:2], "--quiet", *tile]) == 0
    decoded = tmp_path / "decoded"
    assert main(["decode", str(latent), "-o", str(decoded), *common, *tile]) == 0
    np.testing.assert_array_equal(read_pngs(decoded), tiled)


def test_cli_rejects_bad_tile(tmp_path, capsys):
    from cdt_fast.cli import main

    from .video_clips import pattern, tiny_model_file, write_pngs

    model_file = tiny_model_file(tmp_path / "small.safetensors", "small")
    src = write_pngs(tmp_path / "src", pattern(1, 16, 16))
    argv = ["reconstruct", str(src), "-o", str(tmp_path / "out"), "--model", str(model_file)]
    assert main([*argv, "--quiet", "--tile", "20"]) != 0
    assert "multiple of 8" in capsys.readouterr().err
