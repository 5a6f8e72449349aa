"""Small media files for the data / eval tests (written with PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: Path, frames: int, height: int = 40, width: int = 48, seed: int = 0) -> Path:
    """A short lossless-ish mp4 of moving colour gradients."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(3,))
    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            img = np.stack(
                [(base[c] + 3 * xs + 2 * ys + 5 * t * (c + 1)) % 256 for c in range(3)], -1
            )
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_corrupt(path: Path) -> Path:
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    return path
