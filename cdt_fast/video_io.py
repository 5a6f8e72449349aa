"""Video files in and out (PyAV), and the padding that fits any clip to CDT's shapes.

CDT wants ``1+4k`` frames whose height and width are multiples of 8. :class:`PaddedClip` presents a
video file as such a tensor, padded by repeating the last frame, row and column, and decodes frames
only when a span of it is read, front to back: an encoder that walks the clip chunk by chunk holds
one chunk of frames at a time, never the whole video. :func:`write_video` consumes frames as they are
produced and renames the finished file into place, so a failure leaves no partial output.

Containers: mp4/mov/mkv (H.264), webm (VP9), gif, avi (MPEG-4 part 2), mpg (MPEG-2 program
stream), and image sequences (a directory or a glob of PNG/JPEG frames) in and out (PNG sequences as
directories); MPEG transport streams (ts/m2ts/mts) and vob are read too. :data:`READ_SUFFIXES` is the
one list of readable containers that every command and dataset uses.

A file's frame count is what decodes: packets the container flags to be discarded (an MP4 edit list
trimming a B-frame stream) are not counted. A truncated file is recognised from the container's own
record of its length (the MP4/MOV sample index, the AVI header's frame count, the Matroska/WebM
duration, an incomplete last MPEG-PS pack or MPEG-TS packet) and refused unless the caller accepts
it (``allow_truncated``), when the frames that do decode are used.
"""

from __future__ import annotations

import glob as _glob
import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "VideoError",
    "VideoInfo",
    "probe",
    "iter_frames",
    "parse_size",
    "PaddedClip",
    "frames_to_tensor",
    "tensor_to_frames",
    "write_video",
    "is_video_path",
    "check_output_path",
    "output_size",
    "writable_fps",
    "VIDEO_SUFFIXES",
    "READ_SUFFIXES",
    "IMAGE_SUFFIXES",
]

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
# Every video container this module reads: what it writes, plus transport streams and DVD files.
READ_SUFFIXES = tuple(sorted(set(VIDEO_SUFFIXES) | {".ts", ".m2ts", ".mts", ".vob"}))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = Fraction(24)


class VideoError(ValueError):
    """A video that cannot be read or written; the message is one line for the user."""


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("video files need PyAV: pip install av (or cdt_fast[video])") from None
    return av


def _ffmpeg_errors() -> tuple:
    av = _av()
    return (av.error.FFmpegError, OSError, EOFError)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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


# -- sources ---------------------------------------------------------------------------------------
def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def is_video_path(path: PathLike) -> bool:
    """Whether the name looks like a video container this module reads (by suffix)."""
    return Path(path).suffix.lower() in READ_SUFFIXES


def _image_files(source: str) -> Optional[List[str]]:
    """The frames of an image-sequence source (directory or glob), sorted; None for a file."""
    if _is_glob(source):
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


def _check_exists(source: str) -> None:
    if not _is_glob(source) and not os.path.exists(source):
        raise FileNotFoundError(f"input not found: {source}")


