"""Truncation judged by each container's own structure, and a clip's duration kept: an AVI's
zero-length "repeat the previous frame" entries restored as frames, other containers' timestamps
giving the rate. Hand-made files (tests/avi_files.py, byte-level boxes and elements) and real
PyAV/FFmpeg output."""

from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("av")

from cdt_fast import video_io
from cdt_fast.video_io import VideoError, containers, timing

from .avi_files import chunk, write_mjpeg_avi
from .video_clips import pattern

SOURCE = pattern(6, 32, 48)
# One AVI entry per frame period: an index into SOURCE, or None for a zero-length repeat entry
# (leading, inside and trailing ones).
ENTRIES = [None, 0, 1, None, None, 2, 3, None, 4, 5, None, None]
SHOWN = [0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5, 5]  # the frame each period shows


def _still_avi(path, **kw):
    return write_mjpeg_avi(path, [None if e is None else SOURCE[e] for e in ENTRIES], **kw)


def _nearest_source(frames: np.ndarray, source: np.ndarray = SOURCE) -> list:
    """For each decoded frame, the index of the source frame it is (lossy codecs: the
    nearest, which must be near)."""
    dist = np.abs(frames[:, None].astype(float) - source[None].astype(float)).mean(axis=(2, 3, 4))
    assert dist.min(axis=1).max() < 8
    return dist.argmin(axis=1).tolist()


def _encode_slots(path, fmt, codec, slots, container_options=None):
    """PyAV/FFmpeg output of ``pattern(len(slots), 32, 48)``: frame i at period ``slots[i]`` of
    a 24 fps stream (periods skipped between them: frames a variable-rate source did not
    repeat)."""
    import av

    source = pattern(len(slots), 32, 48)
    options = {"qscale": "2"} if codec in ("mpeg4", "mjpeg", "mpeg2video") else {}
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=24, options=options)
        stream.width, stream.height, stream.bit_rate = 48, 32, 4_000_000
        stream.pix_fmt = {"mjpeg": "yuvj420p", "gif": "rgb8"}.get(codec, "yuv420p")
        stream.codec_context.time_base = Fraction(1, 24)
        for image, slot in zip(source, slots):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = slot, Fraction(1, 24)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# -- AVI: repeat entries are frames ----------------------------------------------------------------
def test_hand_made_avi_repeat_entries_are_restored(tmp_path):
    """A whole AVI whose index lists zero-length 00dc chunks (as capture programs write for
    still stretches) is whole, not truncated: a count of data chunks alone would say "6 frames of
    the 12 it lists"."""
    path = _still_avi(tmp_path / "still.avi")
    info = video_io.probe(path)
    assert (info.frames, info.repeats, info.fps, info.truncated) == (12, 6, 24, False)
    assert info.timing_text == "6 repeated frames restored"
    assert "timing: 6 repeated frames restored" in info.describe()
    decoded = np.stack(list(video_io.iter_frames(path, expected=info.frames)))
    assert _nearest_source(decoded) == SHOWN
    for i in range(1, len(SHOWN)):  # a repeat is the frame before it, exactly
        if SHOWN[i] == SHOWN[i - 1]:
            np.testing.assert_array_equal(decoded[i], decoded[i - 1])
    part = np.stack(list(video_io.iter_frames(path, expected=info.frames, start=3, count=5)))
    np.testing.assert_array_equal(part, decoded[3:8])


def test_training_datasets_number_frames_as_probe_counts_them(tmp_path):
    """VideoFolder counts frames with probe and reads them by index: repeats included."""
    from cdt_fast.data.video import count_frames, read_frames

    path = _still_avi(tmp_path / "still.avi")
    assert count_frames(path) == 12
    frames = read_frames(path, [0, 3, 3, 11]).numpy()
    assert _nearest_source(frames) == [SHOWN[0], SHOWN[3], SHOWN[3], SHOWN[11]]


@pytest.mark.parametrize("codec", ["mpeg4", "mjpeg"])
def test_ffmpeg_avi_with_duplicated_frames_is_whole(tmp_path, codec):
    """FFmpeg's AVI muxer writes a zero-length chunk for each frame period a variable-rate input
    skips (its frame duplication); the clip keeps those periods, so its duration."""
    slots = [0, 1, 2, 5, 6, 7, 8, 12, 13, 14]
    path = _encode_slots(tmp_path / f"dup_{codec}.avi", "avi", codec, slots)
    assert _idx1_sizes(path.read_bytes()).count(0) == 5  # the repeat entries
    assert containers.avi_layout(str(path)).index_entries == {0: 15}
    info = video_io.probe(path)
    assert (info.frames, info.repeats, info.fps, info.truncated) == (15, 5, 24, False)
    decoded = np.stack(list(video_io.iter_frames(path, expected=info.frames)))
    shown = [max(i for i, s in enumerate(slots) if s <= period) for period in range(15)]
    assert _nearest_source(decoded, pattern(len(slots), 32, 48)) == shown


