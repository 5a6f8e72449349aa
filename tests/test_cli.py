"""The video commands: reconstruct, encode, decode, encode-dataset, info; bad input handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

import cdt_fast
from cdt_fast import latents, video_io
from cdt_fast.cli import COMMANDS, main
from cdt_fast.cli._common import default_model_path

from . import test_video_io as bad
from .helpers import free_port, put_in_hub_cache, run_cli
from .video_clips import pattern, read_pngs, tiny_model_file, write_clip, write_pngs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {
        "root": root,
        "small": tiny_model_file(root / "small.safetensors", "small"),
        "base": tiny_model_file(root / "base.safetensors", "base"),
        "clip": write_clip(root / "clip.mp4", pattern(10, 50, 70), Fraction(24)),
        "pngs": write_pngs(root / "pngs", pattern(6, 21, 27, seed=1)),
    }


def assert_clean_failure(rc, err, match):
    assert rc != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err


def test_help_lists_every_command(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name.replace("_", "-"), "--help"])
        assert exit_.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("reconstruct", "encode", "decode", "encode-dataset", "info", "demo"):
        assert name in out


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif"])
def test_reconstruct_keeps_frames_size_fps(capsys, work, tmp_path, suffix):
    out = tmp_path / f"recon{suffix}"
    rc, stdout, _ = run_cli(
        capsys, "reconstruct", work["clip"], "-o", out, "--model", work["small"]
    )
    assert rc == 0
    info = video_io.probe(out)
    assert (info.frames, info.height, info.width) == (10, 50, 70)
    if suffix != ".gif":  # gif stores 1/100 s durations
        assert info.fps == 24
    assert "PSNR" in stdout and "SSIM" in stdout and "frames/s" in stdout


def test_reconstruct_scores_a_perfect_copy_high():
    from cdt_fast.metrics.quality import frame_psnr, frame_ssim
    from cdt_fast.pipelines import frame_scores as _score

    a = pattern(3, 20, 24)
    b = a.copy()
    b[0, 0, 0, 0] ^= 1
    assert _score(frame_psnr, a, a).min() == pytest.approx(100.0)
    assert _score(frame_ssim, a, a) == pytest.approx(1.0)
    assert 60 < _score(frame_psnr, a, b)[0] < 100
    noise = np.random.default_rng(0).integers(0, 256, a.shape, dtype=np.uint8)
    assert _score(frame_ssim, a, noise).max() < 0.2
    assert np.isnan(_score(frame_ssim, a[:, :8, :8], a[:, :8, :8])).all()
    # PSNR by hand: one frame off by 10 levels everywhere
    c = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = ((c.astype(float) - a) / 255) ** 2
    np.testing.assert_allclose(
        _score(frame_psnr, a, c), 10 * np.log10(1 / mse.reshape(3, -1).mean(1))
    )


@pytest.mark.parametrize("preset", ["small", "base"])
def test_encode_decode_equals_reconstruct_and_the_model(capsys, work, tmp_path, preset):
    """The CLI's padded, lazily read pipeline gives exactly the model's encode/decode."""
    model_file, src = work[preset], work["pngs"]
    latent = tmp_path / "z.safetensors"
    assert (
        run_cli(capsys, "encode", src, "-o", latent, "--model", model_file, "--fps", "12")[0] == 0
    )
    assert (
        run_cli(
            capsys, "decode", latent, "-o", tmp_path / "dec", "--model", model_file, "--seed", "3"
        )[0]
        == 0
    )
    assert (
        run_cli(
            capsys, "reconstruct", src, "-o", tmp_path / "rec", "--model", model_file, "--seed", "3"
        )[0]
        == 0
    )
    decoded, reconstructed = read_pngs(tmp_path / "dec"), read_pngs(tmp_path / "rec")
    assert decoded.shape == (6, 21, 27, 3)
    np.testing.assert_array_equal(decoded, reconstructed)

    # the same through the Python API (the engine, which the CLI runs) on the replicate-padded clip
    reference = cdt_fast.load(model_file)
    model = cdt_fast.accelerate(reference)
    frames = read_pngs(src)
    padded = np.concatenate([frames, np.repeat(frames[-1:], 3, 0)])  # 6 -> 9 frames
    x = video_io.frames_to_tensor(padded, 24, 32)
    z = model.encode(x)
    info = latents.read_latent(latent)
    torch.testing.assert_close(info.latent, z, rtol=0, atol=0)
    torch.testing.assert_close(reference.encode(x), z, rtol=0, atol=1e-4)
    # the CLI streams the latent into the engine, which then draws each latent frame's noise as
    # it reaches it (memory flat in the clip's length)
    y = model.decode(iter(z.split(1, dim=2)), generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(video_io.tensor_to_frames(y[:, :, :6], 21, 27), decoded)

    # another seed gives another decode (the comparison above can fail)
    assert (
        run_cli(
            capsys, "decode", latent, "-o", tmp_path / "dec7", "--model", model_file, "--seed", "7"
        )[0]
        == 0
    )
    assert not np.array_equal(read_pngs(tmp_path / "dec7"), decoded)


def test_latent_metadata(capsys, work, tmp_path):
    latent = tmp_path / "z.safetensors"
    assert run_cli(capsys, "encode", work["clip"], "-o", latent, "--model", work["small"])[0] == 0
    info = latents.read_latent(latent)
    config = cdt_fast.load(work["small"]).config
    assert info.config == config and info.architecture_hash == config.architecture_hash()
    assert info.latent_scale == config.latent_scale
    assert info.fps == 24
    assert info.video["frames"] == 10 and (info.video["height"], info.video["width"]) == (50, 70)
    assert info.video["padding"] == {"frames": 3, "bottom": 6, "right": 2}
    assert info.shape == (1, config.latent_dim, 4, 7, 9) == tuple(info.latent.shape)


def test_size_and_chunk_frames(capsys, work, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = ["--model", work["small"], "--size", "24x40"]
    assert run_cli(capsys, "encode", work["clip"], "-o", a, *common)[0] == 0
    assert run_cli(capsys, "encode", work["clip"], "-o", b, *common, "--chunk-frames", "4")[0] == 0
    za, zb = latents.read_latent(a), latents.read_latent(b)
    assert za.shape == (1, 4, 4, 3, 5)
    assert (za.video["height"], za.video["width"], za.video["source_height"]) == (24, 40, 50)
    torch.testing.assert_close(za.latent, zb.latent, rtol=1e-5, atol=1e-5)  # chunk invariance
    rc, _, err = run_cli(capsys, "encode", work["clip"], "-o", a, *common, "--chunk-frames", "6")
    assert_clean_failure(rc, err, "multiple of 4")


def test_decode_refuses_another_models_latent(capsys, work, tmp_path):
    latent = tmp_path / "z.safetensors"
    assert run_cli(capsys, "encode", work["clip"], "-o", latent, "--model", work["small"])[0] == 0
    out = tmp_path / "out.mp4"
    rc, _, err = run_cli(capsys, "decode", latent, "-o", out, "--model", work["base"])
    assert_clean_failure(rc, err, "hash")
    assert "'small'" in err and "'base'" in err
    assert not out.exists()


def test_model_selection(capsys, work, tmp_path):
    # an upstream-style state dict without config needs --preset
    model = cdt_fast.load(work["small"])
    ckpt = tmp_path / "upstream.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    latent = tmp_path / "z.safetensors"
    rc, _, err = run_cli(capsys, "encode", work["clip"], "-o", latent, "--model", ckpt)
    assert_clean_failure(rc, err, "--preset")
    # the tiny widths are not the preset's: a clear mismatch line
    rc, _, err = run_cli(
        capsys, "encode", work["clip"], "-o", latent, "--model", ckpt, "--preset", "small"
    )
    assert_clean_failure(rc, err, "does not fit")
    rc, _, err = run_cli(
        capsys, "encode", work["clip"], "-o", latent, "--model", tmp_path / "missing.safetensors"
    )
    assert_clean_failure(rc, err, "model not found")
    assert not latent.exists()


def test_default_model_is_the_bundled_demo(capsys, work, tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --model"):
        default_model_path(tmp_path)
    try:
        default_model_path()
    except FileNotFoundError:
        rc, _, err = run_cli(capsys, "encode", work["clip"], "-o", tmp_path / "z.safetensors")
        assert_clean_failure(rc, err, "demo model")
    else:  # the demo model is installed: it is what runs without --model
        assert run_cli(capsys, "encode", work["clip"], "-o", tmp_path / "z.safetensors")[0] == 0


@pytest.mark.parametrize("kind", sorted(bad.BAD_INPUTS))
@pytest.mark.parametrize("command", ["reconstruct", "encode"])
def test_bad_video_input_fails_cleanly(capsys, work, tmp_path, kind, command):
    make, _, match = bad.BAD_INPUTS[kind]
    src = make(tmp_path)
    out = tmp_path / ("out.mp4" if command == "reconstruct" else "z.safetensors")
    before = set(tmp_path.rglob("*"))
    rc, _, err = run_cli(capsys, command, src, "-o", out, "--model", work["small"])
    assert_clean_failure(rc, err, match)
    assert set(tmp_path.rglob("*")) == before  # no output, no temporary left


def test_bad_latent_and_output_fail_cleanly(capsys, work, tmp_path):
    out = tmp_path / "out.mp4"
    cases = [
        (work["small"], "not a latent file"),  # a model, not a latent
        (tmp_path / "missing.safetensors", "not found"),
        (bad.corrupt_mp4(tmp_path), "not a latent file"),
    ]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    cases.append((junk, "not a readable"))
    for latent, match in cases:
        rc, _, err = run_cli(capsys, "decode", latent, "-o", out, "--model", work["small"])
        assert_clean_failure(rc, err, match)
    rc, _, err = run_cli(
        capsys, "reconstruct", work["clip"], "-o", tmp_path / "out.xyz", "--model", work["small"]
    )
    assert_clean_failure(rc, err, "unsupported output format")
    rc, _, err = run_cli(
        capsys, "encode", work["clip"], "-o", tmp_path / "z.pt", "--model", work["small"]
    )
    assert_clean_failure(rc, err, ".safetensors")
    assert not out.exists()


def test_no_traceback_from_the_console_script(work, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdt_fast",
            "encode",
            str(tmp_path / "no.mp4"),
            "-o",
            str(tmp_path / "z.safetensors"),
            "--model",
            str(work["small"]),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("cdt-fast encode: error: input not found")


def test_info(capsys, work, tmp_path):
    latent = tmp_path / "z.safetensors"
    run_cli(capsys, "encode", work["clip"], "-o", latent, "--model", work["small"])
    rc, out, _ = run_cli(capsys, "info", latent, "--json")
    d = json.loads(out)
    assert rc == 0 and d["kind"] == "latent" and d["latent_shape"] == [1, 4, 4, 7, 9]
    assert d["video"]["frames"] == 10 and d["architecture_hash"]
    rc, out, _ = run_cli(capsys, "info", work["base"], "--json")
    d = json.loads(out)
    model = cdt_fast.load(work["base"])
    assert d["kind"] == "model checkpoint" and d["config"] == model.config.to_dict()
    assert d["parameters"] == sum(p.numel() for p in model.state_dict().values())
    assert d["tensors"] == len(model.state_dict())
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    rc, out, _ = run_cli(capsys, "info", ckpt)
    assert rc == 0 and "config: none stored" in out
    rc, out, _ = run_cli(capsys, "info", work["clip"])
    assert rc == 0 and "frames: 10" in out and "fps: 24" in out
    rc, _, err = run_cli(capsys, "info", tmp_path / "nothing.bin")
    assert_clean_failure(rc, err, "not found")


# -- encode-dataset --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    write_clip(root / "a.mp4", pattern(5, 16, 24, seed=1))
    (root / "sub").mkdir()
    write_clip(root / "sub" / "b.webm", pattern(7, 17, 23, seed=2), codec="libvpx-vp9")
    write_clip(root / "sub" / "c.mp4", pattern(2, 24, 16, seed=3))
    write_clip(root / "sub" / "d.gif", pattern(3, 8, 8, seed=4), codec="gif")
    bad.corrupt_mp4(root)  # root/corrupt.mp4: recorded as an error, the rest still encode
    (root / "notes.txt").write_text("not a video")
    return root


def _launch(args, world: int):
    """Run encode-dataset as `world` processes with torchrun's environment (gloo barrier)."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cdt_fast", "encode-dataset", *map(str, args)],
                env=env,
                cwd=str(REPO),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    return results


