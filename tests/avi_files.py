"""Hand-made AVI files: MJPEG frames and zero-length "repeat the previous frame" entries, laid
out as capture programs write them (no encoder library involved in the container)."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

AVIF_HASINDEX = 0x10
AVIIF_KEYFRAME = 0x10


def chunk(tag: bytes, data: bytes) -> bytes:
    """A RIFF chunk: fourcc, little-endian size, data, a pad byte after odd sizes."""
    return tag + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def _list(kind: bytes, body: bytes) -> bytes:
    return chunk(b"LIST", kind + body)


def _jpeg(image: np.ndarray) -> bytes:
    """One JPEG image (FFmpeg's MJPEG encoder through PyAV, full-range 4:2:0)."""
    import av

    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = image.shape[1], image.shape[0], "yuvj420p"
    codec.time_base = Fraction(1, 24)
    codec.options = {"qscale": "2"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def write_mjpeg_avi(
    path,
    frames: Sequence[Optional[np.ndarray]],
    fps: int = 24,
    header_frames: Optional[int] = None,
    extra_strl: bytes = b"",
) -> Path:
    """An MJPEG AVI with one 00dc chunk per entry of ``frames``: an image, or None for a
    zero-length chunk (the previous frame shown again). Both the movi list and the idx1 index
    hold every entry; the headers count them all (``header_frames`` overrides that count).
    ``extra_strl``: chunks appended to the stream's strl list (an OpenDML indx)."""
    images = [f for f in frames if f is not None]
    height, width = images[0].shape[:2]
    count = len(frames) if header_frames is None else header_frames
    payloads = [b"" if f is None else _jpeg(f) for f in frames]
    biggest = max(len(p) for p in payloads)
    avih = struct.pack(
        "<10I4I",
        round(1e6 / fps),  # microseconds per frame
        biggest * fps,
        0,
        AVIF_HASINDEX,
        count,
        0,
        1,  # streams
        biggest,
        width,
        height,
        0,
        0,
        0,
        0,
    )
    strh = b"vidsMJPG" + struct.pack(
        "<IHHIIIIIIII4h", 0, 0, 0, 0, 1, fps, 0, count, biggest, 0xFFFFFFFF, 0, 0, 0, width, height
    )
    strf = struct.pack(
        "<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0
    )
    hdrl = _list(
        b"hdrl",
        chunk(b"avih", avih)
        + _list(b"strl", chunk(b"strh", strh) + chunk(b"strf", strf) + extra_strl),
    )
    movi_body, index = b"", b""
    for payload in payloads:
        offset = 4 + len(movi_body)  # from the 'movi' fourcc, as most writers count
        flags = AVIIF_KEYFRAME if payload else 0
        index += b"00dc" + struct.pack("<III", flags, offset, len(payload))
        movi_body += chunk(b"00dc", payload)
    body = b"AVI " + hdrl + _list(b"movi", movi_body) + chunk(b"idx1", index)
    path = Path(path)
    path.write_bytes(chunk(b"RIFF", body))
    return path
