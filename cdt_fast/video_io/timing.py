"""How a clip keeps its duration: an AVI's repeat entries restored as frames, or the rate its
timestamps give.

An AVI has no timestamps: each index entry of a stream is one frame period, and a zero-length
entry shows the previous frame again (capture programs and MJPEG/Cinepak encoders write them for
still stretches, FFmpeg for duplicated frames). FFmpeg's demuxer skips them, leaving a gap in
the frames' timestamps; :func:`restore_repeats` fills each gap with the frame before it, so the
clip has as many frames as the AVI lists and its duration at the AVI's rate. Other containers
carry each frame's timestamp: the frames are those that decode, at the stream's rate, or at
their average rate (:func:`timestamp_rate`) where the timestamps span a different duration (a
variable frame rate).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Iterator, Optional, Tuple, TypeVar

from .containers import AviLayout

T = TypeVar("T")

# How a clip's duration is kept (VideoInfo.timing).
REPEATS = "repeated frames"
TIMESTAMPS = "timestamps"
GIVEN_RATE = "given rate"


def counts_slots(format_name: str) -> bool:
    """Whether the container counts frame periods rather than time (AVI)."""
    return format_name == "avi"


def listed_slots(layout: AviLayout, stream) -> Optional[int]:
    """The frame periods an AVI (its chunks' ``layout``) lists for ``stream``: the video entries
    of its idx1 index, or its header's count where the index does not cover the file (no idx1,
    OpenDML)."""
    entries = layout.index_entries.get(stream.index)
    return entries if entries else (int(stream.frames or 0) or None)


def restore_repeats(
    items: Iterable[Tuple[Optional[int], T]], start: int = 0, slots: Optional[int] = None
) -> Iterator[Tuple[T, bool]]:
    """``(item, repeated)`` for each frame period: ``items`` are (slot, item) in presentation
    order, a slot being a frame's timestamp in periods (None: the next one). A slot skipped
    shows the item before it again; slots skipped before the first item (from ``start``) show
    the first; up to ``slots`` periods in all, the last item fills the periods after it."""
    following = start
    previous: Optional[T] = None
    seen = False
    for slot, item in items:
        gap = 0 if slot is None else max(0, slot - following)
        for _ in range(gap):
            yield (previous if seen else item), True
        yield item, False
        previous, seen = item, True
        following = max(following, following if slot is None else slot) + 1
    if seen and slots is not None:
        for _ in range(start + slots - following):
            yield previous, True


def timestamp_rate(frames: int, span: Optional[Fraction], nominal: Fraction) -> Fraction:
    """The stream's ``nominal`` rate where ``frames`` at it last as long as the timestamps
    ``span`` (seconds, first frame's start to last frame's end) within one and a half frame
    periods; else the frames' average rate over the span (a variable frame rate)."""
    if span is None or span <= 0 or frames < 2:
        return nominal
    if abs(span - frames / nominal) <= Fraction(3, 2) / nominal:
        return nominal
    return (frames / span).limit_denominator(1001)
