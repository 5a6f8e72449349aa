"""Datasets: synthetic clips are deterministic, folders skip bad files with a count, per-step
sampling is a pure function of (seed, step, rank)."""

from __future__ import annotations

import warnings

import pytest
import torch

from cdt_fast.data import (
    ImageFolder,
    StepBatches,
    SyntheticVideos,
    VideoFolder,
    open_dataset,
    resize_crop,
)

from .media_helpers import write_corrupt, write_video

pytest.importorskip("av")


def test_synthetic_is_deterministic_and_in_range():
    a = SyntheticVideos(length=10, frames=5, size=(16, 24), seed=3)
    b = SyntheticVideos(length=10, frames=5, size=(16, 24), seed=3)
    clip = a.clip(4)
    assert clip.shape == (3, 5, 16, 24) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    assert torch.equal(clip, b.clip(4))
    assert not torch.equal(clip, a.clip(5))
    assert not torch.equal(
        clip, SyntheticVideos(length=10, frames=5, size=(16, 24), seed=4).clip(4)
    )
    # the content moves: consecutive frames differ
    assert (clip[:, 1:] - clip[:, :-1]).abs().mean() > 1e-3


@pytest.mark.parametrize("bad", [dict(frames=4), dict(size=12), dict(size=(16,)), dict(length=0)])
def test_synthetic_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        SyntheticVideos(**{"frames": 5, "size": 16, **bad})


def test_video_folder_skips_corrupt_and_short_with_a_count(tmp_path):
    write_video(tmp_path / "a.mp4", frames=12, seed=0)
    (tmp_path / "sub").mkdir()
    write_video(tmp_path / "sub" / "b.mp4", frames=10, seed=1)
    write_video(tmp_path / "short.mp4", frames=3)
    write_corrupt(tmp_path / "broken.mp4")
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 videos \(1 too short, 1 unreadable"):
        data = VideoFolder(tmp_path, frames=9, size=32)
    assert len(data) == 2
    assert sorted(p.name for p, _ in data.skipped) == ["broken.mp4", "short.mp4"]
    eval_clip = data.clip(0)
    assert eval_clip.shape == (3, 9, 32, 32)
    assert torch.equal(eval_clip, data.clip(0))  # no generator: first frames, centre crop
    g = torch.Generator().manual_seed(0)
    train_clip = data.clip(0, g)
    assert train_clip.shape == (3, 9, 32, 32)
    assert train_clip.min() >= -1 and train_clip.max() <= 1


def test_video_folder_stride_and_no_usable_video(tmp_path):
    write_video(tmp_path / "a.mp4", frames=12)
    with pytest.warns(UserWarning, match="too short"):
        with pytest.raises(ValueError, match="no usable video"):
            VideoFolder(tmp_path, frames=5, size=16, stride=3)  # needs 13 frames
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = VideoFolder(tmp_path, frames=5, size=16, stride=2)  # needs 9 frames
    assert data.clip(0).shape == (3, 5, 16, 16)
    with pytest.raises(FileNotFoundError):
        VideoFolder(tmp_path / "missing")


def test_image_folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    pil.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.warns(UserWarning, match="skipped 1 of 2 images"):
        data = ImageFolder(tmp_path, size=16)
    clip = data.clip(0)
    assert clip.shape == (3, 1, 16, 16)
    assert torch.allclose(clip[0], torch.ones(1, 16, 16), atol=1e-6)
    assert torch.allclose(clip[1:], -torch.ones(2, 1, 16, 16), atol=1e-6)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert isinstance(open_dataset(str(tmp_path), 1, 16), ImageFolder)
    with pytest.raises(ValueError, match="frames=1"):
        open_dataset(str(tmp_path), 5, 16)


def test_resize_crop_covers_then_crops():
    clip = torch.linspace(-1, 1, 20 * 40).reshape(1, 1, 20, 40).expand(3, 2, 20, 40)
    out = resize_crop(clip, (10, 10))  # scale 0.5 -> 10x20, centre crop columns 5..15
    assert out.shape == (3, 2, 10, 10)
    ref = torch.nn.functional.interpolate(
        clip.transpose(0, 1), size=(10, 20), mode="bicubic", antialias=True
    ).transpose(0, 1)[..., 5:15]
    assert torch.allclose(out, ref.clamp(-1, 1))


def test_step_batches_depend_only_on_seed_step_rank():
    data = SyntheticVideos(length=5, frames=1, size=8)
    r0 = StepBatches(data, batch_size=2, seed=1, rank=0, world_size=2)
    r1 = StepBatches(data, batch_size=2, seed=1, rank=1, world_size=2)
    assert r0.batch_positions(3) == [12, 13] and r1.batch_positions(3) == [14, 15]
    it = r0.batches(start_step=3)
    assert next(it) == [12, 13] and next(it) == [16, 17]  # rank 1 takes 14, 15
    # every position of an epoch visits each clip once
    assert sorted(r0._index(p) for p in range(5)) == list(range(5))
    assert torch.equal(r0[7], StepBatches(data, 2, seed=1)[7])
