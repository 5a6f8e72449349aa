"""cdt_fast.video_io: reading and writing clips of any length and size, padding, bad files."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from cdt_fast import video_io
from cdt_fast.video_io import PaddedClip, VideoError

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


def test_parse_size():
    assert video_io.parse_size(None, 50, 70) == (50, 70)
    assert video_io.parse_size("25", 50, 70) == (25, 35)
    assert video_io.parse_size("32x48", 50, 70) == (32, 48)
    with pytest.raises(ValueError, match="--size"):
        video_io.parse_size("big", 50, 70)


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


def test_write_video_odd_size_keeps_count_size_fps(tmp_path):
    frames = pattern(10, 51, 69)
    out = tmp_path / "out.mp4"
    n = video_io.write_video(out, iter([frames[:4], frames[4:]]), Fraction(30000, 1001))
    info = video_io.probe(out)
    assert n == 10 and (info.frames, info.height, info.width) == (10, 51, 69)
    assert info.fps == Fraction(30000, 1001)


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
