"""``cdt-fast eval --images``: upstream's image protocol on photographs of odd sizes, saved
reconstructions, time per item; ``--save-recon`` for videos."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cdt_fast.cli import main
from cdt_fast.cli.eval import list_images, load_image

from .video_clips import tiny_model_file

PIL = pytest.importorskip("PIL.Image")

# (name, width, height): odd sizes, one already a multiple of 8, three formats
IMAGES = [("a.png", 37, 29), ("b.jpg", 64, 48), ("c.webp", 45, 51), ("d.jpeg", 23, 17)]


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth synthetic photograph (gradients plus a few soft blobs), uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([xx / width, yy / height, 0.5 + 0 * xx], -1)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 10)
        img += (
            rng.uniform(-0.4, 0.4, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None]
        )
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    photos = root / "photos"
    photos.mkdir()
    for i, (name, w, h) in enumerate(IMAGES):
        PIL.fromarray(_photo(w, h, i)).save(photos / name)
    (photos / "notes.txt").write_text("not an image")
    return {"photos": photos, "model": tiny_model_file(root / "tiny.safetensors", "small")}


def test_load_image_crops_top_left(folder):
    assert [p.name for p in list_images(folder["photos"])] == [n for n, _, _ in IMAGES]
    x, size = load_image(folder["photos"] / "a.png")
    assert size == (29, 37) and x.shape == (1, 3, 1, 24, 32)
    pixels = np.asarray(PIL.open(folder["photos"] / "a.png").convert("RGB"))[:24, :32]
    expect = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(x[0, :, 0], expect)


def test_eval_images_reports_and_saves(folder, tmp_path, capsys):
    out = tmp_path / "recon"
    rc = main(
        [
            "eval",
            "--images",
            str(folder["photos"]),
            "--model",
            str(folder["model"]),
            "--save-recon",
            str(out),
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "4 images at full resolution" in text
    psnr = float(re.search(r"\|\s+([0-9.]+) \|\s+[0-9.-]+ \|", text).group(1))
    assert 0 < psnr < 100
    assert re.search(r"time per image: [0-9.]+ s", text)
    for name, w, h in IMAGES:
        with PIL.open(out / name) as saved:
            assert saved.size == (w, h)  # resized back to the original, as upstream saves


def test_eval_images_tiled_and_bad_input(folder, tmp_path, capsys):
    rc = main(
        [
            "eval",
            "--images",
            str(folder["photos"]),
            "--model",
            str(folder["model"]),
            "--tile",
            "32",
            "--tile-overlap",
            "8",
            "--limit",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0 and "2 images" in capsys.readouterr().out
    rc = main(["eval", "--images", str(tmp_path), "--model", str(folder["model"])])
    assert rc != 0 and "no image" in capsys.readouterr().err
    rc = main(["eval", "--model", str(folder["model"])])
    assert rc != 0 and "--images" in capsys.readouterr().err


def test_eval_videos_save_recon(tmp_path, capsys, folder):
    from fractions import Fraction

    from .video_clips import pattern, write_clip

    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "clip.mp4", pattern(6, 16, 24), Fraction(12))
    out = tmp_path / "recon"
    argv = ["eval", str(videos), "--model", str(folder["model"]), "--frames", "5"]
    argv += ["--size", "16", "--save-recon", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert re.search(r"time per video: [0-9.]+ s", text)
    from cdt_fast import video_io

    info = video_io.probe(out / "clip.mp4")
    assert info.frames == 5 and (info.height, info.width) == (16, 16)
