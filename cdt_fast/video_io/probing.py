"""What a video source holds (frame count, size, rate, codec, how its timing is kept), and
whether it is cut short."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional

from .containers import AviLayout, avi_layout, structure_cut
from .errors import VideoError, one_line
from .formats import DEFAULT_FPS, PathLike
from .pyav import ffmpeg_errors, holds_frame, open_video
from .read import count_decodable, decode_image, display_turns
from .sources import check_exists, image_files
from .timing import (
    GIVEN_RATE,
    REPEATS,
    TIMESTAMPS,
    counts_slots,
    listed_slots,
    restore_repeats,
    timestamp_rate,
)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` finds: frame count, size, frame rate and codec of a video source.

    ``frames`` includes ``repeats``, the frames an AVI lists as zero-length "repeat the previous
    frame" entries, restored so that the clip keeps its duration. ``timing`` says how the
    duration is kept (see :mod:`cdt_fast.video_io.timing`): ``"repeated frames"``,
    ``"timestamps"`` (the rate the timestamps give: the stream's, or a variable-rate stream's
    average) or ``"given rate"`` (an image sequence, or ``fps`` given). ``height`` and ``width``
    are the frames' as shown: ``rotation`` (0, 90, 180 or 270 degrees counter-clockwise) is the
    turn the file's display matrix asks for, which every frame read is given (a phone's portrait
    video is stored as landscape frames)."""

    path: str
    frames: int
    height: int
    width: int
    fps: Fraction
    codec: str
    truncated: bool = False
    repeats: int = 0
    timing: str = TIMESTAMPS
    rotation: int = 0

    @property
    def timing_text(self) -> str:
        """``timing`` for a report: ``"N repeated frames restored"``, else ``timing`` itself."""
        return f"{self.repeats} repeated frames restored" if self.timing == REPEATS else self.timing

    def describe(self) -> str:
        turned = f"; turned {self.rotation} degrees upright" if self.rotation else ""
        return (
            f"{self.frames} frames of {self.width}x{self.height} at {_fps_text(self.fps)} fps "
            f"({self.codec}; timing: {self.timing_text}{turned})"
        )


def _fps_text(fps: Fraction) -> str:
    return str(fps.numerator) if fps.denominator == 1 else f"{float(fps):.3f}"


def _stream_fps(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return DEFAULT_FPS


def probe(
    source: PathLike, fps: Optional[Fraction] = None, allow_truncated: bool = False
) -> VideoInfo:
    """Frame count, size, frame rate and codec of a video file or image sequence.

    Frames are counted by demuxing (no decoding), leaving out packets the container marks to be
    discarded and restoring an AVI's repeat entries; :func:`iter_frames` checks the count as it
    decodes. A file cut short, judged from its container's structure
    (:mod:`cdt_fast.video_io.containers`), raises :class:`VideoError` naming the frames listed
    and present, unless ``allow_truncated``: then the frames are counted by decoding them, and
    the count is what decodes. ``fps`` gives image sequences a rate (default 24) and overrides a
    file's.
    """
    source = str(source)
    check_exists(source)
    files = image_files(source)
    if files is None:
        return _probe_file(source, fps, allow_truncated)
    first = decode_image(files[0])
    rate = Fraction(fps) if fps else DEFAULT_FPS
    height, width = first.shape[:2]
    return VideoInfo(source, len(files), height, width, rate, "image sequence", timing=GIVEN_RATE)


def _probe_file(source: str, fps: Optional[Fraction], allow_truncated: bool) -> VideoInfo:
    container, stream = open_video(source)
    try:
        height, width = stream.codec_context.height, stream.codec_context.width
        codec = stream.codec_context.name
        nominal = Fraction(fps) if fps else _stream_fps(stream)
        scan = _scan_packets(source, container, stream)
        start = int(stream.start_time or 0)
        # an AVI's chunks are read once, for the periods it lists and for whether it is cut
        layout = avi_layout(source) if scan["slots"] is not None else None
        slots = None if layout is None else listed_slots(layout, stream)
    finally:
        container.close()
    if not height or not width:
        raise VideoError(f"{source}: its video stream has no frame size (corrupt header?)")
    turns = display_turns(source)
    if turns % 2:
        height, width = width, height
    why = _truncation(source, scan, layout)
    present = scan["frames"]
    if scan["slots"] is not None:  # an AVI: its repeat entries are frames
        periods = ((slot, None) for slot in scan["slots"])
        present = sum(1 for _ in restore_repeats(periods, start, None if why else slots))
    if why is None:
        count, repeats = present, present - scan["frames"]
    elif not allow_truncated:
        listed = scan["listed"] - scan["discarded"]
        of = f"of the {listed} it lists " if listed > 0 else ""
        raise VideoError(
            f"{source} is truncated: {present} frames {of}are present ({why}); "
            "--allow-truncated (allow_truncated=True) reads the frames that decode"
        )
    else:
        count, repeats = count_decodable(source)
    if count == 0:
        raise VideoError(f"{source} has zero frames")
    rate, timing = nominal, GIVEN_RATE if fps else TIMESTAMPS
    if repeats:
        timing = REPEATS
    elif not (fps or why or counts_slots(scan["format"])):
        rate = timestamp_rate(count, scan["span"], nominal)
    return VideoInfo(
        source, count, height, width, rate, codec, why is not None, repeats, timing, 90 * turns
    )


def _scan_packets(source: str, container, stream) -> dict:
    """Demux every stream once: the video frames that will decode, whether the data ends inside a
    packet, the seconds the video's timestamps span, and (an AVI) each frame's period number."""
    frames = packets = 0
    first = last = None
    tail = Fraction(0)
    slots: Optional[List[int]] = [] if counts_slots(container.format.name) else None
    last_corrupt = False
    error = None
    try:
        for packet in container.demux():
            if packet.size == 0 and packet.dts is None:
                continue  # the flush packet PyAV yields at the end of each stream
            last_corrupt = bool(packet.is_corrupt)
            if packet.stream_index != stream.index:
                continue
            packets += 1
            if not holds_frame(packet):
                continue
            frames += 1
            if slots is not None:
                slots.append(packet.dts)
            if packet.pts is not None and packet.time_base:
                at = packet.pts * packet.time_base
                first = at if first is None else min(first, at)
                last = at if last is None else max(last, at)
                # Durations follow decode order (an MP4's are decode-time steps): the last
                # packet's is the one that ends the stream.
                tail = (packet.duration or 0) * packet.time_base
    except ffmpeg_errors() as err:
        if packets == 0:
            raise VideoError(f"{source} is not a readable video ({one_line(err)})") from None
        error = one_line(err)
    return {
        "frames": frames,
        "packets": packets,
        "listed": int(stream.frames or 0),
        "discarded": packets - frames,
        "format": container.format.name,
        "span": None if first is None else Fraction(last + tail - first),
        "slots": slots,
        "last_corrupt": last_corrupt,
        "error": error,
    }


def _truncation(source: str, scan: dict, layout: Optional[AviLayout]) -> Optional[str]:
    """Why the file is cut short, or None if it is whole: its container's structure first (see
    :func:`~cdt_fast.video_io.containers.structure_cut`; ``layout``: an AVI's, already read),
    then the demuxer's own signs (reading stopped by an error, a last packet it marks
    incomplete)."""
    why = structure_cut(source, scan["format"]) if layout is None else layout.cut
    if why is not None:
        return why
    if scan["error"] is not None:
        return f"reading stopped: {scan['error']}"
    if scan["last_corrupt"]:
        return "the last packet is incomplete"
    return None
