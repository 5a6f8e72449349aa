"""What a video source holds (frame count, size, rate, codec), and whether it is cut short."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Tuple

from .containers import mpeg_stream_cut
from .errors import VideoError, one_line
from .formats import DEFAULT_FPS, PathLike
from .pyav import ffmpeg_errors, open_video
from .read import decode_image, decode_rgb
from .sources import check_exists, image_files


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` finds: frame count, size, frame rate and codec of a video source."""

    path: str
    frames: int
    height: int
    width: int
    fps: Fraction
    codec: str
    truncated: bool = False

    def describe(self) -> str:
        return (
            f"{self.frames} frames of {self.width}x{self.height} at {_fps_text(self.fps)} fps "
            f"({self.codec})"
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
    discarded; :func:`iter_frames` checks the count as it decodes. A truncated file (see the
    package docstring) raises :class:`VideoError` naming the frames expected and present, unless
    ``allow_truncated``: then the frames are counted by decoding them, and the count is what
    decodes. ``fps`` gives image sequences a rate (default 24) and overrides a file's.
    """
    source = str(source)
    check_exists(source)
    files = image_files(source)
    if files is not None:
        first = decode_image(files[0])
        return VideoInfo(
            source,
            len(files),
            first.shape[0],
            first.shape[1],
            Fraction(fps) if fps else DEFAULT_FPS,
            "image sequence",
        )
    container, stream = open_video(source)
    try:
        height, width = stream.codec_context.height, stream.codec_context.width
        codec = stream.codec_context.name
        rate = Fraction(fps) if fps else _stream_fps(stream)
        scan = _scan_packets(source, container, stream)
    finally:
        container.close()
    if not height or not width:
        raise VideoError(f"{source}: its video stream has no frame size (corrupt header?)")
    count = scan["frames"]
    cut = _truncation(source, scan, rate)
    if cut is not None:
        expected, why = cut
        if not allow_truncated:
            listed = f"of the {expected} it lists " if expected else ""
            raise VideoError(
                f"{source} is truncated: {count} frames {listed}are present ({why}); "
                "--allow-truncated (allow_truncated=True) reads the frames that decode"
            )
        count = sum(1 for _ in decode_rgb(source, None, lenient=True))
    if count == 0:
        raise VideoError(f"{source} has zero frames")
    return VideoInfo(source, count, height, width, rate, codec, truncated=cut is not None)


def _scan_packets(source: str, container, stream) -> dict:
    """Demux every stream once: the video frames that will decode, whether the data ends inside a
    packet, and where the last packet of any stream ends (seconds)."""
    frames = packets = 0
    end = None
    last_corrupt = False
    error = None
    try:
        for packet in container.demux():
            if packet.size == 0 and packet.dts is None:
                continue  # the flush packet PyAV yields at the end of each stream
            last_corrupt = bool(packet.is_corrupt)
            if packet.pts is not None and packet.time_base:
                stop = (packet.pts + (packet.duration or 0)) * packet.time_base
                end = stop if end is None else max(end, stop)
            if packet.stream_index != stream.index:
                continue
            packets += 1
            if packet.size and not packet.is_discard:
                frames += 1
    except ffmpeg_errors() as err:
        if packets == 0:
            raise VideoError(f"{source} is not a readable video ({one_line(err)})") from None
        error = one_line(err)
    start = container.start_time
    return {
        "frames": frames,
        "packets": packets,
        "listed": int(stream.frames or 0),
        "discarded": packets - frames,
        "format": container.format.name,
        "duration": None if container.duration is None else Fraction(container.duration, 10**6),
        "end": None if end is None else end - Fraction(start or 0, 10**6),
        "last_corrupt": last_corrupt,
        "error": error,
    }


def _truncation(source: str, scan: dict, rate: Fraction) -> Optional[Tuple[Optional[int], str]]:
    """(frames the container lists, or None where it lists none; why the file looks cut short),
    or None if it looks whole."""
    listed = scan["listed"]
    duration, end = scan["duration"], scan["end"]
    slack = Fraction(3, 2) / rate + Fraction(1, 500)
    short = bool(duration) and end is not None and end + slack < duration
    # The MP4/MOV sample index and the AVI header count every frame. FFmpeg leaves samples that an
    # MP4 edit list cuts off out of its index, so there the packets must also end early.
    if listed and scan["packets"] < listed and ("mov" not in scan["format"] or short):
        return listed - scan["discarded"], f"{scan['packets']} of {listed} packets in the file"
    if scan["error"] is not None:
        return None, f"reading stopped: {scan['error']}"
    if scan["last_corrupt"]:
        return None, "the last packet is incomplete"
    if "matroska" in scan["format"] and short:
        # Matroska/WebM write the segment's duration in the header once the file is complete;
        # PS/TS durations are estimated from the file itself, so they cannot show a cut.
        expected = scan["frames"] + max(1, round((duration - end) * rate))
        return expected, f"{float(end):.3f} s of the {float(duration):.3f} s it lists"
    fmt = scan["format"]
    if fmt in ("mpeg", "mpegvideo") or fmt.startswith("mpegts"):
        why = mpeg_stream_cut(source, transport=fmt.startswith("mpegts"))
        if why is not None:
            return None, why
    return None
