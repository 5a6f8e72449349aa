"""Which containers and image formats are read and written, by file suffix."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Union

PathLike = Union[str, os.PathLike]

# Output suffix -> (container format, codec). The format is named explicitly because the file is
# first written under a temporary name that FFmpeg could not guess it from.
VIDEO_SUFFIXES = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
    ".avi": ("avi", "mpeg4"),
    ".mpg": ("mpeg", "mpeg2video"),
    ".mpeg": ("mpeg", "mpeg2video"),
}
# Every video container this package reads: what it writes, plus transport streams and DVD files.
READ_SUFFIXES = tuple(sorted(set(VIDEO_SUFFIXES) | {".ts", ".m2ts", ".mts", ".vob"}))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = Fraction(24)


def is_video_path(path: PathLike) -> bool:
    """Whether the name looks like a video container this package reads (by suffix)."""
    return Path(path).suffix.lower() in READ_SUFFIXES
