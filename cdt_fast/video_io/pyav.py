"""PyAV, imported on first use, its errors, and opening a file's first video stream."""

from __future__ import annotations

from .errors import VideoError, one_line


def load_av():
    """The ``av`` module; a :class:`VideoError` saying how to install it where it is missing."""
    try:
        import av
    except ImportError:
        raise VideoError("video files need PyAV: pip install av (or cdt_fast[video])") from None
    return av


def ffmpeg_errors() -> tuple:
    """The exception types FFmpeg raises through PyAV for a bad or unreadable file."""
    av = load_av()
    return (av.error.FFmpegError, OSError, EOFError)


def holds_frame(packet) -> bool:
    """Whether a demuxed packet gives a frame: it holds data (an AVI's zero-length repeat entries
    and the flush packets at the end hold none) and the container does not mark it to be
    discarded (an MP4 edit list trimming a B-frame stream)."""
    return bool(packet.size) and not packet.is_discard


def open_video(path: str):
    """(container, its first video stream), or a :class:`VideoError` naming what is missing."""
    av = load_av()
    try:
        container = av.open(path)
    except ffmpeg_errors() as err:
        raise VideoError(f"{path} is not a readable video ({one_line(err)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or not getattr(stream.codec_context, "name", None):
        container.close()
        raise VideoError(f"{path}: unsupported codec (FFmpeg has no decoder for its video stream)")
    return container, stream