def _latents(out: Path):
    return {
        p.relative_to(out).as_posix(): latents.read_latent(p).latent
        for p in sorted(out.rglob("*.safetensors"))
    }


def test_encode_dataset_two_processes_equal_one_and_resume(capsys, work, dataset, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    rc, out, err = run_cli(capsys, "encode-dataset", dataset, "-o", one, "--model", work["small"])
    assert rc == 1 and "1 failed" in out and "skipped corrupt.mp4" in err  # the corrupt clip
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 4, "error": 1, "pending": 0}
    assert [e["source"] for e in manifest["items"]] == [
        "a.mp4",
        "corrupt.mp4",
        "sub/b.webm",
        "sub/c.mp4",
        "sub/d.gif",
    ]
    b = next(e for e in manifest["items"] if e["source"] == "sub/b.webm")
    assert (b["frames"], b["height"], b["width"], b["fps"]) == (7, 17, 23, "24")
    assert b["latent"] == "sub/b.webm.safetensors" and b["latent_shape"] == [1, 4, 3, 3, 3]

    # two ranks, interrupted after one new video each, then resumed
    first = _launch([dataset, "-o", two, "--model", work["small"], "--max-items", "1", "-q"], 2)
    # rank 1 holds the corrupt clip; rank 0 reports it too, from the merged manifest
    assert [r[0] for r in first] == [1, 1], first
    partial = json.loads((two / "manifest.json").read_text())
    assert not partial["complete"]
    assert partial["counts"] == {"ok": 2, "error": 1, "pending": 2}
    done = {p: p.stat().st_mtime_ns for p in two.rglob("*.safetensors")}
    assert len(done) == 2
    # a rank killed mid-write leaves a temporary beside the latent it was writing
    stale = two / "sub" / ".b.webm.safetensors.1234.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"partial")
    second = _launch([dataset, "-o", two, "--model", work["small"], "-q"], 2)
    assert [r[0] for r in second] == [1, 1], second
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished ones skipped
    assert not [p for p in two.rglob(".*")]  # no temporaries or partial manifests left

    assert json.loads((two / "manifest.json").read_text())["items"] == manifest["items"]
    a, b2 = _latents(one), _latents(two)
    assert sorted(a) == sorted(b2) and len(a) == 4
    for key in a:
        torch.testing.assert_close(a[key], b2[key], rtol=0, atol=0)


