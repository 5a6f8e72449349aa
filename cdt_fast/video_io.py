"""Video files in and out (PyAV), and the padding that fits any clip to CDT's shapes.

CDT wants ``1+4k`` frames whose height and width are multiples of 8. :class:`PaddedClip` presents a
video file as such a tensor, padded by repeating the last frame, row and column, and decodes frames
only when a span of it is read, front to back: an encoder that walks the clip chunk by chunk holds
one chunk of frames at a time, never the whole video. :func:`write_video` consumes frames as they are
produced and renames the finished file into place, so a failure leaves no partial output.

Containers: mp4/mov/mkv (H.264), webm (VP9), gif, avi (MPEG-4 part 2), and image sequences (a
directory or a glob of PNG/JPEG frames) in; the same, with PNG sequences as directories, out.
"""

from __future__ import annotations

import glob as _glob
import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from .checkpoint import atomic_write

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
    "VIDEO_SUFFIXES",
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
}
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
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


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


def probe(source: PathLike, fps: Optional[Fraction] = None) -> VideoInfo:
    """Frame count, size, frame rate and codec of a video file or image sequence.

    Frames are counted by demuxing (no decoding); :func:`iter_frames` checks the count as it
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
        count = sum(1 for packet in container.demux(stream) if packet.size)
        height, width = stream.codec_context.height, stream.codec_context.width
        codec = stream.codec_context.name
        rate = Fraction(fps) if fps else _stream_fps(stream)
    except _ffmpeg_errors() as err:
        raise VideoError(f"{source} is not a readable video ({_one_line(err)})") from None
    finally:
        container.close()
    if count == 0:
        raise VideoError(f"{source} has zero frames")
    if not height or not width:
        raise VideoError(f"{source}: its video stream has no frame size (corrupt header?)")
    return VideoInfo(source, count, height, width, rate, codec)


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


def iter_frames(
    source: PathLike, size: Optional[Tuple[int, int]] = None, expected: Optional[int] = None
) -> Iterator[np.ndarray]:
    """Decode frames one at a time as uint8 [H, W, 3] RGB, resized to ``size`` = (H, W) if given.

    ``expected``: the frame count from :func:`probe`; a stream that ends early or runs long raises
    :class:`VideoError` (a truncated or corrupt file), so a clip is never silently shortened.
    """
    source = str(source)
    _check_exists(source)
    files = _image_files(source)
    count = 0
    if files is not None:
        shape = None
        for path in files:
            image = _decode_image(path, size)
            if shape is not None and image.shape != shape:
                raise VideoError(
                    f"{path} is {image.shape[1]}x{image.shape[0]}, but the sequence "
                    f"started at {shape[1]}x{shape[0]}"
                )
            shape = image.shape
            count += 1
            yield image
    else:
        # Resolved before the first yield: a generator closed at interpreter exit can no longer
        # import anything.
        errors = _ffmpeg_errors()
        container, stream = _open_video(source)
        try:
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                count += 1
                yield _to_rgb(frame, size)
        except errors as err:
            raise VideoError(
                f"{source}: decoding failed after {count} frames ({_one_line(err)})"
            ) from None
        finally:
            container.close()
    if count == 0:
        raise VideoError(f"{source} has zero decodable frames")
    if expected is not None and count != expected:
        raise VideoError(
            f"{source}: decoded {count} frames but the container lists {expected} "
            "(truncated or corrupt file)"
        )


def parse_size(text: Optional[str], height: int, width: int) -> Tuple[int, int]:
    """``--size``: None keeps (height, width); ``"S"`` scales the shorter side to S keeping the
    aspect ratio; ``"HxW"`` is exact."""
    if text is None:
        return height, width
    try:
        if "x" in text.lower():
            h, w = (int(v) for v in text.lower().split("x"))
        else:
            side = int(text)
            scale = side / min(height, width)
            h, w = max(round(height * scale), 1), max(round(width * scale), 1)
    except ValueError:
        raise ValueError(f"--size must be an int (shorter side) or HxW, got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"--size must be positive, got {text!r}")
    return h, w


# -- tensors ---------------------------------------------------------------------------------------
def frames_to_tensor(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [N, h, w, 3] -> float32 [1, 3, N, height, width] in [-1, 1], padded at the bottom and
    right by repeating the last row and column."""
    n, h, w, _ = frames.shape
    if (h, w) != (height, width):
        frames = np.pad(frames, ((0, 0), (0, height - h), (0, width - w), (0, 0)), mode="edge")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
    return x.float().div_(127.5).sub_(1.0)


def tensor_to_frames(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """float [1, 3, N, H, W] in [-1, 1] -> uint8 [N, height, width, 3], cropped at the top left."""
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
    """Fail before any work if ``path`` cannot take a video (bad suffix, non-empty directory)."""
    path = Path(path)
    kind = _output_kind(path)
    if kind == "images" and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise VideoError(
            f"{path} exists and is not an empty directory; PNG frames need a new or empty directory"
        )
    if kind == "video" and path.is_dir():
        raise VideoError(f"{path} is a directory")


def _pixel_format(codec: str, height: int, width: int) -> str:
    if codec == "gif":
        return "rgb8"
    if codec == "libx264" and (height % 2 or width % 2):
        return "yuv444p"  # 4:2:0 needs even sizes; 4:4:4 keeps odd ones exact
    return "yuv420p"


def _codec_options(codec: str, crf: Optional[int]) -> dict:
    if codec == "libx264":
        return {"crf": str(17 if crf is None else crf), "preset": "medium"}
    if codec == "libvpx-vp9":
        return {"crf": str(30 if crf is None else crf), "b": "0"}
    return {}


def _write_container(
    tmp: str, fmt: str, codec: str, chunks: Iterable[np.ndarray], fps: Fraction, crf: Optional[int]
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
                            codec, rate=fps, options=_codec_options(codec, crf)
                        )
                    except _ffmpeg_errors() + (ValueError,) as err:
                        raise VideoError(f"unsupported codec {codec} ({_one_line(err)})") from None
                    stream.width, stream.height = width, height
                    stream.pix_fmt = _pixel_format(codec, height, width)
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent)))
    count = 0
    try:
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
    path: PathLike, chunks: Iterable[np.ndarray], fps: Fraction, crf: Optional[int] = None
) -> int:
    """Write uint8 [N, H, W, 3] frame chunks, consumed as they are produced, to ``path``: a video
    file (format by suffix) or a directory of PNG frames. Atomic: on any failure, including one
    raised by the producer of ``chunks``, nothing is left at ``path``. Returns the frame count."""
    path = Path(path)
    check_output_path(path)
    if _output_kind(path) == "images":
        return _write_images(path, chunks)
    fmt, codec = VIDEO_SUFFIXES[path.suffix.lower()]
    written = []
    try:
        atomic_write(
            path,
            lambda tmp: written.append(
                _write_container(tmp, fmt, codec, chunks, Fraction(fps), crf)
            ),
        )
    except _ffmpeg_errors() as err:
        raise VideoError(f"writing {path} failed ({_one_line(err)})") from None
    return written[0]
