"""The generation loop on clips of several aspect ratios: encode-dataset's centre crop to fixed
sizes, gen-train's shape buckets and its up-front check of the manifest, generate's default size."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from cdt_fast import video_io
from cdt_fast.cli import _common
from cdt_fast.data import ClipDataset, StepBatches
from cdt_fast.data.transforms import nearest_aspect
from cdt_fast.generation.buckets import LatentShapeError, latent_buckets
from cdt_fast.generation.demo import write_latent_folder
from cdt_fast.pipelines import open_clip

from .helpers import run_cli
from .test_generation_train import latent_config
from .video_clips import pattern, write_clip


# -- encode-dataset --crop ---------------------------------------------------------------------------
def _ramp_clip(path, frames=5, height=48, width=144):
    """Red rises with the column, green with the row: a crop's place is readable from its values."""
    x = np.linspace(0, 255, width)[None, None, :]
    y = np.linspace(0, 255, height)[None, :, None]
    red = np.broadcast_to(x, (frames, height, width))
    green = np.broadcast_to(y, (frames, height, width))
    rgb = np.stack([red, green, np.full_like(red, 128.0)], -1)
    return write_clip(path, rgb.round().astype(np.uint8), Fraction(24))


def test_crop_scales_to_cover_and_takes_the_centre(tmp_path):
    src = _ramp_clip(tmp_path / "wide.mp4")  # 48x144, 3:1
    config = latent_config()
    # 16x48 has the clip's aspect ratio, so it is chosen over 24x24 and the clip is only scaled
    clip, info, size = open_clip(str(src), config, None, None, crop=[(24, 24), (16, 48)])
    assert size == (16, 48) and clip.shape == (1, 3, 5, 16, 48)
    # 24x24 alone: scaled by 1/2 to 24x72 (covering 24x24), then columns 24..47 of it
    clip, _, size = open_clip(str(src), config, None, None, crop=[(24, 24)])
    assert size == (24, 24) and clip.shape == (1, 3, 5, 24, 24)
    got = clip.read_all()[0, :, 0]  # [3, 24, 24] in [-1, 1]
    clip.finish()
    # PyAV scales the frame to 24x72 (scale 1/2); the middle 24 columns of that are the crop
    scaled = next(iter(video_io.iter_frames(src, (24, 72)))).astype(np.float64)
    want = torch.from_numpy(scaled[:, 24:48]).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # one column off moves red 3.5 levels
    red = (got[0] + 1) * 127.5
    assert abs(float(red.mean()) - 127.5) < 3  # the middle of the red ramp
    assert info.height == 48 and info.width == 144


def test_nearest_aspect_is_symmetric_in_log_ratio():
    sizes = [(64, 64), (32, 64), (64, 32)]
    assert nearest_aspect(90, 160, sizes) == (32, 64)  # 16:9 -> 1:2
    assert nearest_aspect(160, 90, sizes) == (64, 32)
    assert nearest_aspect(60, 80, sizes) == (64, 64)  # 4:3 is nearer 1:1 than 1:2
    with pytest.raises(ValueError, match="sizes"):
        nearest_aspect(1, 1, [])


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--crop", "64"], "--crop must be HxW"),
        (["--crop", "64x0"], "--crop must be HxW"),
        (["--crop", "64x64,"], "--crop must be HxW"),
        (["--crop", "64x64,64x64"], "twice"),
        (["--crop", "64x64", "--size", "64"], "--crop and --size"),
    ],
)
def test_crop_arguments_are_checked_before_any_work(capsys, tmp_path, monkeypatch, argv, needle):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(_common, "load_model", forbidden)
    monkeypatch.setattr(video_io, "probe", forbidden)
    rc, _, err = run_cli(capsys, "encode-dataset", tmp_path, "-o", tmp_path / "out", *argv)
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


# -- gen-train's buckets ------------------------------------------------------------------------------
class _Shapes(ClipDataset):
    """Clip i is the tensor [i]; ``groups`` are its buckets."""

    frames = 1

    def __init__(self, groups):
        self.groups = groups

    def __len__(self):
        return sum(len(g) for g in self.groups)

    def clip(self, index, generator=None):
        return torch.tensor([index])

    def buckets(self):
        return self.groups