def test_encode_dataset_refuses_mixing_models(capsys, work, dataset, tmp_path):
    out = tmp_path / "out"
    run_cli(
        capsys, "encode-dataset", dataset, "-o", out, "--model", work["small"], "--max-items", "1"
    )
    rc, _, err = run_cli(capsys, "encode-dataset", dataset, "-o", out, "--model", work["base"])
    assert_clean_failure(rc, err, "another model")
    rc, _, err = run_cli(
        capsys, "encode-dataset", tmp_path / "none", "-o", out, "--model", work["small"]
    )
    assert_clean_failure(rc, err, "not found")


class _FakeEngine(torch.nn.Module):
    """Stands in for cdt_fast.accelerate's module: the reference API without encode_chunks or
    config, so the CLI's fallbacks run."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, []

    def encode(self, x, chunk_frames=None):
        self.calls.append(("encode", tuple(x.shape)))
        return self.inner.encode(x, chunk_frames=chunk_frames)

    def decode_stream(self, z, **kwargs):
        self.calls.append(("decode_stream", tuple(z.shape)))
        return self.inner.decode_stream(z, **kwargs)


def test_uses_the_engine_when_it_exists(capsys, work, tmp_path, monkeypatch):
    engines = []

    def accelerate(model):
        engines.append(_FakeEngine(model))
        return engines[-1]

    monkeypatch.setattr(cdt_fast, "accelerate", accelerate, raising=False)
    args = ["--model", work["small"], "--seed", "5"]
    rc, out, _ = run_cli(capsys, "reconstruct", work["pngs"], "-o", tmp_path / "eng", *args)
    assert rc == 0 and "(engine, cpu float32)" in out
    assert [c[0] for c in engines[0].calls] == ["encode", "decode_stream"]
    assert engines[0].calls[0][1] == (1, 3, 9, 24, 32)  # the padded clip, read whole
    rc, out, _ = run_cli(
        capsys, "reconstruct", work["pngs"], "-o", tmp_path / "ref", *args, "--reference"
    )
    assert rc == 0 and "(reference, cpu float32)" in out and len(engines) == 1
    np.testing.assert_array_equal(read_pngs(tmp_path / "eng"), read_pngs(tmp_path / "ref"))


def test_encode_streams_the_clip_without_autograd(work):
    """Frames are decoded chunk by chunk as the encoder walks the clip, and no autograd graph
    chains the chunks together (it would make memory grow with the video's length)."""
    from cdt_fast.pipelines import encode_clip

    model = cdt_fast.load(work["small"])
    frames = pattern(21, 16, 16)
    consumed = []

    def source():
        for i, frame in enumerate(frames):
            consumed.append(i)
            yield frame

    clip = video_io.PaddedClip(source(), 21, 16, 16)
    chunks = model.encode_chunks(clip, 4)
    next(chunks)
    assert len(consumed) == 1  # the first chunk holds frame 0 only: (21 - 1) % 4 == 0
    next(chunks)
    assert len(consumed) == 5
    with torch.enable_grad():
        z = encode_clip(model, video_io.PaddedClip(iter(frames), 21, 16, 16), 4)
    assert z.grad_fn is None and not z.requires_grad
    torch.testing.assert_close(
        z, model.encode(video_io.frames_to_tensor(frames, 16, 16)), rtol=1e-5, atol=1e-5
    )


def test_preset_name_needs_the_release_checkpoint(capsys, work, tmp_path, monkeypatch, hub_cache):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, "encode", work["clip"], "-o", "z.safetensors", "--model", "small")
    assert rc == 2
    assert_clean_failure(rc, err, "cdt_small.ckpt of the Hugging Face repository yangnianzu/CDT")
    assert "--ckpt PATH" in err
    # --ckpt, and the Hub cache, are read for the preset: a tiny checkpoint does not fit it
    tiny = cdt_fast.load(work["small"])
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": tiny.state_dict()}, ckpt)
    snapshot = put_in_hub_cache(hub_cache, "someone/cdt", "cdt_small.ckpt", ckpt.read_bytes())
    for extra in (["--ckpt", ckpt], ["--hub-repo", "someone/cdt"]):
        argv = ["encode", work["clip"], "-o", "z.safetensors", "--model", "small", *extra]
        rc, _, err = run_cli(capsys, *argv)
        assert_clean_failure(rc, err, "does not fit the model")
        assert str(ckpt if extra[0] == "--ckpt" else snapshot) in err
    rc, _, err = run_cli(capsys, "encode", work["clip"], "-o", "z.safetensors", "--ckpt", ckpt)
    assert_clean_failure(rc, err, "--ckpt and --hub-* go with --model base|small")
    rc, _, err = run_cli(
        capsys,
        "encode",
        work["clip"],
        "-o",
        "z.safetensors",
        "--model",
        "small",
        "--preset",
        "base",
    )
    assert_clean_failure(rc, err, "disagree")