def test_probe_reads_an_avi_s_chunks_once(tmp_path, monkeypatch):
    """The periods an AVI lists and whether it is cut come from one reading of its chunks (its
    idx1 index is walked entry by entry)."""
    from cdt_fast.video_io import probing, read

    path = _encode_slots(tmp_path / "once.avi", "avi", "mpeg4", [0, 1, 2, 5, 6])
    reads, layout = [], containers.avi_layout

    def counted(source):
        reads.append(source)
        return layout(source)

    for module in (containers, timing, probing, read):  # wherever it is imported
        monkeypatch.setattr(module, "avi_layout", counted, raising=False)
    assert video_io.probe(path).frames == 7
    assert len(reads) == 1


@pytest.mark.parametrize("slots", [list(range(10)), [0, 1, 2, 5, 6, 7, 8, 12, 13, 14]])
def test_avi_with_b_frames_is_whole(tmp_path, slots):
    """H.264 in AVI (x264's B-frames, as in Xvid/H.264 AVI collections): FFmpeg's guess of a
    decoded frame's time is late by the decoder's delay and out of order, which must not read as
    skipped periods (repeats) that make the whole file "decode more frames than it lists". Each
    frame shown takes the next period of the index, so the count and the duration are the
    index's, and the frames come in order."""
    path = _encode_slots(tmp_path / "b.avi", "avi", "libx264", slots)
    info = video_io.probe(path)
    periods = slots[-1] + 1
    assert (info.frames, info.repeats, info.truncated) == (periods, periods - len(slots), False)
    decoded = np.stack(list(video_io.iter_frames(path, expected=info.frames)))
    shown = _nearest_source(decoded, pattern(len(slots), 32, 48))
    assert sorted(set(shown)) == list(range(len(slots))) and shown == sorted(shown)
    if periods == len(slots):
        assert shown == list(range(len(slots)))


def _idx1_sizes(data: bytes) -> list:
    """The chunk sizes an AVI's idx1 index lists (16-byte entries: id, flags, offset, size)."""
    at = data.rfind(b"idx1")
    (length,) = struct.unpack_from("<I", data, at + 4)
    return [struct.unpack_from("<I", data, at + 8 + i + 12)[0] for i in range(0, length, 16)]


def _plain_avi(path):
    return _encode_slots(path, "avi", "mpeg4", list(range(10)))


AVI_KINDS = {
    "hand-made repeats": _still_avi,
    "ffmpeg repeats": lambda p: _encode_slots(p, "avi", "mpeg4", [0, 1, 2, 5, 6, 7, 8, 12, 13]),
    "ffmpeg plain": _plain_avi,
}


@pytest.mark.parametrize("where", ["movi", "idx1"])
@pytest.mark.parametrize("kind", sorted(AVI_KINDS))
def test_cut_avi_is_refused_by_its_chunks(tmp_path, kind, where):
    """A copy cut inside the movi list or inside the idx1 index is refused, naming the chunk;
    a plain AVI cut inside idx1 (every frame present) is refused too, though every frame decodes."""
    data = AVI_KINDS[kind](tmp_path / "whole.avi").read_bytes()
    movi, idx1 = data.find(b"movi"), data.rfind(b"idx1")
    stop = (movi + idx1) // 2 + 3 if where == "movi" else len(data) - 10
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:stop])
    name = "movi list" if where == "movi" else "idx1 index"
    with pytest.raises(VideoError, match=f"is truncated: .*its {name} needs") as err:
        video_io.probe(cut)
    assert "\n" not in str(err.value)
    info = video_io.probe(cut, allow_truncated=True)
    whole = video_io.probe(tmp_path / "whole.avi")
    assert info.truncated and 0 < info.frames <= whole.frames
    assert sum(
        1 for _ in video_io.iter_frames(cut, expected=info.frames, allow_truncated=True)
    ) == (info.frames)


def test_avi_chunk_structure_checks(tmp_path):
    """The AVI checks on hand-made layouts: an unfinished RIFF size, an idx1 entry and an
    OpenDML super index pointing past the end."""

    def layout(data: bytes) -> containers.AviLayout:
        path = tmp_path / "x.avi"
        path.write_bytes(data)
        return containers.avi_layout(str(path))

    whole = _still_avi(tmp_path / "still.avi").read_bytes()
    assert layout(whole) == containers.AviLayout(None, {0: 12})
    assert "states no size" in layout(whole[:4] + bytes(4) + whole[8:]).cut
    at = whole.rfind(b"idx1") + 8 + 16 * 3 + 8  # the fourth entry's offset
    far = whole[:at] + struct.pack("<I", len(whole)) + whole[at + 4 :]
    assert "idx1 index points" in layout(far).cut
    indx = chunk(b"indx", struct.pack("<HBBI4s12xQII", 4, 0, 0, 1, b"00dc", 10**6, 100, 12))
    odml = _still_avi(tmp_path / "odml.avi", extra_strl=indx).read_bytes()
    assert "OpenDML indx index points" in layout(odml).cut


