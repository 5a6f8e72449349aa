"""A video source opened as the clip a CDT encodes: probed, resized or centre-cropped, padded to
the model's grid and read lazily, front to back."""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from .. import video_io
from ..data.transforms import centre_offset, cover_size, nearest_aspect


def open_clip(
    source: str,
    config,
    size: Optional[str],
    fps: Optional[Fraction],
    on_frames: Optional[Callable[[int], None]] = None,
    allow_truncated: bool = False,
    start: int = 0,
    frames: Optional[int] = None,
    crop: Optional[Sequence[Tuple[int, int]]] = None,
):
    """Probe ``source`` and wrap frames [start, start+frames) of it as a
    :class:`~cdt_fast.video_io.PaddedClip` for ``config`` (a :class:`~cdt_fast.CDTConfig`).
    ``size``: "S" (shorter side) or "HxW", see :func:`cdt_fast.video_io.parse_size`; ``fps``: the
    frame rate of an image sequence. ``crop`` (instead of ``size``): (H, W) sizes; the frames are
    scaled to cover the one whose aspect ratio is nearest the video's and centre-cropped to it.
    ``on_frames(n)`` is called as frames are read. Returns (clip, info, (height, width) after
    ``size`` or ``crop``)."""
    info = video_io.probe(source, fps, allow_truncated=allow_truncated)
    if start >= info.frames:
        raise ValueError(f"--start {start} is past the end of {source} ({info.frames} frames)")
    count = info.frames - start if frames is None else min(frames, info.frames - start)
    if crop is None:
        height, width = video_io.parse_size(size, info.height, info.width)
        resize = (height, width)
    else:
        height, width = nearest_aspect(info.height, info.width, crop)
        resize = cover_size(info.height, info.width, (height, width))
    source_frames = video_io.iter_frames(
        source,
        None if resize == (info.height, info.width) else resize,
        expected=info.frames,
        allow_truncated=info.truncated,
        start=start,
        count=count,
    )
    if crop is not None:
        source_frames = _centre_crops(source_frames, resize, (height, width))
    clip = video_io.PaddedClip(
        source_frames, count, height, width, config.space_factor, config.time_factor, on_frames
    )
    return clip, info, (height, width)


def _centre_crops(frames: Iterator[np.ndarray], covered, size) -> Iterator[np.ndarray]:
    top, left = centre_offset(covered, size)
    for frame in frames:
        yield frame[top : top + size[0], left : left + size[1]]
