"""The one error type of video reading and writing, and its one-line messages."""

from __future__ import annotations


class VideoError(ValueError):
    """A video that cannot be read or written; the message is one line for the user."""


def one_line(err: BaseException) -> str:
    """The first line of an error's message (FFmpeg's can run to several), or its type's name."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