# -- MP4/MOV, Matroska/WebM: cut near the end ------------------------------------------------------
def _last_packet_at(path) -> int:
    import av

    with av.open(str(path)) as container:
        return max(p.pos for p in container.demux(video=0) if p.size)


NEAR_END = {
    # name: (file, format, codec, container options, what the message names)
    "mp4": ("a.mp4", "mp4", "libx264", {"movflags": "faststart"}, "mdat box"),
    "mov": ("a.mov", "mov", "libx264", {"movflags": "faststart"}, "mdat box"),
    "mkv": ("a.mkv", "matroska", "libx264", None, "Segment"),
    "webm": ("a.webm", "webm", "libvpx-vp9", None, "Segment"),
}


@pytest.mark.parametrize("where", ["without its last frame", "10 bytes short"])
@pytest.mark.parametrize("kind", sorted(NEAR_END))
def test_cut_near_the_end_is_refused_by_the_container(tmp_path, kind, where):
    """A copy that lacks its last frame, or only its last bytes (an MP4's last sample, a
    Matroska file's Cues), ends before its boxes or Segment do. Judged by duration alone they
    would pass as whole files one frame short: the duration they list is within a frame of their
    packets."""
    name, fmt, codec, options, what = NEAR_END[kind]
    whole = _encode_slots(tmp_path / name, fmt, codec, list(range(12)), options)
    data = whole.read_bytes()
    stop = _last_packet_at(whole) if where == "without its last frame" else len(data) - 10
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(data[:stop])
    with pytest.raises(VideoError, match=f"is truncated: .*its {what} needs"):
        video_io.probe(cut)
    assert video_io.probe(whole).frames == 12


@pytest.mark.parametrize(
    "cut,why",
    [(-1, "it ends before its trailer"), (0.6, "its last block needs at least")],
)
def test_cut_gif_is_refused_by_its_blocks(tmp_path, cut, why):
    """A GIF ends with a trailer byte after its last block; a copy cut in its image data or
    lacking only the trailer is refused, not read as a whole, shorter file."""
    whole = _encode_slots(tmp_path / "a.gif", "gif", "gif", list(range(8)))
    data = whole.read_bytes()
    stop = len(data) + cut if cut < 0 else int(len(data) * cut)
    short = tmp_path / "cut.gif"
    short.write_bytes(data[:stop])
    with pytest.raises(VideoError, match=f"is truncated: .*{why}"):
        video_io.probe(short)
    assert video_io.probe(whole).frames == 8


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def _mp4(chunk_offset: int, mdat: bytes) -> bytes:
    stco = _box(b"stco", struct.pack(">III", 0, 1, chunk_offset))
    moov = _box(b"moov", _box(b"trak", _box(b"mdia", _box(b"minf", _box(b"stbl", stco)))))
    return _box(b"ftyp", b"isom" + bytes(4)) + moov + _box(b"mdat", mdat)


def test_mp4_box_checks(tmp_path):
    path = tmp_path / "x.mp4"

    def cut(data: bytes):
        path.write_bytes(data)
        return containers.mp4_cut(str(path))

    whole = _mp4(100, bytes(64))
    assert cut(whole) is None
    assert cut(whole[:-5]) == "its mdat box needs 5 more bytes"
    assert cut(_mp4(len(whole) + 7, bytes(64))) == "its sample index points 8 bytes past the end"
    # a 64-bit box size, and a last box of size 0 (it runs to the end of the file)
    large = whole[: -8 - 64] + struct.pack(">I4sQ", 1, b"mdat", 16 + 64) + bytes(64)
    assert cut(large) is None and "mdat box needs 1 more" in cut(large[:-1])
    assert cut(whole[: -8 - 64] + struct.pack(">I4s", 0, b"mdat") + bytes(64)) is None


