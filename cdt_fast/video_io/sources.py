"""What a source names: a video file, or an image sequence given as a directory or a glob."""

from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import List, Optional

from .errors import VideoError
from .formats import IMAGE_SUFFIXES


def is_glob(text: str) -> bool:
    """Whether a source is a glob pattern (of image frames) rather than a path."""
    return any(ch in text for ch in "*?[")


def image_files(source: str) -> Optional[List[str]]:
    """The frames of an image-sequence source (directory or glob), sorted; None for a file."""
    if is_glob(source):
        files = sorted(_glob.glob(source))
    elif os.path.isdir(source):
        files = sorted(str(p) for p in Path(source).iterdir())
    else:
        return None
    files = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(f)]
    if not files:
        raise VideoError(
            f"{source} holds no image frames ({', '.join(IMAGE_SUFFIXES)}): zero frames"
        )
    return files


def check_exists(source: str) -> None:
    """FileNotFoundError for a path that does not exist (a glob may match nothing yet)."""
    if not is_glob(source) and not os.path.exists(source):
        raise FileNotFoundError(f"input not found: {source}")
