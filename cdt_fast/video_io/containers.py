"""Each container's own record of its length: whether a file ends where its structure says."""

from __future__ import annotations

import os
from typing import Optional

_PACK, _END = 0xBA, 0xB9


def mpeg_stream_cut(path: str, transport: bool) -> Optional[str]:
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
