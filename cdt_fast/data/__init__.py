"""Clip datasets for training and evaluation: video folders (PyAV), image folders (T=1) and
synthetic moving patterns; plus the resumable per-step sampling the trainer uses."""

from .base import ClipDataset, check_clip_shape
from .photos import ConcatClips, PhotoClips, load_image_folder, load_skimage_photos
from .sampling import StepBatches
from .synthetic import SyntheticVideos
from .transforms import resize_crop
from .video import ImageFolder, VideoFolder

__all__ = [
    "ClipDataset",
    "ConcatClips",
    "PhotoClips",
    "ImageFolder",
    "StepBatches",
    "SyntheticVideos",
    "VideoFolder",
    "check_clip_shape",
    "load_image_folder",
    "load_skimage_photos",
    "resize_crop",
    "open_dataset",
]


def open_dataset(source: str, frames: int, size, stride: int = 1, seed: int = 0) -> ClipDataset:
    """``"synthetic"``; ``"photos"`` (scikit-image's bundled photographs, training split, moved
    as video); ``"photos:DIR"`` (the images under DIR moved as video); a directory: videos if it
    holds any, else images (then ``frames`` must be 1). ``A+B`` joins sources (e.g.
    ``photos+synthetic``): clips are drawn from each in proportion to its length (100 000 clips
    each for the synthetic and photo sources)."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"source must be a non-empty str, got {source!r}")
    if "+" in source:
        parts = source.split("+")
        if any(not p for p in parts):
            raise ValueError(f"source {source!r} has an empty part around '+'")
        return ConcatClips([open_dataset(p, frames, size, stride, seed) for p in parts])
    if source == "synthetic":
        return SyntheticVideos(frames=frames, size=size, seed=seed)
    if source == "photos":
        return PhotoClips(load_skimage_photos(), frames=frames, size=size, seed=seed)
    if source.startswith("photos:"):
        return PhotoClips(
            load_image_folder(source[len("photos:") :]), frames=frames, size=size, seed=seed
        )
    from pathlib import Path

    from .video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(
            "data must be 'synthetic', 'photos', 'photos:DIR' or an existing directory, "
            f"got {source!r}"
        )
    names = [p.suffix.lower() for p in root.rglob("*") if p.is_file()]
    if any(s in VIDEO_SUFFIXES for s in names):
        return VideoFolder(root, frames=frames, size=size, stride=stride)
    if any(s in IMAGE_SUFFIXES for s in names):
        if frames != 1:
            raise ValueError(
                f"{source} holds images only: train with frames=1 (got {frames}), or pass "
                f"'photos:{source}' to move them as video"
            )
        return ImageFolder(root, size=size)
    raise ValueError(
        f"{source} holds no videos ({', '.join(VIDEO_SUFFIXES)}) "
        f"and no images ({', '.join(IMAGE_SUFFIXES)})"
    )
