"""The video commands on real-world files: up-front argument checks, truncated and odd inputs,
frame-rate and size normalisation on output, parts of a clip, quality of the written file,
checked latent metadata, option spellings, a fast --help, and memory flat in the clip's length."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("av")

from cdt_fast import pipelines, video_io
from cdt_fast.cli import _common, _console, build_parser

from .helpers import run_cli
from .video_clips import pattern, tiny_model_file, write_clip


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_videoio")
    return {
        "root": root,
        "model": tiny_model_file(root / "small.safetensors", "small"),
        "clip": write_clip(root / "clip.mp4", pattern(12, 48, 64), Fraction(24)),
    }


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert ".tmp" not in err, err
    for needle in needles:
        assert needle in err, err


# -- --help without torch --------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["reconstruct", "--help"], ["eval", "--help"]])
def test_help_does_not_import_torch(argv):
    """``python -m cdt_fast --help`` answers without importing torch (it took ~3 s)."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['cdt_fast'] + {argv!r}\n"
        "try:\n"
        "    runpy.run_module('cdt_fast', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO TORCH"), proc.stdout[-300:]
    assert "usage:" in proc.stdout


# -- up-front checks -------------------------------------------------------------------------------
@pytest.fixture
def nothing_runs(monkeypatch):
    """Fail loudly if a command loads a model or reads a frame."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(_common, "load_model", forbidden)
    monkeypatch.setattr(video_io, "probe", forbidden)
    monkeypatch.setattr(video_io, "iter_frames", forbidden)


BAD_ARGS = [
    (["--steps", "0"], "--steps"),
    (["--size", "0"], "--size"),
    (["--size", "-5"], "--size"),
    (["--size", "3x"], "--size"),
    (["--frames", "0"], "--frames"),
    (["--start", "-1"], "--start"),
    (["--crf", "99"], "--crf"),
    (["--fps", "0"], "--fps"),
    (["--chunk-frames", "6"], "--chunk-frames"),
]


@pytest.mark.parametrize("extra,name", BAD_ARGS)
def test_bad_arguments_fail_before_any_work(capsys, work, tmp_path, nothing_runs, extra, name):
    rc, _, err = run_cli(capsys, "reconstruct", work["clip"], "-o", tmp_path / "o.mp4", *extra)
    assert_one_line_error(rc, err, name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["reconstruct", "encode", "decode", "encode-dataset"])
def test_unwritable_output_fails_before_any_work(capsys, work, tmp_path, nothing_runs, command):
    blocker = tmp_path / "file"
    blocker.write_text("")
    name = {"encode": "z.safetensors", "encode-dataset": "out"}.get(command, "out.mp4")
    src = work["root"] if command == "encode-dataset" else work["clip"]
    rc, _, err = run_cli(capsys, command, src, "-o", blocker / name)
    assert_one_line_error(rc, err, "-o", "not a directory")


def test_decode_checks_the_output_before_reading_the_latent(capsys, work, tmp_path, nothing_runs):
    rc, _, err = run_cli(
        capsys, "decode", tmp_path / "missing.safetensors", "-o", tmp_path / "o.xyz"
    )
    assert_one_line_error(rc, err, "unsupported output format")


# -- truncated files, parts of a clip --------------------------------------------------------------
def _cut_avi(root):
    """An MPEG-4 AVI cut to 60 % of its bytes: only its container's structure shows the cut."""
    rng = np.random.default_rng(0)
    frames = np.clip(pattern(12, 48, 64) + rng.normal(0, 40, (12, 48, 64, 3)), 0, 255)
    full = write_clip(root / "full.avi", frames.astype(np.uint8), Fraction(24), "mpeg4")
    cut = root / "cut.avi"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10 + 7])
    return cut


def test_truncated_input_refused_then_accepted(capsys, work, tmp_path):
    cut = _cut_avi(tmp_path)
    out = tmp_path / "o.mp4"
    rc, _, err = run_cli(capsys, "reconstruct", cut, "-o", out, "--model", work["model"], "-q")
    assert_one_line_error(rc, err, str(cut), "truncated", "of the 12", "--allow-truncated")
    assert not out.exists()
    rc, stdout, err = run_cli(
        capsys,
        "reconstruct",
        cut,
        "-o",
        out,
        "--model",
        work["model"],
        "-q",
        "--allow-truncated",
    )
    assert rc == 0, err
    info = video_io.probe(cut, allow_truncated=True)
    assert 0 < info.frames < 12 and video_io.probe(out).frames == info.frames


