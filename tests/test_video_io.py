"""cdt_fast.video_io: reading and writing clips of any length and size, padding, bad files."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from cdt_fast import video_io
from cdt_fast.video_io import PaddedClip, VideoError, containers
from cdt_fast.video_io import write as video_write

from .video_clips import pattern, read_pngs, write_clip, write_pngs


@pytest.mark.parametrize(
    "suffix,codec,fmt,fps",
    [
        (".mp4", "libx264", None, Fraction(24)),
        (".mp4", "libx264", None, Fraction(30000, 1001)),
        (".webm", "libvpx-vp9", None, Fraction(25)),
        (".gif", "gif", None, None),
        (".avi", "mpeg4", None, Fraction(24)),
    ],
)
def test_probe_and_read_keep_count_size_fps(tmp_path, suffix, codec, fmt, fps):
    frames = pattern(10, 50, 70)
    path = write_clip(tmp_path / f"clip{suffix}", frames, fps or Fraction(25), codec, fmt)
    info = video_io.probe(path)
    assert (info.frames, info.height, info.width) == (10, 50, 70)
    if fps is not None:  # gif stores durations in 1/100 s: its rate is approximate
        assert info.fps == fps
    decoded = np.stack(list(video_io.iter_frames(path, expected=info.frames)))
    assert decoded.shape == (10, 50, 70, 3)
    if codec != "gif":  # lossy, but close to the source
        assert np.abs(decoded.astype(float) - frames).mean() < 12


def test_image_sequences_directory_and_glob(tmp_path):
    frames = pattern(5, 17, 23)
    write_pngs(tmp_path / "seq", frames)
    (tmp_path / "seq" / "notes.txt").write_text("not a frame")
    for source in (tmp_path / "seq", str(tmp_path / "seq" / "f*.png")):
        info = video_io.probe(source, fps=Fraction(12))
        assert (info.frames, info.height, info.width, info.fps) == (5, 17, 23, 12)
        np.testing.assert_array_equal(read_pngs(tmp_path / "seq"), frames)  # PNG is lossless
    assert video_io.probe(tmp_path / "seq").fps == video_io.DEFAULT_FPS


def test_resize_on_read(tmp_path):
    path = write_clip(tmp_path / "a.mp4", pattern(3, 40, 60))
    out = list(video_io.iter_frames(path, size=(20, 30)))
    assert len(out) == 3 and out[0].shape == (20, 30, 3)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_display_rotation_is_applied(tmp_path, degrees):
    """A phone's portrait video: landscape frames and a display matrix that turns them. Frames
    are read as shown (as players and FFmpeg's command line show them), and probe gives the
    shown size, so a clip is never encoded, trained on or reconstructed on its side."""
    import av

    stored = pattern(5, 32, 48)
    path = tmp_path / "phone.mov"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("this PyAV neither writes nor reads display matrices")
        stream.set_display_rotation(degrees)
        for image in stored:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    turns = (degrees // 90) % 4
    shown = np.rot90(stored, turns, axes=(1, 2))  # counter-clockwise, as the matrix says
    info = video_io.probe(path)
    assert (info.height, info.width, info.rotation) == shown.shape[1:3] + (90 * turns,)
    assert f"turned {90 * turns} degrees upright" in info.describe()
    decoded = np.stack(list(video_io.iter_frames(path, expected=info.frames)))
    assert decoded.shape == shown.shape
    assert np.abs(decoded.astype(float) - shown).mean() < 6
    smaller = np.stack(list(video_io.iter_frames(path, size=(shown.shape[1] // 2, 8))))
    assert smaller.shape == (5, shown.shape[1] // 2, 8, 3)  # the size asked for, as shown


def test_parse_size():
    assert video_io.parse_size(None, 50, 70) == (50, 70)
    assert video_io.parse_size("26", 50, 70) == (26, 36)  # both sides even, aspect kept
    assert video_io.parse_size("32x48", 50, 70) == (32, 48)
    # 4:3 video scaled to a shorter side of 64/65/128: even widths (not 85, 87, 171)
    for side, expected in ((64, (64, 86)), (65, (64, 86)), (128, (128, 170))):
        assert video_io.parse_size(str(side), 480, 640) == expected
    for bad in ("big", "0", "-5", "0x10", "10x", "3x4x5"):
        with pytest.raises(ValueError, match="--size") as info:
            video_io.parse_size(bad, 50, 70)
        assert "\n" not in str(info.value)


def test_tensor_frames_round_trip_is_exact():
    frames = pattern(3, 13, 21)
    x = video_io.frames_to_tensor(frames, 16, 24)
    assert x.shape == (1, 3, 3, 16, 24) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(video_io.tensor_to_frames(x, 13, 21), frames)
    # padding repeats the last row and column
    torch.testing.assert_close(x[..., 13:, :21], x[..., 12:13, :21].expand(-1, -1, -1, 3, -1))
    torch.testing.assert_close(x[..., 23:], x[..., 22:23])


@pytest.mark.parametrize("count", [1, 2, 5, 10])
def test_padded_clip_matches_eager_padding(count):
    frames = pattern(count, 11, 19)
    clip = PaddedClip(iter(frames), count, 11, 19)
    t = 1 + -(-(count - 1) // 4) * 4
    assert clip.shape == (1, 3, t, 16, 24)
    assert clip.padding == {"frames": t - count, "bottom": 5, "right": 5}
    # read in uneven front-to-back spans, as a chunked encoder does
    spans = [(0, 1)] + [(s, min(s + 4, t)) for s in range(1, t, 4)]
    got = torch.cat([clip[:, :, a:b] for a, b in spans], dim=2)
    full = np.concatenate([frames, np.repeat(frames[-1:], t - count, 0)])
    torch.testing.assert_close(got, video_io.frames_to_tensor(full, 16, 24), rtol=0, atol=0)


def test_padded_clip_is_front_to_back_and_checks_count():
    clip = PaddedClip(iter(pattern(5, 8, 8)), 5, 8, 8)
    with pytest.raises(ValueError, match="front to back"):
        clip[:, :, 1:5]
    with pytest.raises(TypeError):
        clip[0]
    short = PaddedClip(iter(pattern(3, 8, 8)), 5, 8, 8)
    with pytest.raises(VideoError, match="ended after 3 of 5"):
        short.read_all()


def _pix_fmt(path):
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.pix_fmt


def test_write_video_odd_size_keeps_count_size_fps(tmp_path):
    frames = pattern(10, 51, 69)
    out = tmp_path / "out.mp4"
    n = video_io.write_video(
        out, iter([frames[:4], frames[4:]]), Fraction(30000, 1001), pix_fmt="yuv444p"
    )
    info = video_io.probe(out)
    assert n == 10 and (info.frames, info.height, info.width) == (10, 51, 69)
    assert info.fps == Fraction(30000, 1001)
    assert _pix_fmt(out) == "yuv444p"


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi", ".mpg"])
def test_write_video_is_yuv420p_with_even_sides_by_default(tmp_path, suffix):
    frames = pattern(3, 51, 69)
    out = tmp_path / f"out{suffix}"
    assert video_io.output_size(out, 51, 69) == (50, 68)
    assert video_io.write_video(out, iter([frames]), Fraction(24)) == 3
    info = video_io.probe(out)
    assert (info.frames, info.height, info.width) == (3, 50, 68)
    assert _pix_fmt(out) == "yuv420p"
    assert video_io.output_size(tmp_path / "pngs", 51, 69) == (51, 69)


def test_write_png_directory_is_lossless(tmp_path):
    frames = pattern(4, 9, 7)
    video_io.write_video(tmp_path / "frames", iter([frames]), Fraction(24))
    np.testing.assert_array_equal(read_pngs(tmp_path / "frames"), frames)


@pytest.mark.parametrize("name", ["out.mp4", "out.webm", "frames"])
def test_failed_write_leaves_nothing(tmp_path, name):
    frames = pattern(3, 16, 16)

    def producer():
        yield frames
        raise VideoError("source broke")

    with pytest.raises(VideoError, match="source broke"):
        video_io.write_video(tmp_path / name, producer(), Fraction(24))
    assert list(tmp_path.iterdir()) == []


def test_output_checks(tmp_path):
    with pytest.raises(VideoError, match="unsupported output format"):
        video_io.check_output_path(tmp_path / "out.xyz")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(VideoError, match="not an empty directory"):
        video_io.check_output_path(tmp_path / "full")


# -- bad inputs --------------------------------------------------------------------------------
def unsupported_codec_avi(tmp_path):
    """An AVI whose video fourcc FFmpeg does not know."""
    path = write_clip(tmp_path / "good.avi", pattern(3, 16, 16), codec="mpeg4")
    bad = tmp_path / "unknown_codec.avi"
    bad.write_bytes(path.read_bytes().replace(b"FMP4", b"ZQZQ"))
    return bad


def zero_frame_avi(tmp_path):
    import av

    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        container.start_encoding()
    return path


def corrupt_mp4(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def truncated_mp4(tmp_path):
    good = write_clip(tmp_path / "full.mp4", pattern(9, 32, 32))
    path = tmp_path / "truncated.mp4"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


BAD_INPUTS = {
    "missing": (lambda p: p / "nope.mp4", FileNotFoundError, "not found"),
    "corrupt": (corrupt_mp4, VideoError, "not a readable video"),
    "truncated": (truncated_mp4, VideoError, "not a readable video"),
    "zero frames": (zero_frame_avi, VideoError, "zero frames"),
    "unsupported codec": (unsupported_codec_avi, VideoError, "unsupported codec"),
    "empty directory": (lambda p: (p / "d").mkdir() or p / "d", VideoError, "zero frames"),
    "no video stream": (
        lambda p: (p / "a.txt").write_text("hello") and p / "a.txt",
        VideoError,
        "not a readable video",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_inputs_raise_one_clear_error(tmp_path, kind):
    make, error, match = BAD_INPUTS[kind]
    path = make(tmp_path)
    with pytest.raises(error, match=match) as info:
        video_io.probe(path)
    assert "\n" not in str(info.value)


# -- real encoder output: every container and codec PyAV writes, and truncated copies -------------
FRAMES = 20


def _noisy(frames: int = FRAMES) -> np.ndarray:
    """64x48 frames with enough noise that a cut lands in the middle of the video data."""
    rng = np.random.default_rng(1)
    base = pattern(frames, 48, 64).astype(float)
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)


def _encode(path, fmt, codec, options=None, vfr=False, shift=0, container_options=None):
    """Encode ``_noisy()`` with PyAV. ``vfr``: alternating 30/70 ms frame durations. ``shift``:
    move every timestamp back by that many frames, so that the MP4 muxer writes an edit list
    that starts after the first ``shift`` frames (FFmpeg flags their packets as discarded)."""
    import av

    try:
        av.codec.Codec(codec, "w")
    except Exception:  # PyAV built without this encoder
        pytest.skip(f"this PyAV/FFmpeg has no {codec} encoder")
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=24, options=options or {})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        pts, packets = 0, []
        for i, image in enumerate(_noisy()):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += 30 if i % 2 else 70
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            if shift:
                packet.pts -= shift
                packet.dts -= shift
            container.mux(packet)
    return path


# name: (file name, format, codec, encoder options, extra _encode arguments)
REAL_FILES = {
    "h264 b-frames mp4": ("a.mp4", "mp4", "libx264", {"bf": "3"}, {}),
    "h264 mov": ("a.mov", "mov", "libx264", {"bf": "2"}, {}),
    "h264 mkv": ("a.mkv", "matroska", "libx264", {}, {}),
    "mpeg-2 ps": ("a.mpg", "mpeg", "mpeg2video", {}, {}),
    "mpeg-2 ts": ("a.ts", "mpegts", "mpeg2video", {}, {}),
    "mpeg-4 avi": ("a.avi", "avi", "mpeg4", {}, {}),
    "vp9 webm": ("a.webm", "webm", "libvpx-vp9", {}, {}),
    "vfr mp4": (
        "vfr.mp4",
        "mp4",
        "libx264",
        {},
        {"vfr": True, "container_options": {"movflags": "faststart"}},
    ),
    "vfr mkv": ("vfr.mkv", "matroska", "libx264", {}, {"vfr": True}),
    # the sample index comes first, so a cut file still lists every frame
    "h264 faststart mp4": (
        "fs.mp4",
        "mp4",
        "libx264",
        {},
        {"container_options": {"movflags": "faststart"}},
    ),
}


def _real(tmp_path, kind):
    name, fmt, codec, options, extra = REAL_FILES[kind]
    return _encode(tmp_path / name, fmt, codec, options, **extra)


def _decoded(path, **kw) -> int:
    return sum(1 for _ in video_io.iter_frames(path, **kw))


@pytest.mark.parametrize("kind", sorted(REAL_FILES))
def test_real_files_count_what_decodes(tmp_path, kind):
    path = _real(tmp_path, kind)
    info = video_io.probe(path)
    assert (info.frames, info.height, info.width, info.truncated) == (FRAMES, 48, 64, False)
    assert _decoded(path, expected=info.frames) == FRAMES
    assert video_io.is_video_path(path)


@pytest.mark.parametrize("kind", sorted(set(REAL_FILES) - {"h264 b-frames mp4", "h264 mov"}))
def test_truncated_copies_are_refused_then_accepted(tmp_path, kind):
    """A file cut short is refused with one line naming it and the frames; on request the
    frames that decode are used. (An MP4/MOV whose index is at the end is unreadable when cut:
    see test_bad_inputs_raise_one_clear_error.)"""
    path = _real(tmp_path, kind)
    data = path.read_bytes()
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(data[: len(data) * 6 // 10 + 7])  # not on a packet boundary
    with pytest.raises(VideoError, match="is truncated") as err:
        video_io.probe(cut)
    message = str(err.value)
    assert "\n" not in message and str(cut) in message and "--allow-truncated" in message
    assert " frames " in message
    info = video_io.probe(cut, allow_truncated=True)
    assert info.truncated and 0 < info.frames < FRAMES
    n = _decoded(cut, expected=info.frames, allow_truncated=True)
    assert n == info.frames


def test_mp4_with_a_discarded_packet_is_accepted(tmp_path):
    """An H.264 MP4 (B-frames, edit list) whose container lists one packet more than decodes,
    as FFmpeg flags it to be discarded: the count is what decodes."""
    import av

    path = _encode(tmp_path / "edit.mp4", "mp4", "libx264", {"bf": "2"}, shift=1)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        assert stream.frames == len(packets) == FRAMES  # what the container lists
        assert sum(p.is_discard for p in packets) == 1
    info = video_io.probe(path)
    assert (info.frames, info.truncated) == (FRAMES - 1, False)
    assert _decoded(path, expected=info.frames) == FRAMES - 1


def test_mp4_edit_list_trim_is_whole_and_its_cut_copy_is_not(tmp_path):
    """FFmpeg leaves the samples an MP4 edit list cuts off out of its index, so an MP4 lists
    more samples than it has packets without being cut; a copy that lacks its last sample is
    cut, which its mdat box (longer than the file) shows."""
    path = _encode(
        tmp_path / "edit.mp4",
        "mp4",
        "libx264",
        {"bf": "2"},
        shift=1,
        container_options={"movflags": "faststart"},
    )
    assert video_io.probe(path).frames == FRAMES - 1
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(VideoError, match="its mdat box needs 200 more bytes"):
        video_io.probe(cut)


def test_program_stream_walk_finds_a_cut_packet():
    """The MPEG-PS check on hand-made bytes: a pack header, then a PES packet of 10 bytes."""
    pack = b"\x00\x00\x01\xba" + bytes([0x44]) + bytes(8) + bytes([0xF8])  # MPEG-2, no stuffing
    pes = b"\x00\x00\x01\xe0\x00\x0a" + bytes(10)
    whole = pack + pes
    assert containers._walk_program_stream(whole, 0) == len(whole)
    assert containers._walk_program_stream(whole[:-3], 0) == len(whole)  # 3 bytes missing
    assert containers._walk_program_stream(b"\x00\x00\x02" + whole, 0) is None  # not a PS


@pytest.mark.parametrize("suffix", [".avi", ".mpg", ".mp4", ".gif"])
def test_frame_rates_are_normalised_for_the_codec(tmp_path, suffix):
    """15 fps stored as 1000000/66667 (a real AVI's rate), which MPEG-4 part 2 refuses as it is
    (avcodec_open2 returns 22): every codec gets a rate it accepts."""
    out = tmp_path / f"out{suffix}"
    assert video_io.write_video(out, iter([pattern(3, 16, 16)]), Fraction(1000000, 66667)) == 3
    info = video_io.probe(out)
    assert info.frames == 3
    if suffix != ".gif":
        assert info.fps == 15


def test_writable_fps():
    assert video_io.writable_fps("mpeg4", Fraction(1000000, 66667)) == 15
    assert video_io.writable_fps("libx264", Fraction(30000, 1001)) == Fraction(30000, 1001)
    assert video_io.writable_fps("mpeg4", Fraction(100003, 7)).numerator <= 65535
    # MPEG-2 has a fixed table: 7 fps is not in it, so the nearest rate that is
    assert video_io.writable_fps("mpeg2video", Fraction(7)) in video_write._MPEG2_RATES
    assert video_io.writable_fps("mpeg2video", Fraction(25)) == 25
    assert video_io.writable_fps("gif", Fraction(24)) == Fraction(25)  # 4/100 s a frame
    with pytest.raises(ValueError, match="fps"):
        video_io.writable_fps("libx264", Fraction(0))


def test_one_list_of_readable_containers():
    from cdt_fast.data import video as data_video

    assert data_video.VIDEO_SUFFIXES == video_io.READ_SUFFIXES
    for suffix in (".mpg", ".mpeg", ".ts", ".avi", ".webm", ".mkv", ".mov", ".mp4"):
        assert suffix in video_io.READ_SUFFIXES and video_io.is_video_path("x" + suffix.upper())
    assert set(video_io.VIDEO_SUFFIXES) <= set(video_io.READ_SUFFIXES)


def test_png_folders_get_normal_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        video_io.write_video(tmp_path / "frames", iter([pattern(2, 8, 8)]), Fraction(24))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "frames").stat().st_mode) == 0o755


def test_unwritable_outputs_fail_before_any_work(tmp_path):
    import os

    (tmp_path / "file").write_text("")
    with pytest.raises(VideoError, match="is not a directory"):
        video_io.check_output_path(tmp_path / "file" / "out.mp4")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(VideoError, match="not writable"):
            video_io.check_output_path(locked / "out.mp4")


def test_write_errors_do_not_name_the_temporary_file(tmp_path, monkeypatch):
    import av

    def fail(tmp, *args):
        raise av.error.InvalidDataError(22, "Invalid argument", tmp)

    monkeypatch.setattr(video_write, "_write_container", fail)
    with pytest.raises(VideoError, match="writing .*b.mp4 failed") as err:
        video_io.write_video(tmp_path / "b.mp4", iter([pattern(2, 8, 8)]), 24)
    assert ".tmp" not in str(err.value) and str(tmp_path / "b.mp4") in str(err.value)
    assert list(tmp_path.iterdir()) == []