@pytest.mark.parametrize("backend", ["flash", "xformers"])
def test_generate_refuses_an_attention_backend_that_cannot_run(capsys, tmp_path, backend):
    # on CPU neither can run (each needs CUDA); the check comes before any sampling
    out = tmp_path / "g.mp4"
    rc, _, err = run_cli(
        capsys, "generate", "demo", "-o", out, "--backend", backend, "--device", "cpu"
    )
    assert rc == 2
    assert_clean_failure(rc, err, f"--backend {backend} cannot run here")
    assert not out.exists()


def test_backend_choices_are_the_generators_backends():
    """The commands list the attention backends without importing torch; the lists must stay
    the generator's (training without the forward-only Triton kernel), plus the deprecated
    'math'."""
    import argparse

    from cdt_fast.cli import build_parser
    from cdt_fast.generation.attention import BACKENDS

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]

    def choices(command):
        (backend,) = [a for a in commands.choices[command]._actions if a.dest == "backend"]
        return list(backend.choices)

    assert choices("generate") == [*BACKENDS, "math"]
    assert choices("gen-train") == [b for b in BACKENDS if b != "triton"] + ["math"]


def test_train_and_gen_train_share_their_run_options():
    from cdt_fast.cli import build_parser
    from cdt_fast.cli._training import run_overrides

    parser = build_parser()
    common = ["--out", "run", "--steps", "7", "--workers", "2", "--ema-decay", "0.9", "-q"]
    train = parser.parse_args(["train", *common, "--kl-weight", "0.5"])
    gen = parser.parse_args(["gen-train", "latents", *common, "--backend", "math"])
    for args in (train, gen):
        assert args.quiet and args.out == "run"
        assert run_overrides(args) == {"steps": 7, "num_workers": 2, "ema_decay": 0.9}
    assert run_overrides(train, kl=train.kl_weight, lpips=None)["kl"] == 0.5
    assert parser.parse_args(["train", "--out", "r", "--no-progress"]).quiet
