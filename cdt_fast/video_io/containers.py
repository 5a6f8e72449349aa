"""Each container's own record of its length: whether a file ends where its structure says.

A file is cut short when it ends before the end its container records: the AVI RIFF and LIST
sizes and an index (idx1, OpenDML indx) pointing past the end; the MP4/MOV box sizes and a sample
index (stco/co64) pointing past the end; the Matroska/WebM Segment size, or its elements where
that size is left open (a live recording); an MPEG-PS pack or PES packet, or an MPEG-TS packet,
left incomplete; a GIF's blocks, up to its trailer. Frame counts and durations are no such
record: an AVI lists "repeat the previous frame" entries that hold no data, and a variable-rate
file's duration is no frame count.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Dict, Iterator, Optional, Tuple


def structure_cut(path: str, format_name: str) -> Optional[str]:
    """Why the file at ``path`` (FFmpeg's ``format_name`` for it) ends before its container says
    it does, or None where it ends where it should or the container records no length."""
    if format_name == "avi":
        return avi_layout(path).cut
    if format_name.startswith("mov,mp4"):
        return mp4_cut(path)
    if format_name.startswith("matroska"):
        return matroska_cut(path)
    if format_name in ("mpeg", "mpegvideo") or format_name.startswith("mpegts"):
        return mpeg_stream_cut(path, transport=format_name.startswith("mpegts"))
    if format_name == "gif":
        return gif_cut(path)
    return None


def _missing(what: str, end: int, size: int) -> str:
    return f"its {what} needs {end - size} more bytes"


# -- AVI (RIFF) ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AviLayout:
    """What an AVI's chunks say: why it is cut short (None if whole), and for each stream number
    the video chunks its idx1 index lists, zero-length "repeat" entries included (empty where
    there is no idx1, or where OpenDML RIFF-AVIX extensions hold more of the file)."""

    cut: Optional[str] = None
    index_entries: Dict[int, int] = field(default_factory=dict)


def _u32(data: bytes, at: int = 0) -> int:
    return struct.unpack_from("<I", data, at)[0]


def _riff_chunks(f: BinaryIO, start: int, stop: int) -> Iterator[Tuple[bytes, bytes, int, int]]:
    """(fourcc, list type or b"", offset, end of the chunk's data) of the chunks in
    [start, stop); a chunk may end beyond ``stop`` (a cut file)."""
    at = start
    while at + 8 <= stop:
        f.seek(at)
        head = f.read(12)
        tag, length = head[:4], _u32(head, 4)
        kind = head[8:12] if tag in (b"RIFF", b"LIST") else b""
        yield tag, kind, at, at + 8 + length
        at += 8 + length + (length & 1)


def avi_layout(path: str) -> AviLayout:
    """The chunk structure of the AVI at ``path`` (see :class:`AviLayout`)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        riffs = list(_riff_chunks(f, 0, size))
        if not riffs or riffs[0][:2] != (b"RIFF", b"AVI "):
            return AviLayout()
        for number, (tag, _, at, end) in enumerate(riffs):
            if tag != b"RIFF":
                break  # bytes after the last RIFF chunk that belong to no chunk
            if end < at + 12:
                return AviLayout(cut=f"its RIFF chunk {number + 1} states no size (never finished)")
            if end > size:
                inner = [c for c in _riff_chunks(f, at + 12, size) if c[3] > size]
                if inner:
                    return AviLayout(cut=_missing(_chunk_name(*inner[0][:2]), inner[0][3], size))
                return AviLayout(cut=_missing(f"RIFF chunk {number + 1}", end, size))
        chunks = {(t, k): (a, e) for t, k, a, e in _riff_chunks(f, 12, riffs[0][3])}
        why = _avi_super_index_cut(f, chunks.get((b"LIST", b"hdrl")), size)
        if why is not None:
            return AviLayout(cut=why)
        if (b"idx1", b"") not in chunks or (b"LIST", b"movi") not in chunks:
            return AviLayout()
        at, end = chunks[(b"idx1", b"")]
        f.seek(at + 8)
        index = f.read(end - at - 8)
    return _read_idx1(index, chunks[(b"LIST", b"movi")][0], size, extended=len(riffs) > 1)


def _chunk_name(tag: bytes, kind: bytes) -> str:
    if tag == b"idx1":
        return "idx1 index"
    if kind:
        return f"{kind.decode('latin-1').strip()} list"
    return f"{tag.decode('latin-1').strip()} chunk"


def _read_idx1(index: bytes, movi_at: int, size: int, extended: bool) -> AviLayout:
    """Check idx1 entries (16 bytes: chunk id, flags, offset, size) against the file's size and
    count the video entries per stream. Offsets count from the 'movi' fourcc in most files and
    from the start of the file in some: an offset below the movi list can only be relative."""
    count = len(index) // 16
    if count == 0:
        return AviLayout()
    base = movi_at + 8 if _u32(index, 8) < movi_at + 8 else 0
    entries: Dict[int, int] = {}
    last = 0
    for i in range(count):
        ckid, _, offset, length = struct.unpack_from("<4sIII", index, 16 * i)
        last = max(last, base + offset + 8 + length)
        if ckid[2:] in (b"dc", b"db") and ckid[:2].isdigit():
            stream = int(ckid[:2])
            entries[stream] = entries.get(stream, 0) + 1
    if last > size:
        return AviLayout(cut=f"its idx1 index points {last - size} bytes past the end")
    return AviLayout(index_entries={} if extended else entries)


def _avi_super_index_cut(f: BinaryIO, hdrl: Optional[Tuple[int, int]], size: int) -> Optional[str]:
    """An OpenDML 'indx' super index (in a stream's strl list) whose entries (offset, size,
    duration) name index chunks beyond the end of the file."""
    if hdrl is None:
        return None
    for tag, kind, at, end in _riff_chunks(f, hdrl[0] + 12, hdrl[1]):
        if (tag, kind) != (b"LIST", b"strl"):
            continue
        for inner, _, indx_at, indx_end in _riff_chunks(f, at + 12, end):
            if inner != b"indx":
                continue
            f.seek(indx_at + 8)
            data = f.read(indx_end - indx_at - 8)
            if len(data) < 24:
                continue
            longs, used = struct.unpack_from("<H2xI", data, 0)
            for i in range(used if longs == 4 else 0):
                if 24 + 16 * (i + 1) > len(data):
                    break
                offset, length = struct.unpack_from("<QI", data, 24 + 16 * i)
                if offset + length > size:
                    return (
                        f"its OpenDML indx index points {offset + length - size} bytes past the end"
                    )
    return None


# -- MP4/MOV (ISO boxes) ---------------------------------------------------------------------------
_MP4_PARENTS = (b"moov", b"trak", b"mdia", b"minf", b"stbl")


def _boxes(f: BinaryIO, start: int, stop: int, size: int) -> Iterator[Tuple[bytes, int, int, int]]:
    """(type, offset, header length, end) of the ISO boxes in [start, stop); a box of size 0
    runs to the end of the file. Stops at a header that is not a box."""
    at = start
    while at + 8 <= stop:
        f.seek(at)
        head = f.read(16)
        length, kind = struct.unpack_from(">I4s", head)
        header = 8
        if length == 1:
            if len(head) < 16:
                yield kind, at, 16, at + 16  # the 64-bit size itself is cut
                return
            length, header = struct.unpack_from(">Q", head, 8)[0], 16
        elif length == 0:
            length = size - at
        if length < header:
            return
        yield kind, at, header, at + length
        at += length


def mp4_cut(path: str) -> Optional[str]:
    """Why an MP4/MOV ends before its boxes do, or its sample index (stco/co64) names data
    beyond the end; None if neither."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for kind, at, header, end in _boxes(f, 0, size, size):
            if end > size:
                return _missing(f"{kind.decode('latin-1')} box", end, size)
            if kind == b"moov":
                last = _last_chunk_offset(f, at + header, end, size)
                if last >= size:
                    return f"its sample index points {last - size + 1} bytes past the end"
    return None


def _last_chunk_offset(f: BinaryIO, start: int, stop: int, size: int) -> int:
    """The largest chunk offset of the stco/co64 tables under the boxes in [start, stop)."""
    last = -1
    for kind, at, header, end in _boxes(f, start, stop, size):
        if kind in _MP4_PARENTS:
            last = max(last, _last_chunk_offset(f, at + header, end, size))
        elif kind in (b"stco", b"co64"):
            f.seek(at + header)
            data = f.read(end - at - header)
            count = struct.unpack_from(">I", data, 4)[0] if len(data) >= 8 else 0
            code, width = ("I", 4) if kind == b"stco" else ("Q", 8)
            count = min(count, (len(data) - 8) // width)
            if count:
                last = max(last, max(struct.unpack_from(f">{count}{code}", data, 8)))
    return last


# -- Matroska/WebM (EBML) --------------------------------------------------------------------------
_SEGMENT, _CLUSTER = 0x18538067, 0x1F43B675
# What a Cluster holds: Timestamp, SilentTracks, Position, PrevSize, SimpleBlock, BlockGroup,
# EncryptedBlock. Any other element ends a Cluster of unknown size.
_CLUSTER_CHILDREN = {0xE7, 0x5854, 0xA7, 0xAB, 0xA3, 0xA0, 0xAF}


def _vint(data: bytes, at: int, keep_marker: bool) -> Optional[Tuple[int, int, bool]]:
    """(value, length, all value bits set) of the EBML variable-length integer at ``at``; a
    length reaching past ``data`` where the bytes run out; None where the first byte is zero
    (no EBML number)."""
    if at >= len(data):
        return 0, 1, False
    if data[at] == 0:
        return None
    length = 9 - data[at].bit_length()
    if at + length > len(data):
        return 0, length, False
    value = int.from_bytes(data[at : at + length], "big")
    bits = 7 * length
    if not keep_marker:
        value &= (1 << bits) - 1
    return value, length, value & ((1 << bits) - 1) == (1 << bits) - 1


def _element(f: BinaryIO, at: int) -> Optional[Tuple[int, int, Optional[int]]]:
    """(id, header length, data size or None for an unknown size) of the element at ``at``."""
    f.seek(at)
    head = f.read(12)
    ident = _vint(head, 0, keep_marker=True)
    if ident is None:
        return None
    length = _vint(head, ident[1], keep_marker=False)
    if length is None:
        return None
    return ident[0], ident[1] + length[1], None if length[2] else length[0]


def matroska_cut(path: str) -> Optional[str]:
    """Why a Matroska/WebM file ends before its Segment does; None if it ends where it should.
    A Segment of unknown size (written while recording) is walked instead: each of its
    elements, and each element of a Cluster of unknown size, must end within the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        at = 0
        segment_open = in_cluster = False  # inside a Segment / a Cluster, both of unknown size
        while at < size:
            found = _element(f, at)
            if found is None:
                return None
            ident, header, length = found
            if at + header > size:
                return _missing("element header", at + header, size)
            if ident == _SEGMENT and not segment_open:
                if length is not None:
                    end = at + header + length
                    return _missing("Segment", end, size) if end > size else None
                segment_open = True
                at += header
                continue
            if in_cluster and ident not in _CLUSTER_CHILDREN:
                in_cluster = False
            if length is None:
                if not (segment_open and ident == _CLUSTER):
                    return None
                in_cluster = True
                at += header
                continue
            end = at + header + length
            if segment_open and end > size:
                what = "Cluster" if ident == _CLUSTER or in_cluster else "element"
                return _missing(what, end, size)
            at = end
    return None


# -- MPEG program and transport streams ----------------------------------------------------------
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


# -- GIF ---------------------------------------------------------------------------------------------
def gif_cut(path: str) -> Optional[str]:
    """Why a GIF ends before its trailer byte: its blocks (extensions, images, each a chain of
    length-prefixed sub-blocks) run past the end; None if the trailer is reached (or the bytes
    are not GIF blocks)."""
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    at = 13  # signature and logical screen descriptor
    if size < at or not data.startswith(b"GIF"):
        return None
    at += _gif_colour_table(data[10])
    while at < size:
        block = data[at]
        if block == 0x3B:  # trailer
            return None
        if block == 0x21:  # extension: label, then sub-blocks
            at += 2
        elif block == 0x2C:  # image: descriptor, local colour table, LZW code size, sub-blocks
            if at + 10 > size:
                return _missing("image descriptor", at + 10, size)
            at += 10 + _gif_colour_table(data[at + 9]) + 1
        else:
            return None
        while at < size and data[at]:
            at += 1 + data[at]
        if at >= size:  # a sub-block, or the chain's end, lies beyond the end
            return f"its last block needs at least {at + 1 - size} more bytes"
        at += 1  # the empty sub-block that ends the chain
    return "it ends before its trailer"


def _gif_colour_table(packed: int) -> int:
    return 3 << ((packed & 7) + 1) if packed & 0x80 else 0
