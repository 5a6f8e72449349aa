"""Video and image folders decoded with PyAV, skipping files that cannot serve a clip."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .. import video_io as _video_io
from .base import ClipDataset, check_clip_shape
from .transforms import resize_crop, to_unit_range

__all__ = ["VideoFolder", "ImageFolder", "VIDEO_SUFFIXES", "IMAGE_SUFFIXES"]

# The containers cdt_fast.video_io reads: one list for every command and dataset.
VIDEO_SUFFIXES = _video_io.READ_SUFFIXES
IMAGE_SUFFIXES = _video_io.IMAGE_SUFFIXES
PathLike = Union[str, os.PathLike]


def _import_av():
    try:
        import av
    except ImportError:
        raise ImportError(
            "reading videos and images needs PyAV: pip install av (or pip install cdt_fast[video])"
        ) from None
    return av


def _list_files(root: PathLike, suffixes: Sequence[str], name: str) -> List[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name} must be an existing directory, got {str(root)!r}")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in suffixes and p.is_file() and not p.name.startswith(".")
    )
    return files


def count_frames(path: Path) -> int:
    """Frames of the first video stream that decode, as :func:`cdt_fast.video_io.probe` counts
    them (a truncated file raises)."""
    _import_av()
    return _video_io.probe(path).frames


def read_frames(path: Path, indices: Sequence[int]) -> torch.Tensor:
    """Decode the frames at sorted ``indices`` (repeats allowed): uint8 [len(indices), H, W, 3].
    Frames are numbered as :func:`count_frames` counts them (an AVI's repeat entries included)."""
    _import_av()
    wanted = Counter(indices)
    last = max(indices)
    out = []
    for i, frame in enumerate(_video_io.iter_frames(path)):
        if i in wanted:
            out.extend([torch.from_numpy(frame)] * wanted[i])
        if i >= last:
            break
    if len(out) != len(indices):
        raise ValueError(f"decoded {len(out)} of the {len(indices)} frames asked for")
    return torch.stack(out)


class VideoFolder(ClipDataset):
    """Every video under ``root`` (recursively) long enough for one clip of ``frames`` frames
    taken every ``stride`` frames.

    ``clip(i, generator)``: with a generator, a random start and a random crop (training); without,
    the first frames and a centre crop (evaluation, as upstream's ``RealVideoDataset``).
    Unreadable and too-short videos are skipped when the folder is scanned, with one warning that
    counts them (``skipped`` lists them with the reason); a video that fails to decode later is
    replaced by the next one and counted in ``failures``.
    """

    def __init__(
        self,
        root: PathLike,
        frames: int = 17,
        size=256,
        stride: int = 1,
        suffixes: Sequence[str] = VIDEO_SUFFIXES,
    ):
        self.height, self.width = check_clip_shape(frames, size)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.frames, self.stride = frames, stride
        self.span = (frames - 1) * stride + 1
        self.skipped: List[Tuple[Path, str]] = []
        self.failures = 0
        self.videos: List[Tuple[Path, int]] = []
        for path in _list_files(root, suffixes, "root"):
            try:
                total = count_frames(path)
            except Exception as err:  # PyAV raises many error types for broken files
                self.skipped.append((path, f"unreadable ({type(err).__name__}: {err})"))
                continue
            if total < self.span:
                self.skipped.append((path, f"too short ({total} frames < {self.span})"))
                continue
            self.videos.append((path, total))
        if self.skipped:
            reasons = Counter(reason.split(" (")[0] for _, reason in self.skipped)
            detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
            warnings.warn(
                f"VideoFolder({str(root)!r}): skipped {len(self.skipped)} of "
                f"{len(self.skipped) + len(self.videos)} videos ({detail}; a clip needs "
                f"{self.span} frames)",
                stacklevel=2,
            )
        if not self.videos:
            raise ValueError(
                f"no usable video in {str(root)!r} (needs files ending in "
                f"{', '.join(suffixes)} with at least {self.span} frames)"
            )

    def __len__(self) -> int:
        return len(self.videos)

    def clip(self, index: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        for attempt in range(len(self.videos)):
            path, total = self.videos[(index + attempt) % len(self.videos)]
            if generator is None:
                start = 0
            else:
                start = int(torch.randint(0, total - self.span + 1, (1,), generator=generator))
            indices = list(range(start, start + self.span, self.stride))
            try:
                frames = read_frames(path, indices)
            except Exception as err:
                self.failures += 1
                warnings.warn(
                    f"VideoFolder: could not decode {path} ({err}); using the next "
                    f"video ({self.failures} failures so far)",
                    stacklevel=2,
                )
                continue
            return resize_crop(to_unit_range(frames), (self.height, self.width), generator)
        raise ValueError("no video in the folder could be decoded")


class ImageFolder(ClipDataset):
    """Every image under ``root`` as a one-frame clip [3, 1, H, W] (resized to cover, cropped).
    Unreadable images are skipped with one warning that counts them."""

    frames = 1

    def __init__(self, root: PathLike, size=256, suffixes: Sequence[str] = IMAGE_SUFFIXES):
        self.height, self.width = check_clip_shape(1, size)
        self.skipped: List[Tuple[Path, str]] = []
        self.images: List[Path] = []
        for path in _list_files(root, suffixes, "root"):
            try:
                count_frames(path)
            except Exception as err:
                self.skipped.append((path, f"unreadable ({type(err).__name__}: {err})"))
                continue
            self.images.append(path)
        if self.skipped:
            warnings.warn(
                f"ImageFolder({str(root)!r}): skipped {len(self.skipped)} of "
                f"{len(self.skipped) + len(self.images)} images (unreadable)",
                stacklevel=2,
            )
        if not self.images:
            raise ValueError(f"no readable image in {str(root)!r}")

    def __len__(self) -> int:
        return len(self.images)

    def clip(self, index: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        frames = read_frames(self.images[index], [0])
        return resize_crop(to_unit_range(frames), (self.height, self.width), generator)