def test_start_and_frames_take_part_of_a_clip(capsys, work, tmp_path):
    z = tmp_path / "z.safetensors"
    argv = ["--model", work["model"], "-q", "--start", "3", "--frames", "5"]
    assert run_cli(capsys, "encode", work["clip"], "-o", z, *argv)[0] == 0
    meta = json.loads(
        __import__("safetensors").safe_open(str(z), "pt").metadata()["cdt_fast.video"]
    )
    assert (meta["frames"], meta["start"]) == (5, 3)
    out = tmp_path / "part"
    assert run_cli(capsys, "reconstruct", work["clip"], "-o", out, *argv)[0] == 0
    assert video_io.probe(out).frames == 5
    rc, _, err = run_cli(
        capsys, "encode", work["clip"], "-o", z, "--model", work["model"], "--start", "12"
    )
    assert_one_line_error(rc, err, "--start 12", "12 frames")


# -- output: frame rate, even sides, quality of the written file ------------------------------------
def test_avi_output_at_a_container_rate_of_15_fps(capsys, work, tmp_path):
    """A source whose container says 1000000/66667 fps, a rate MPEG-4 part 2 refuses as it is
    (avcodec_open2 returns 22): the output gets one it accepts, rather than failing after all the
    compute."""
    src = write_clip(tmp_path / "src.mp4", pattern(5, 32, 32), Fraction(1000000, 66667))
    assert video_io.probe(src).fps == Fraction(1000000, 66667)
    for suffix in (".avi", ".mpg"):
        out = tmp_path / f"out{suffix}"
        rc, _, err = run_cli(capsys, "reconstruct", src, "-o", out, "--model", work["model"], "-q")
        assert rc == 0, err
        info = video_io.probe(out)
        assert (info.frames, info.fps) == (5, 15)


def test_size_gives_even_sides_and_yuv420p(capsys, work, tmp_path):
    """--size on 4:3 video gives even sides and yuv420p H.264 (odd widths would need yuv444p,
    which players refuse)."""
    import av

    src = write_clip(tmp_path / "43.mp4", pattern(3, 48, 64), Fraction(24))
    out = tmp_path / "o.mp4"
    rc, stdout, err = run_cli(
        capsys, "reconstruct", src, "-o", out, "--model", work["model"], "-q", "--size", "34"
    )
    assert rc == 0, err
    info = video_io.probe(out)
    assert (info.height, info.width) == (34, 46) and "46x34" in stdout  # was 34x45
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    odd = write_clip(tmp_path / "odd.mp4", pattern(3, 21, 27), Fraction(24))  # yuv444p source
    rc, _, err = run_cli(capsys, "reconstruct", odd, "-o", out, "--model", work["model"], "-q")
    assert rc == 0, err
    assert (video_io.probe(out).height, video_io.probe(out).width) == (20, 26)
    rc, _, err = run_cli(
        capsys,
        "reconstruct",
        odd,
        "-o",
        out,
        "--model",
        work["model"],
        "-q",
        "--pix-fmt",
        "yuv444p",
    )
    assert rc == 0, err
    assert (video_io.probe(out).height, video_io.probe(out).width) == (21, 27)


def _psnr_lines(stdout):
    return [line for line in stdout.splitlines() if line.startswith("PSNR")]


def test_quality_report_names_what_it_measures_and_crf_changes_the_written_file(
    capsys, work, tmp_path
):
    lines = {}
    for crf in ("0", "51"):
        rc, stdout, err = run_cli(
            capsys,
            "reconstruct",
            work["clip"],
            "-o",
            tmp_path / f"o{crf}.mp4",
            "--model",
            work["model"],
            "-q",
            "--crf",
            crf,
            "--score-written",
        )
        assert rc == 0, err
        lines[crf] = _psnr_lines(stdout)
        assert len(lines[crf]) == 2
        assert "before video encoding" in lines[crf][0]
        assert f"written file {tmp_path / f'o{crf}.mp4'}" in lines[crf][1]
    assert lines["0"][0] == lines["51"][0]  # the decoder's frames do not depend on --crf
    assert lines["0"][1] != lines["51"][1]  # the file written does


