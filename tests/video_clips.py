"""Clips and tiny models the CLI / video I/O tests generate (no network, no fixtures on disk)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

import cdt_fast

from .conftest import tiny_config


def pattern(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3]: smooth moving colour gradients (codec-friendly) plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    chans = [
        np.sin(0.21 * x + 0.3 * t + p) + np.cos(0.17 * y - 0.2 * t + 2 * p) for p in (0.0, 1.0, 2.0)
    ]
    img = (np.stack(chans, -1) + 2.0) * 63.0 + rng.normal(0, 2, (frames, height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_clip(
    path, frames: np.ndarray, fps=Fraction(24), codec: str = "libx264", fmt: str = None
) -> Path:
    """Encode frames with PyAV (yuv444p for odd H.264 sizes, rgb8 for gif)."""
    import av

    path = Path(path)
    height, width = frames.shape[1:3]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        if codec == "gif":
            stream.pix_fmt = "rgb8"
        elif codec == "libx264" and (height % 2 or width % 2):
            stream.pix_fmt = "yuv444p"
        else:
            stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_pngs(directory, frames: np.ndarray) -> Path:
    import av

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(frames):
        with av.open(str(directory / f"f{i:04d}.png"), "w", format="image2") as container:
            stream = container.add_stream("png")
            stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return directory


def read_pngs(directory) -> np.ndarray:
    from cdt_fast import video_io

    return np.stack(list(video_io.iter_frames(str(directory))))


def tiny_model_file(path, preset: str = "small", seed: int = 0, **overrides) -> Path:
    """A random tiny model saved with its config (loadable by ``--model PATH``)."""
    model = cdt_fast.randomize_(cdt_fast.CDT(tiny_config(preset, **overrides)), seed=seed)
    cdt_fast.save(model, path)
    return Path(path)
