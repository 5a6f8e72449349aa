"""Decoding frames, one at a time, from a video file or an image sequence."""

from __future__ import annotations

import collections
from typing import Deque, Iterator, Optional, Tuple

import numpy as np

from .containers import avi_layout
from .errors import VideoError, one_line
from .formats import PathLike
from .pyav import ffmpeg_errors, holds_frame, load_av, open_video
from .sources import check_exists, image_files
from .timing import counts_slots, listed_slots, restore_repeats


def decode_image(path: str, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """One image file as uint8 [H, W, 3] RGB, resized to ``size`` = (H, W) if given."""
    av = load_av()
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                return _to_rgb(frame, size)
    except ffmpeg_errors() as err:
        raise VideoError(f"{path} is not a readable image ({one_line(err)})") from None
    raise VideoError(f"{path} holds no image")


def quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show ``frame`` upright, from its display matrix:
    phones store portrait video as landscape frames marked to be turned by 90 or 270 degrees,
    and players (and FFmpeg's command line) turn them. Read where PyAV exposes the matrix
    (``VideoFrame.rotation``, PyAV 15 and newer); 0 where it does not."""
    return round(getattr(frame, "rotation", 0) / 90) % 4


def display_turns(source: str) -> int:
    """:func:`quarter_turns` of the first frame of a video file (0 where none decodes)."""
    errors = ffmpeg_errors()
    container, stream = open_video(source)
    try:
        for frame in container.decode(stream):
            return quarter_turns(frame)
    except errors:
        pass
    finally:
        container.close()
    return 0


def _to_rgb(frame, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """``frame`` as uint8 RGB, turned upright, at ``size`` = (H, W) as shown if given."""
    turns = quarter_turns(frame)
    if size is not None:
        height, width = size if turns % 2 == 0 else size[::-1]  # the stored frame's sides
        if (frame.height, frame.width) != (height, width):
            frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def decode_rgb(source: str, size: Optional[Tuple[int, int]], lenient: bool) -> Iterator[np.ndarray]:
    """Frames of a video file, an AVI's repeat entries restored (see :mod:`.timing`);
    ``lenient`` (a truncated file) ends quietly at the first decoding error, single-threaded so
    that the count is the same on every pass, and restores no repeats after the last frame."""
    for image, _ in _decoded(source, size, lenient):
        yield image


def _avi_frames(container, stream, size) -> Iterator[Tuple[Optional[int], np.ndarray]]:
    """(period, frame) of an AVI's frames in the order shown. An AVI stores no presentation
    times, only a period per index entry: the n-th frame shown takes the n-th data chunk's
    period (decode timestamps rise with the index, and a decoder never shows more frames than it
    was given chunks), so the periods left out are the zero-length repeat entries. FFmpeg's own
    guess of a decoded frame's time is late by the decoder's delay with B-frames (H.264, MPEG-4
    ASP in AVI) and out of order, which would read as skipped periods."""
    periods: Deque[int] = collections.deque()
    for packet in container.demux(stream):
        if holds_frame(packet) and packet.dts is not None:
            periods.append(int(packet.dts))
        for frame in packet.decode():
            yield (periods.popleft() if periods else None), _to_rgb(frame, size)


def count_decodable(source: str) -> Tuple[int, int]:
    """(frames, of which repeats restored) of a truncated file, by decoding it leniently."""
    frames = repeats = 0
    for _, repeated in _decoded(source, None, lenient=True):
        frames += 1
        repeats += repeated
    return frames, repeats


def _decoded(
    source: str, size: Optional[Tuple[int, int]], lenient: bool
) -> Iterator[Tuple[np.ndarray, bool]]:
    """(frame, whether it repeats the one before as an AVI repeat entry) of a video file."""
    # Resolved before the first yield: a generator closed at interpreter exit can no longer
    # import anything.
    errors = ffmpeg_errors()
    container, stream = open_video(source)
    count = 0
    try:
        if not lenient:
            stream.thread_type = "AUTO"
        if counts_slots(container.format.name):
            slots = None if lenient else listed_slots(avi_layout(source), stream)
            decoded = _avi_frames(container, stream, size)
            frames = restore_repeats(decoded, int(stream.start_time or 0), slots)
        else:
            frames = ((_to_rgb(frame, size), False) for frame in container.decode(stream))
        for image, repeated in frames:
            count += 1
            yield image, repeated
    except errors as err:
        if not lenient:
            raise VideoError(
                f"{source}: decoding failed after {count} frames ({one_line(err)})"
            ) from None
    finally:
        container.close()


def iter_frames(
    source: PathLike,
    size: Optional[Tuple[int, int]] = None,
    expected: Optional[int] = None,
    allow_truncated: bool = False,
    start: int = 0,
    count: Optional[int] = None,
) -> Iterator[np.ndarray]:
    """Decode frames one at a time as uint8 [H, W, 3] RGB, resized to ``size`` = (H, W) if given;
    an AVI's repeat entries are frames (the one before, again), as :func:`probe` counts them.

    ``expected``: the frame count from :func:`probe`; a stream that ends early or runs long raises
    :class:`VideoError` (a truncated or corrupt file), so a clip is never silently shortened.
    ``allow_truncated``: the file was probed with it (decoding ends at the first error).
    ``start``/``count``: yield only frames [start, start+count) (all frames are still decoded up to
    there, and the whole file is still checked against ``expected``).
    """
    source = str(source)
    check_exists(source)
    files = image_files(source)
    stop = None if count is None else start + count
    seen = 0
    if files is not None:
        frames = (decode_image(path, size) for path in files)
    else:
        frames = decode_rgb(source, size, lenient=allow_truncated)
    shape = None
    for image in frames:
        if files is not None:
            if shape is not None and image.shape != shape:
                raise VideoError(
                    f"{files[seen]} is {image.shape[1]}x{image.shape[0]}, but the sequence "
                    f"started at {shape[1]}x{shape[0]}"
                )
            shape = image.shape
        if start <= seen:
            yield image
        seen += 1
        if stop is not None and seen >= stop:
            return  # a part of the clip: the rest is neither decoded nor checked
    if seen == 0:
        raise VideoError(f"{source} has zero decodable frames")
    if expected is not None and seen != expected:
        raise VideoError(
            f"{source}: decoded {seen} frames but the container lists {expected} "
            "(truncated or corrupt file)"
        )