# -- latent metadata -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,value", [("frames", 40), ("width", 200), ("height", 8), ("fps", "0"), ("frames", "x")]
)
def test_edited_latent_metadata_is_refused(capsys, work, tmp_path, key, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from cdt_fast import latents

    z = tmp_path / "z.safetensors"
    assert run_cli(capsys, "encode", work["clip"], "-o", z, "--model", work["model"], "-q")[0] == 0
    latents.read_latent(z)  # as written, it is consistent
    with safe_open(str(z), "pt") as f:
        meta, tensor = dict(f.metadata()), f.get_tensor("latent")
    video = json.loads(meta["cdt_fast.video"])
    video[key] = value
    meta["cdt_fast.video"] = json.dumps(video)
    save_file({"latent": tensor}, str(z), metadata=meta)
    with pytest.raises(ValueError, match="metadata does not match") as err:
        latents.read_latent(z)
    assert key in str(err.value) and "\n" not in str(err.value)
    rc, _, err = run_cli(capsys, "decode", z, "-o", tmp_path / "o.mp4", "--model", work["model"])
    assert_one_line_error(rc, err, "metadata does not match")


# -- option names, progress bars, dataset listing ------------------------------------------------
def test_option_spellings_agree_across_commands():
    parser = build_parser()
    for old in (["--dtype", "float32", "--no-progress"], ["--dtype", "fp32", "-q"]):
        args = parser.parse_args(["eval", "synthetic"] + old)
        assert (args.dtype, args.quiet) == ("fp32", True)
        args = parser.parse_args(["reconstruct", "in.mp4", "-o", "o.mp4"] + old)
        assert (args.dtype, args.quiet) == ("fp32", True)
    help_text = parser._subparsers._group_actions[0].choices["eval"].format_help()
    assert "--no-progress" not in help_text and "--quiet" in help_text


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    with _console.progress(10, "x", quiet=False) as bar:
        assert bar.disable


def test_encode_dataset_reads_mpg_and_skips_through_tqdm_write(capsys, work, tmp_path, monkeypatch):
    import tqdm

    data = tmp_path / "data"
    data.mkdir()
    write_clip(data / "a.mpg", pattern(5, 32, 32), Fraction(25), "mpeg2video", "mpeg")
    write_clip(data / "b.mp4", pattern(5, 32, 32), Fraction(25))
    (data / "c.avi").write_bytes(b"RIFF junk")
    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, **kw: written.append(s)))
    rc, _, _ = run_cli(
        capsys, "encode-dataset", data, "-o", tmp_path / "out", "--model", work["model"], "-q"
    )
    assert rc == 1  # c.avi failed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    status = {item["source"]: item["status"] for item in manifest["items"]}
    assert status == {"a.mpg": "ok", "b.mp4": "ok", "c.avi": "error"}
    assert len(written) == 1 and "skipped c.avi" in written[0]


def test_repeat_entries_are_frames_in_every_command(capsys, work, tmp_path):
    """An AVI whose index lists zero-length repeat entries is a whole file: ``info`` reports how
    its timing is kept, ``reconstruct`` writes every frame period (its duration kept) and
    ``encode-dataset`` takes it like any other video, while a cut copy is still refused."""
    from .avi_files import write_mjpeg_avi

    data = tmp_path / "data"
    data.mkdir()
    frames = pattern(4, 32, 48)
    still = write_mjpeg_avi(
        data / "still.avi", [frames[0], None, frames[1], frames[2], None, None, frames[3]]
    )
    whole = still.read_bytes()
    (data / "cut.avi").write_bytes(whole[: len(whole) - 10])
    rc, out, _ = run_cli(capsys, "info", still, "--json")
    summary = json.loads(out)
    assert rc == 0 and (summary["frames"], summary["timing"]) == (7, "3 repeated frames restored")
    recon = tmp_path / "recon.mp4"
    rc, out, err = run_cli(
        capsys, "reconstruct", still, "-o", recon, "--model", work["model"], "-q"
    )
    assert rc == 0, err
    assert "timing: 3 repeated frames restored" in out
    info = video_io.probe(recon)
    assert (info.frames, info.fps) == (7, 24)
    rc, _, err = run_cli(
        capsys, "encode-dataset", data, "-o", tmp_path / "out", "--model", work["model"], "-q"
    )
    assert rc == 1 and "skipped cut.avi" in err and "idx1 index" in err
    items = {
        e["source"]: e
        for e in json.loads((tmp_path / "out" / "manifest.json").read_text())["items"]
    }
    assert items["cut.avi"]["status"] == "error"
    assert (items["still.avi"]["status"], items["still.avi"]["frames"]) == ("ok", 7)
    assert items["still.avi"]["timing"] == "3 repeated frames restored"