def _ebml(ident: int, body: bytes, unknown: bool = False) -> bytes:
    size = (
        b"\x01\xff\xff\xff\xff\xff\xff\xff" if unknown else b"\x01" + len(body).to_bytes(7, "big")
    )
    return ident.to_bytes((ident.bit_length() + 7) // 8, "big") + size + body


def test_matroska_element_checks(tmp_path):
    """A Segment of known size, and one left open (a live recording) whose Cluster of unknown
    size ends inside a block."""
    path = tmp_path / "x.mkv"

    def cut(data: bytes):
        path.write_bytes(data)
        return containers.matroska_cut(str(path))

    header = _ebml(0x1A45DFA3, _ebml(0x4282, b"webm"))
    blocks = _ebml(0xE7, b"\x00") + _ebml(0xA3, bytes(40)) + _ebml(0xA3, bytes(40))
    known = header + _ebml(0x18538067, _ebml(0x1F43B675, blocks))
    assert cut(known) is None
    assert cut(known[:-3]) == "its Segment needs 3 more bytes"
    live = header + _ebml(0x18538067, _ebml(0x1F43B675, blocks, unknown=True), unknown=True)
    assert cut(live) is None
    assert cut(live[:-3]) == "its Cluster needs 3 more bytes"
    assert cut(live[:-45]) == "its element header needs 5 more bytes"  # 4 of 9 bytes
    # a Cluster of unknown size ends where a top-level element (Cues) starts
    cues = _ebml(0x1C53BB6B, bytes(20))
    assert cut(live + cues) is None and cut(live + cues[:-1]) == "its element needs 1 more bytes"


# -- timing: repeated frames or timestamps ---------------------------------------------------------
GAP = list(range(6)) + list(range(30, 36))  # a still stretch of 24 periods after frame 5

TIMED = {
    # name: (file, format, codec); an AVI keeps the still as repeat entries, the others in
    # their timestamps
    "avi": ("g.avi", "avi", "mpeg4"),
    "mkv": ("g.mkv", "matroska", "libx264"),
    "webm": ("g.webm", "webm", "libvpx-vp9"),
    "mp4": ("g.mp4", "mp4", "libx264"),
    "mov": ("g.mov", "mov", "libx264"),
    "mpeg-2 ps": ("g.mpg", "mpeg", "mpeg2video"),
    "mpeg-2 ts": ("g.ts", "mpegts", "mpeg2video"),
}


@pytest.mark.parametrize("kind", sorted(TIMED))
def test_a_still_stretch_keeps_the_clip_duration(tmp_path, kind):
    """36 periods at 24 fps (1.5 s) holding 12 frames: an AVI restores 24 repeated frames at
    24 fps; the other containers give their 12 frames the rate their timestamps span (8 fps).
    Reporting Matroska/WebM and MPEG-PS/TS at the nominal 24 fps would shrink the clip to 0.5 s."""
    name, fmt, codec = TIMED[kind]
    path = _encode_slots(tmp_path / name, fmt, codec, GAP)
    info = video_io.probe(path)
    duration = Fraction(36, 24)
    assert abs(info.frames / info.fps - duration) <= Fraction(3, 2) / 24, info
    if kind == "avi":
        assert (info.frames, info.fps, info.repeats) == (36, 24, 24)
        assert info.timing_text == "24 repeated frames restored"
    else:
        assert (info.frames, info.repeats, info.timing) == (12, 0, "timestamps")
    assert sum(1 for _ in video_io.iter_frames(path, expected=info.frames)) == info.frames


def test_restore_repeats():
    def run(items, start=0, slots=None):
        return list(timing.restore_repeats(items, start, slots))

    assert run([(0, "a"), (1, "b")]) == [("a", False), ("b", False)]
    gaps = [(2, "a"), (3, "b"), (6, "c")]  # two periods before a, two after b
    shown = [("a", True), ("a", True), ("a", False), ("b", False), ("b", True), ("b", True)]
    assert run(gaps) == shown + [("c", False)]
    assert run(gaps, start=2, slots=8)[:3] == [("a", False), ("b", False), ("b", True)]
    assert len(run(gaps, start=2, slots=8)) == 8
    assert run(gaps, slots=9)[-3:] == [("c", False), ("c", True), ("c", True)]
    # no slot: the next period; a slot out of order (B-frame timestamps) repeats nothing
    assert run([(0, "a"), (None, "b"), (1, "c"), (5, "d")])[:3] == [
        ("a", False),
        ("b", False),
        ("c", False),
    ]
    assert run([]) == [] and run([], slots=4) == []


def test_timestamp_rate():
    rate = timing.timestamp_rate
    assert rate(24, Fraction(1), Fraction(24)) == 24  # a constant rate
    assert rate(24, Fraction(25, 24), Fraction(24)) == 24  # within 1.5 periods
    assert rate(12, Fraction(3, 2), Fraction(24)) == 8  # a still stretch
    assert rate(20, Fraction(1), Fraction(24)) == 20  # a variable rate
    assert rate(1, Fraction(5), Fraction(24)) == 24 and rate(5, None, Fraction(30)) == 30
