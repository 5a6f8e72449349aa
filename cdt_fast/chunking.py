"""Chunk plans: how a clip is cut into the pieces that pass through the causal networks.

Every plan gives the same result as the whole clip (chunk invariance); plans differ only in peak
memory. Video frame 0 is special: the causal stack turns latent frame 0 into one video frame and
every later latent frame into ``time_factor`` frames.
"""

from __future__ import annotations

from typing import List, Tuple

__all__ = ["encode_plan", "decode_plan", "video_frames", "latent_frames", "video_span"]

Span = Tuple[int, int]


def video_frames(latent_frames: int, time_factor: int = 4) -> int:
    """Video frames decoded from ``latent_frames`` latent frames: 1 + time_factor*(T-1)."""
    return 1 + time_factor * (latent_frames - 1)


def latent_frames(video_frames_: int, time_factor: int = 4) -> int:
    return 1 + (video_frames_ - 1) // time_factor


def video_span(start: int, stop: int, time_factor: int = 4) -> Span:
    """Video frames [a, b) produced by latent frames [start, stop)."""
    a = 0 if start == 0 else time_factor * start - (time_factor - 1)
    return a, time_factor * stop - (time_factor - 1)


def encode_plan(frames: int, chunk_frames: int, time_factor: int = 4) -> List[Span]:
    """Spans of video frames for a chunked encode.

    The first chunk holds frame 0 plus the remainder ``(frames - 1) % chunk_frames``, then chunks of
    ``chunk_frames`` frames follow (upstream's arrangement). ``chunk_frames`` must be a multiple of
    ``time_factor`` so that every chunk after the first maps to whole latent frames.
    """
    if chunk_frames % time_factor:
        raise ValueError(f"chunk_frames must be a multiple of {time_factor}, got {chunk_frames}")
    first = 1 + (frames - 1) % chunk_frames
    spans = [(0, first)]
    for start in range(first, frames, chunk_frames):
        spans.append((start, start + chunk_frames))
    return spans


def decode_plan(latent_frames_: int, chunk_frames: int) -> List[Span]:
    """Spans of latent frames for a chunked decode: ``chunk_frames`` at a time, the last shorter."""
    return [
        (s, min(s + chunk_frames, latent_frames_)) for s in range(0, latent_frames_, chunk_frames)
    ]