# -- memory flat in the clip's length ---------------------------------------------------------------
_PEAK_RSS = """
import resource, sys
from cdt_fast.cli import main
rc = main(sys.argv[1:])
print("PEAK", rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_mb(argv) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS] + [str(a) for a in argv], capture_output=True, text=True
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("PEAK")]
    assert proc.returncode == 0 and line, proc.stderr[-2000:]
    _, rc, kib = line[0].split()
    assert rc == "0", proc.stderr[-2000:]
    return int(kib) / 1024


@pytest.mark.slow
def test_reconstruct_peak_memory_is_flat_in_clip_length(work, tmp_path):
    """Peak RSS of ``reconstruct`` at 33 and 129 frames of 64x64. With upstream's whole-clip
    chunk at this size and the whole video's noise it grew by ~245 MB (measured: 464 -> 709 MB,
    and 1147 MB at 257 frames); streamed, it grew by 19-85 MB in runs on a loaded machine
    (allocator noise at the shorter length) and 9 MB more from 129 to 257 frames."""
    rng = np.random.default_rng(0)
    peaks = {}
    for n in (33, 129):
        src = write_clip(
            tmp_path / f"{n}.mp4", rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        )
        peaks[n] = _peak_rss_mb(
            ["reconstruct", src, "-o", tmp_path / f"o{n}.mp4", "--model", work["model"], "-q"]
            + ["--device", "cpu"]
        )
    assert peaks[129] - peaks[33] < 150, peaks


def test_cli_streams_chunks_of_bounded_length(capsys, work, tmp_path, monkeypatch):
    """The fast check of the same property: on CPU the encoder gets chunks of at most
    MAX_CPU_CHUNK_FRAMES frames (upstream's choice at 64x64 is the whole clip), and the engine's
    decoder gets the latent as a stream, so it never draws the whole video's noise at once."""
    import torch

    import cdt_fast

    seen = {}
    real_load = _common.load_model

    def load(args):
        loaded = real_load(args)
        model = loaded.model
        encode_chunks, decode_stream = model.encode_chunks, model.decode_stream

        def chunks(x, chunk_frames=None):
            seen["chunk"] = chunk_frames
            return encode_chunks(x, chunk_frames)

        def stream(z, *args, **kwargs):
            seen["tensor"] = isinstance(z, torch.Tensor)
            seen["latent_chunk"] = kwargs.get("chunk_frames")
            return decode_stream(z, *args, **kwargs)

        model.encode_chunks, model.decode_stream = chunks, stream
        return loaded

    monkeypatch.setattr(_common, "load_model", load)
    src = write_clip(tmp_path / "long.mp4", pattern(41, 16, 16), Fraction(24))
    config = cdt_fast.load(work["model"]).config
    assert config.encode_chunk_frames(16, 16) > 41  # upstream: one chunk for the whole clip
    rc, _, err = run_cli(
        capsys, "reconstruct", src, "-o", tmp_path / "o.mp4", "--model", work["model"], "-q"
    )
    assert rc == 0, err
    assert seen["chunk"] <= pipelines.MAX_CPU_CHUNK_FRAMES
    assert seen["latent_chunk"] <= pipelines.MAX_CPU_CHUNK_FRAMES // config.time_factor
    assert seen["tensor"] is False


def test_info_reports_a_truncated_video_on_request(capsys, tmp_path):
    cut = _cut_avi(tmp_path)
    rc, _, err = run_cli(capsys, "info", cut)
    assert_one_line_error(rc, err, "truncated")
    rc, out, _ = run_cli(capsys, "info", cut, "--json", "--allow-truncated")
    summary = json.loads(out)
    assert rc == 0 and summary["truncated"] is True and 0 < summary["frames"] < 12
