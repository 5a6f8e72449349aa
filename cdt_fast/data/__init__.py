"""Clip datasets for training and evaluation: video folders (PyAV), image folders (T=1) and
synthetic moving patterns; plus the resumable per-step sampling the trainer uses."""

from .base import ClipDataset, check_clip_shape
from .sampling import StepBatches
from .synthetic import SyntheticVideos
from .transforms import resize_crop
from .video import ImageFolder, VideoFolder

__all__ = [
    "ClipDataset",
    "ImageFolder",
    "StepBatches",
    "SyntheticVideos",
    "VideoFolder",
    "check_clip_shape",
    "resize_crop",
    "open_dataset",
]


def open_dataset(source: str, frames: int, size, stride: int = 1, seed: int = 0) -> ClipDataset:
    """``"synthetic"`` or a directory: videos if it holds any, else images (then ``frames`` must
    be 1)."""
    if source == "synthetic":
        return SyntheticVideos(frames=frames, size=size, seed=seed)
    from pathlib import Path

    from .video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data must be 'synthetic' or an existing directory, got {source!r}"
        )
    names = [p.suffix.lower() for p in root.rglob("*") if p.is_file()]
    if any(s in VIDEO_SUFFIXES for s in names):
        return VideoFolder(root, frames=frames, size=size, stride=stride)
    if any(s in IMAGE_SUFFIXES for s in names):
        if frames != 1:
            raise ValueError(f"{source} holds images only: train with frames=1 (got {frames})")
        return ImageFolder(root, size=size)
    raise ValueError(
        f"{source} holds no videos ({', '.join(VIDEO_SUFFIXES)}) "
        f"and no images ({', '.join(IMAGE_SUFFIXES)})"
    )