def test_every_batch_comes_from_one_bucket_and_every_bucket_comes_each_round():
    groups = [[0, 4, 7, 9, 10], [1, 5], [2, 3, 6, 8]]
    data = _Shapes(groups)
    bucket_of = {i: b for b, g in enumerate(groups) for i in g}
    ranks = [StepBatches(data, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    round_length = 2 + 1 + 1  # ceil(5/4) + ceil(2/4) + ceil(4/4) steps
    visited = []
    for step in range(3 * round_length):
        indices = [i for s in ranks for i in (s._index(p) for p in s.batch_positions(step))]
        assert {bucket_of[i] for i in indices} == {ranks[0].bucket_of(step)}, (step, indices)
        visited.append(ranks[0].bucket_of(step))
    for r in range(3):
        assert sorted(visited[r * round_length : (r + 1) * round_length]) == [0, 0, 1, 2]
    assert len(set(tuple(visited[r * 4 : r * 4 + 4]) for r in range(3))) > 1  # seeded orders
    # each bucket walks permutations of itself: its first len(group) draws are every clip once
    stream = [ranks[0]._index(p) for step in range(40) for p in ranks[0].batch_positions(step)]
    assert set(stream) == set(range(11))
    # a pure function of (seed, step, rank): a fresh sampler (a resumed run) draws the same
    fresh = StepBatches(data, batch_size=2, seed=3, rank=1, world_size=2)
    later = [fresh._index(p) for p in fresh.batch_positions(9)]
    assert later == [ranks[1]._index(p) for p in ranks[1].batch_positions(9)]


def test_buckets_walk_independent_permutations():
    """Two buckets of one size must not walk in step (torch seeds with 32 bits only)."""
    s = StepBatches(_Shapes([list(range(6)), list(range(6, 12))]), batch_size=6, seed=0)
    walks = {0: [], 1: []}
    for step in range(16):
        indices = [s._index(p) for p in s.batch_positions(step)]
        walks[s.bucket_of(step)].append([i % 6 for i in indices])
    assert sorted(walks[0][0]) == list(range(6)) and walks[0] != walks[1]


def test_one_bucket_walks_permutations_of_the_whole_dataset():
    data = _Shapes([[0, 1, 2, 3, 4]])
    s = StepBatches(data, batch_size=2, seed=1)
    for p in range(20):  # epoch e of the positions is permutation e, seeded by (seed, e)
        g = torch.Generator().manual_seed(1 * 7919 + p // 5)
        assert s._index(p) == int(torch.randperm(5, generator=g)[p % 5])
    assert sorted(s._index(p) for p in range(5, 10)) == list(range(5))


def _toy(c=4, t=3, h=4, w=4, seed=0):
    return torch.randn(1, c, t, h, w, generator=torch.Generator().manual_seed(seed))


def test_latent_buckets_group_by_shape():
    root_manifest = {
        "config": latent_config().to_dict(),
        "architecture_hash": latent_config().architecture_hash(),
        "items": [
            {"source": s, "latent": s + ".safetensors", "status": st, "latent_shape": sh}
            for s, st, sh in [
                ("a.mp4", "ok", [1, 4, 3, 4, 6]),
                ("b.mp4", "ok", [1, 4, 5, 6, 4]),
                ("c.mp4", "error", None),
                ("d.mp4", "ok", [1, 4, 3, 4, 6]),
            ]
        ],
    }
    buckets = latent_buckets("x", root_manifest, frames=3, patch_size=2)
    assert [(b.shape, b.indices) for b in buckets] == [((3, 4, 6), (0, 2)), ((3, 6, 4), (1,))]
    cropped = latent_buckets("x", root_manifest, frames=2, patch_size=2, crop=(4, 4))
    assert [(b.shape, b.indices) for b in cropped] == [((2, 4, 4), (0, 1, 2))]


def test_unusable_latents_are_named_with_what_to_rerun(capsys, tmp_path, monkeypatch):
    import cdt_fast.generation.train as train

    config = latent_config()
    sources = ["odd.mp4", "wide.mp4", "ok.mp4", "short.mp4"]
    shapes = [(3, 4, 5), (3, 6, 8), (3, 4, 4), (1, 4, 4)]
    latents = [_toy(t=t, h=h, w=w, seed=i) for i, (t, h, w) in enumerate(shapes)]
    folder = write_latent_folder(tmp_path / "lat", latents, config, sources=sources)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input"] = "/data/videos"
    (folder / "manifest.json").write_text(json.dumps(manifest))

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the latents were checked")

    monkeypatch.setattr(train, "VideoDiT", no_model)
    run_dir = tmp_path / "run"
    rc, _, err = run_cli(capsys, "gen-train", folder, "--out", run_dir, "--frames", "3", "-q")
    assert rc == 2 and err.count("\n") == 1, err
    assert "2 of the 4 latents" in err
    assert "odd.mp4 (latent 4x5)" in err and "short.mp4 (1 latent frame)" in err
    assert "wide.mp4" not in err.split("To fix")[0]
    assert "--frames 1 fits every latent" in err
    # every video's size rounded to multiples of 16 pixels (32x40 to 32x32), commonest first
    assert "cdt-fast encode-dataset /data/videos -o NEW --crop 32x32,48x64" in err, err
    assert not run_dir.exists()

    manifest["items"][2]["latent_shape"][1] = 3
    manifest["items"][1]["architecture_hash"] = "0123456789abcdef"
    with pytest.raises(LatentShapeError) as err:
        latent_buckets(folder, manifest, frames=1, patch_size=1)
    text = str(err.value)
    assert "ok.mp4 (3 channels)" in text and "wide.mp4 (hash 0123456789abcdef)" in text
    assert "one --model" in text and "odd.mp4" not in text


def test_bucketed_training_resumes_bit_exactly(tmp_path):
    from cdt_fast.generation.train import GenTrainer, LatentClips
    from cdt_fast.train.distributed import Dist, params_digest

    from .test_generation_train import _config

    shapes = [(4, 4), (4, 6), (6, 4), (4, 6), (4, 4)]
    latents = [_toy(t=2, h=h, w=w, seed=i) for i, (h, w) in enumerate(shapes)]
    folder = write_latent_folder(tmp_path / "lat", latents, latent_config())
    data = LatentClips(folder, frames=2)
    assert [b.shape for b in data.shape_buckets] == [(2, 4, 4), (2, 4, 6), (2, 6, 4)]
    config = _config(4, frames=2, batch_size=2, ckpt_every=2)
    straight = GenTrainer(config, data, tmp_path / "a", progress=False, dist_info=Dist())
    straight.fit()
    first = GenTrainer(config, data, tmp_path / "b", progress=False, dist_info=Dist())
    first.fit(until=2)
    resumed = GenTrainer(
        config, data, tmp_path / "b", resume=True, progress=False, dist_info=Dist()
    )
    resumed.fit()
    assert params_digest(resumed.model) == params_digest(straight.model)


# -- the whole loop -------------------------------------------------------------------------------------
def test_loop_on_clips_of_three_aspect_ratios(capsys, tmp_path):
    """Clips of three aspect ratios -> encode-dataset --crop (demo tokenizer) -> gen-train in
    buckets -> generate at the commonest size."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, (h, w) in {
        "land.mp4": (36, 60),  # 5:3 landscape
        "land2.mp4": (30, 54),
        "port.mp4": (60, 36),
        "square.mp4": (40, 44),
    }.items():
        write_clip(videos / name, pattern(5, h, w, seed=h + w), Fraction(12))
    latents = tmp_path / "latents"
    rc, _, err = run_cli(
        capsys, "encode-dataset", videos, "-o", latents, "--crop", "32x48,48x32,32x32", "-q"
    )
    assert rc == 0, err
    manifest = json.loads((latents / "manifest.json").read_text())
    assert manifest["resize"] == {"mode": "crop", "sizes": [[32, 48], [48, 32], [32, 32]]}
    shapes = {e["source"]: e["latent_shape"][2:] for e in manifest["items"]}
    assert shapes == {
        "land.mp4": [2, 4, 6],
        "land2.mp4": [2, 4, 6],
        "port.mp4": [2, 6, 4],
        "square.mp4": [2, 4, 4],
    }
    run_dir = tmp_path / "run"
    argv = ["--steps", "3", "--frames", "2", "--batch-size", "2", "--device", "cpu", "-q"]
    rc, out, err = run_cli(capsys, "gen-train", latents, "--out", run_dir, *argv)
    assert rc == 0, err
    assert "3 latent size buckets: 4x6 (2 clips), 4x4 (1 clip), 6x4 (1 clip)" in out
    rc, out, err = run_cli(
        capsys, "generate", run_dir, "-o", tmp_path / "g.mp4", "--frames", "5", "--steps", "2"
    )
    assert rc == 0, err
    info = video_io.probe(tmp_path / "g.mp4")
    assert (info.frames, info.height, info.width) == (5, 32, 48) and "commonest" in out
    rc, _, err = run_cli(
        capsys, "generate", run_dir, "--save-latents", tmp_path / "p.safetensors", "--size",
        "48x32", "--frames", "5", "--steps", "1",
    )  # fmt: skip
    assert rc == 0, err
    from cdt_fast.latents import read_latent_metadata

    assert read_latent_metadata(tmp_path / "p.safetensors").shape[3:] == (6, 4)
    rc, _, err = run_cli(
        capsys, "encode-dataset", videos, "-o", latents, "--crop", "32x32", "-q"
    )  # the folder holds other crops: refused before any work
    assert rc == 2 and "--crop 32x48,48x32,32x32" in err, err