def _open_video(path: str):
    av = _av()
    try:
        container = av.open(path)
    except _ffmpeg_errors() as err:
        raise VideoError(f"{path} is not a readable video ({_one_line(err)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or not getattr(stream.codec_context, "name", None):
        container.close()
        raise VideoError(f"{path}: unsupported codec (FFmpeg has no decoder for its video stream)")
    return container, stream


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
    discarded; :func:`iter_frames` checks the count as it decodes. A truncated file (see the module
    docstring) raises :class:`VideoError` naming the frames expected and present, unless
    ``allow_truncated``: then the frames are counted by decoding them, and the count is what
    decodes. ``fps`` gives image sequences a rate (default 24) and overrides a file's.
    """
    source = str(source)
    _check_exists(source)
    files = _image_files(source)
    if files is not None:
        first = _decode_image(files[0])
        return VideoInfo(
            source,
            len(files),
            first.shape[0],
            first.shape[1],
            Fraction(fps) if fps else DEFAULT_FPS,
            "image sequence",
        )
    container, stream = _open_video(source)
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
        count = sum(1 for _ in _decode_rgb(source, None, lenient=True))
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
    except _ffmpeg_errors() as err:
        if packets == 0:
            raise VideoError(f"{source} is not a readable video ({_one_line(err)})") from None
        error = _one_line(err)
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
        why = _mpeg_stream_cut(source, transport=fmt.startswith("mpegts"))
        if why is not None:
            return None, why
    return None


_PACK, _END = 0xBA, 0xB9


def _mpeg_stream_cut(path: str, transport: bool) -> Optional[str]:
    """Why an MPEG-PS/TS file ends inside a packet, or None. Neither container records its
    length, but each packet does: a transport stream is made of fixed-size packets, and every
    program-stream pack and PES packet states its size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if transport:
            head = f.read(4 * 192 + 4)
            for unit, offset in ((188, 0), (192, 4)):  # TS, and M2TS with its 4-byte timecode
                if all(
                    len(head) > i * unit + offset and head[i * unit + offset] == 0x47
                    for i in range(min(3, size // unit))
                ):
                    extra = size % unit
                    return f"ends {extra} bytes into a {unit}-byte packet" if extra else None
            return None
        f.seek(max(0, size - (1 << 18)))
        tail = f.read()
    at = tail.find(b"\x00\x00\x01\xba")
    while at >= 0:
        stop = _walk_program_stream(tail, at)
        if stop is not None:
            return (
                None
                if stop <= len(tail)
                else f"its last packet needs {stop - len(tail)} more bytes"
            )
        at = tail.find(b"\x00\x00\x01\xba", at + 1)
    return None


def _walk_program_stream(data: bytes, at: int) -> Optional[int]:
    """Follow MPEG-PS packs and PES packets from ``at``; the offset where the last one ends
    (beyond ``len(data)`` when it is cut), or None where the bytes are not a packet sequence."""
    n = len(data)
    while at < n:
        if at + 4 > n:
            return at + 4
        if data[at : at + 3] != b"\x00\x00\x01":
            return None
        code = data[at + 3]
        if code == _END:
            at += 4
        elif code == _PACK:
            if at + 5 > n:
                return at + 14
            if data[at + 4] >> 6 == 1:  # MPEG-2 pack header: 14 bytes and stuffing
                if at + 14 > n:
                    return at + 14
                at += 14 + (data[at + 13] & 7)
            elif data[at + 4] >> 4 == 2:  # MPEG-1 pack header
                at += 12
            else:
                return None
        elif code >= 0xBB:  # system header or a PES packet: 6 bytes and the stated length
            if at + 6 > n:
                return at + 6
            at += 6 + int.from_bytes(data[at + 4 : at + 6], "big")
        else:
            return None
    return at


def _decode_image(path: str, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    av = _av()
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                return _to_rgb(frame, size)
    except _ffmpeg_errors() as err:
        raise VideoError(f"{path} is not a readable image ({_one_line(err)})") from None
    raise VideoError(f"{path} holds no image")


def _to_rgb(frame, size: Optional[Tuple[int, int]]) -> np.ndarray:
    if size is not None and (frame.height, frame.width) != tuple(size):
        frame = frame.reformat(width=size[1], height=size[0], format="rgb24", interpolation="AREA")
    return frame.to_ndarray(format="rgb24")


def _decode_rgb(
    source: str, size: Optional[Tuple[int, int]], lenient: bool
) -> Iterator[np.ndarray]:
    """Frames of a video file; ``lenient`` (a truncated file) ends quietly at the first decoding
    error, single-threaded so that the count is the same on every pass."""
    # Resolved before the first yield: a generator closed at interpreter exit can no longer
    # import anything.
    errors = _ffmpeg_errors()
    container, stream = _open_video(source)
    count = 0
    try:
        if not lenient:
            stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            count += 1
            yield _to_rgb(frame, size)
    except errors as err:
        if not lenient:
            raise VideoError(
                f"{source}: decoding failed after {count} frames ({_one_line(err)})"
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
    """Decode frames one at a time as uint8 [H, W, 3] RGB, resized to ``size`` = (H, W) if given.

    ``expected``: the frame count from :func:`probe`; a stream that ends early or runs long raises
    :class:`VideoError` (a truncated or corrupt file), so a clip is never silently shortened.
    ``allow_truncated``: the file was probed with it (decoding ends at the first error).
    ``start``/``count``: yield only frames [start, start+count) (all frames are still decoded up to
    there, and the whole file is still checked against ``expected``).
    """
    source = str(source)
    _check_exists(source)
    files = _image_files(source)
    stop = None if count is None else start + count
    seen = 0
    if files is not None:
        frames = (_decode_image(path, size) for path in files)
    else:
        frames = _decode_rgb(source, size, lenient=allow_truncated)
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


def parse_size(text: Optional[str], height: int, width: int) -> Tuple[int, int]:
    """``--size``: None keeps (height, width); ``"S"`` scales the shorter side to S keeping the
    aspect ratio, both sides rounded to even numbers (4:2:0 video needs them); ``"HxW"`` is
    exact. Raises ValueError naming ``--size`` for anything else, before any frame is read."""
    if text is None:
        return height, width
    h, w = check_size(text)
    if w == 0:  # "S"
        scale = h / min(height, width)
        h, w = (max(2 * round(side * scale / 2), 2) for side in (height, width))
    return h, w


def check_size(text: str) -> Tuple[int, int]:
    """Validate a ``--size`` text alone: (H, W) for ``"HxW"``, (S, 0) for ``"S"``."""
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"--size must be an int (shorter side) or HxW, got {text!r}")
    if min(parts) < 1:
        raise ValueError(f"--size must be positive, got {text!r}")
    return (parts[0], 0) if len(parts) == 1 else (parts[0], parts[1])


# -- tensors ---------------------------------------------------------------------------------------
def frames_to_tensor(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [N, h, w, 3] -> float32 [1, 3, N, height, width] in [-1, 1], padded at the bottom and
    right by repeating the last row and column."""
    import torch

    n, h, w, _ = frames.shape
    if (h, w) != (height, width):
        frames = np.pad(frames, ((0, 0), (0, height - h), (0, width - w), (0, 0)), mode="edge")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
    return x.float().div_(127.5).sub_(1.0)


def tensor_to_frames(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """float [1, 3, N, H, W] in [-1, 1] -> uint8 [N, height, width, 3], cropped at the top left."""
    import torch

    x = x[0, :, :, :height, :width].detach().float().cpu()
    x = x.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


class PaddedClip:
    """A video as a lazily-read tensor of shape [1, 3, 1+4k, H8, W8] in [-1, 1].

    Frames are padded to ``1 + time_factor*k`` by repeating the last frame and to multiples of
    ``space_factor`` by repeating the last row/column. Indexing ``clip[:, :, a:b]`` decodes frames
    [a, b) and must proceed front to back (``a`` = the previous ``b``): that is how chunked encoders
    walk a clip. ``on_frames(n)`` is called with each count of real frames read (progress bars).
    """

    def __init__(
        self,
        frames: Iterable[np.ndarray],
        count: int,
        height: int,
        width: int,
        space_factor: int = 8,
        time_factor: int = 4,
        on_frames: Optional[Callable[[int], None]] = None,
    ):
        if count < 1:
            raise VideoError("a clip needs at least one frame")
        self.frames, self.height, self.width = count, height, width
        padded_t = 1 + -(-(count - 1) // time_factor) * time_factor
        self.padded = (
            padded_t,
            -(-height // space_factor) * space_factor,
            -(-width // space_factor) * space_factor,
        )
        self._source = iter(frames)
        self._next = 0
        self._last: Optional[np.ndarray] = None
        self._on_frames = on_frames

    @property
    def shape(self) -> Tuple[int, int, int, int, int]:
        return (1, 3) + self.padded

    @property
    def padding(self) -> dict:
        """Frames added at the end, rows at the bottom, columns at the right."""
        return {
            "frames": self.padded[0] - self.frames,
            "bottom": self.padded[1] - self.height,
            "right": self.padded[2] - self.width,
        }

    def __len__(self) -> int:
        return 1

    def _read(self, n: int) -> np.ndarray:
        out = []
        for _ in range(n):
            if self._next < self.frames:
                frame = next(self._source, None)
                if frame is None:
                    raise VideoError(f"the video ended after {self._next} of {self.frames} frames")
                if frame.shape[:2] != (self.height, self.width):
                    raise VideoError(
                        f"frame {self._next} is {frame.shape[1]}x{frame.shape[0]}, "
                        f"expected {self.width}x{self.height}"
                    )
                self._last = frame
                if self._on_frames is not None:
                    self._on_frames(1)
            out.append(self._last)
            self._next += 1
        return np.stack(out)

    def __getitem__(self, index) -> torch.Tensor:
        if not (
            isinstance(index, tuple)
            and len(index) == 3
            and all(i == slice(None) for i in index[:2])
            and isinstance(index[2], slice)
        ):
            raise TypeError("PaddedClip supports only clip[:, :, start:stop]")
        start, stop, step = index[2].indices(self.padded[0])
        if step != 1 or start != self._next:
            raise ValueError(
                f"PaddedClip is read front to back: next frame is {self._next}, "
                f"asked for [{start}:{stop}]"
            )
        return frames_to_tensor(self._read(stop - start), self.padded[1], self.padded[2])

    def read_all(self) -> torch.Tensor:
        """The whole padded clip as one tensor (for encoders that take no chunks)."""
        return self[:, :, self._next : self.padded[0]]

    def finish(self) -> None:
        """Drain the source so that its frame-count check runs."""
        for _ in self._source:
            raise VideoError(
                f"the video has more than the {self.frames} frames its container lists"
            )


# -- writing ---------------------------------------------------------------------------------------
def _output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix == "" or str(path).endswith(os.sep):
        return "images"
    raise VideoError(
        f"unsupported output format {suffix!r} for {path}: use one of "
        f"{', '.join(sorted(VIDEO_SUFFIXES))}, or a directory for PNG frames"
    )


def check_output_path(path: PathLike) -> None:
    """Fail before any work if ``path`` cannot take a video: an unknown suffix, a non-empty
    directory for PNG frames, a directory where a file goes, or a location this process cannot
    write to."""
    path = Path(path)
    kind = _output_kind(path)
    if kind == "images" and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise VideoError(
            f"{path} exists and is not an empty directory; PNG frames need a new or empty directory"
        )
    if kind == "video" and path.is_dir():
        raise VideoError(f"{path} is a directory")
    check_writable(path)


def check_writable(path: PathLike) -> None:
    """Fail if ``path`` could not be created: its nearest existing ancestor must be a directory
    this process may write to (the output is written beside its final name, then renamed)."""
    path = Path(os.path.abspath(path))
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise VideoError(f"cannot write {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VideoError(f"cannot write {path}: {parent} is not writable")


# Frame rates MPEG-1/2 video can signal: a base rate times (n+1)/(d+1), n < 4, d < 32.
_MPEG2_BASE_RATES = tuple(
    Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30", "50", "60000/1001", "60")
)
_MPEG2_RATES = tuple(
    sorted(
        {b * Fraction(n + 1, d + 1) for b in _MPEG2_BASE_RATES for n in range(4) for d in range(32)}
    )
)
_COMMON_RATES = tuple(Fraction(k) for k in range(1, 241)) + tuple(
    Fraction(k * 1000, 1001) for k in (24, 30, 48, 60, 120, 240)
)


def writable_fps(codec: str, fps: Fraction) -> Fraction:
    """The frame rate ``codec`` will accept nearest to ``fps``.

    A rate within 0.01 % of a whole number or an NTSC rate becomes that rate (a container's
    1000000/66667 is 15 fps); MPEG-4 part 2 stores the rate's numerator in 16 bits, MPEG-1/2
    video has a fixed set of rates, and GIF counts in hundredths of a second."""
    fps = Fraction(fps)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    nearest = min(_COMMON_RATES, key=lambda r: abs(r - fps))
    if abs(nearest - fps) <= fps * Fraction(1, 10000):
        fps = nearest
    if codec in ("mpeg2video", "mpeg1video"):
        return min(_MPEG2_RATES, key=lambda r: (abs(r - fps), r.denominator))
    if codec == "gif":
        return Fraction(100, max(1, round(100 / fps)))
    if codec == "mpeg4" and fps.numerator > 65535:
        candidates = [fps.limit_denominator(d) for d in (1001, 1000, 100, 10, 1)]
        return min((r for r in candidates if 0 < r.numerator <= 65535), key=lambda r: abs(r - fps))
    return fps


def output_size(
    path: PathLike, height: int, width: int, pix_fmt: str = "yuv420p"
) -> Tuple[int, int]:
    """The frame size written to ``path`` for frames of ``height`` x ``width``: 4:2:0 video needs
    even sides, so an odd side loses its last row or column; PNG frames, GIF and ``yuv444p`` keep
    the size."""
    path = Path(path)
    if _output_kind(path) == "images" or pix_fmt != "yuv420p":
        return height, width
    codec = VIDEO_SUFFIXES[path.suffix.lower()][1]
    if codec == "gif":
        return height, width
    return max(height - height % 2, 2), max(width - width % 2, 2)


PIXEL_FORMATS = ("yuv420p", "yuv444p")


def _pixel_format(codec: str, height: int, width: int, pix_fmt: str = "yuv420p") -> str:
    if codec == "gif":
        return "rgb8"
    if pix_fmt == "yuv444p" and codec in ("libx264", "libvpx-vp9"):
        return "yuv444p"
    if height % 2 or width % 2:
        raise VideoError(
            f"{codec} with 4:2:0 colour needs even sides, got {width}x{height} "
            "(crop to output_size(), or write yuv444p H.264)"
        )
    return "yuv420p"


def _codec_options(codec: str, crf: Optional[int]) -> dict:
    if codec == "libx264":
        return {"crf": str(17 if crf is None else crf), "preset": "medium"}
    if codec == "libvpx-vp9":
        return {"crf": str(30 if crf is None else crf), "b": "0"}
    if codec in ("mpeg4", "mpeg2video") and crf is not None:
        return {"qscale": str(max(1, min(31, crf)))}
    return {}


def _write_container(
    tmp: str,
    fmt: str,
    codec: str,
    chunks: Iterable[np.ndarray],
    fps: Fraction,
    crf: Optional[int],
    pix_fmt: str,
) -> int:
    av = _av()
    count = 0
    with av.open(tmp, "w", format=fmt) as container:
        stream = None
        for frames in chunks:
            for image in frames:
                if stream is None:
                    height, width = image.shape[:2]
                    try:
                        stream = container.add_stream(
                            codec, rate=writable_fps(codec, fps), options=_codec_options(codec, crf)
                        )
                    except _ffmpeg_errors() + (ValueError,) as err:
                        raise VideoError(f"unsupported codec {codec} ({_one_line(err)})") from None
                    stream.width, stream.height = width, height
                    stream.pix_fmt = _pixel_format(codec, height, width, pix_fmt)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
                count += 1
        if stream is None:
            raise VideoError("nothing to write: zero frames")
        for packet in stream.encode():
            container.mux(packet)
    return count


def _write_images(target: Path, chunks: Iterable[np.ndarray]) -> int:
    from .checkpoint import _current_umask

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent)))
    count = 0
    try:
        # mkdtemp makes the folder private (0700); the finished one gets mkdir's permissions.
        os.chmod(tmp, 0o777 & ~_current_umask())
        for frames in chunks:
            for image in frames:
                _save_png(image, tmp / f"{count:06d}.png")
                count += 1
        if count == 0:
            raise VideoError("nothing to write: zero frames")
        if target.is_dir():
            target.rmdir()  # empty, checked by check_output_path
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


def _save_png(image: np.ndarray, path: Path) -> None:
    av = _av()
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "rgb24"
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video(
    path: PathLike,
    chunks: Iterable[np.ndarray],
    fps: Fraction,
    crf: Optional[int] = None,
    pix_fmt: str = "yuv420p",
) -> int:
    """Write uint8 [N, H, W, 3] frame chunks, consumed as they are produced, to ``path``: a video
    file (format by suffix) or a directory of PNG frames. Atomic: on any failure, including one
    raised by the producer of ``chunks``, nothing is left at ``path``. Returns the frame count.

    ``fps`` is adjusted to what the codec accepts (:func:`writable_fps`). ``pix_fmt``: 4:2:0
    (``yuv420p``, what every player takes) crops an odd side to even (:func:`output_size`);
    ``yuv444p`` keeps the size exactly (H.264 and VP9)."""
    from .checkpoint import atomic_write

    if pix_fmt not in PIXEL_FORMATS:
        raise ValueError(f"pix_fmt must be one of {', '.join(PIXEL_FORMATS)}, got {pix_fmt!r}")
    path = Path(path)
    check_output_path(path)
    if _output_kind(path) == "images":
        return _write_images(path, chunks)
    fmt, codec = VIDEO_SUFFIXES[path.suffix.lower()]
    written = []

    def write(tmp: str) -> None:
        first = iter(chunks)
        size = None

        def sized() -> Iterator[np.ndarray]:
            nonlocal size
            for frames in first:
                if size is None and len(frames):
                    size = output_size(path, frames.shape[1], frames.shape[2], pix_fmt)
                yield frames[:, : size[0], : size[1]] if size is not None else frames

        try:
            written.append(_write_container(tmp, fmt, codec, sized(), Fraction(fps), crf, pix_fmt))
        except _ffmpeg_errors() as err:  # FFmpeg's message names the temporary file
            raise VideoError(
                f"writing {path} failed ({_one_line(err).replace(tmp, str(path))})"
            ) from None

    try:
        atomic_write(path, write)
    except OSError as err:  # creating the temporary file: name the output, not it
        raise VideoError(f"cannot write {path} ({err.strerror or _one_line(err)})") from None
    return written[0]
