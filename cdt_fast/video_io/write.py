"""Writing frames to a video file or a PNG directory: output checks, frame rates and pixel
formats each codec accepts, and atomic writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np

from .errors import VideoError, one_line
from .formats import VIDEO_SUFFIXES, PathLike
from .pyav import ffmpeg_errors, load_av


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
    av = load_av()
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
                    except ffmpeg_errors() + (ValueError,) as err:
                        raise VideoError(f"unsupported codec {codec} ({one_line(err)})") from None
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
    from ..checkpoint import _current_umask

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
    av = load_av()
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
    from ..checkpoint import atomic_write

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
        except ffmpeg_errors() as err:  # FFmpeg's message names the temporary file
            raise VideoError(
                f"writing {path} failed ({one_line(err).replace(tmp, str(path))})"
            ) from None

    try:
        atomic_write(path, write)
    except OSError as err:  # creating the temporary file: name the output, not it
        raise VideoError(f"cannot write {path} ({err.strerror or one_line(err)})") from None
    return written[0]
