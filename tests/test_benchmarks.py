"""benchmarks/: the FLOP model against an independent aten-level count, timing percentiles and
memory sampling, and run.py end to end on a tiny setting (with a stand-in engine and peer so that
every kind of row is produced)."""

from __future__ import annotations

import json
import sys
import time
import types

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cdt_fast
from benchmarks import environment, flops, impls, kernel_summary, report, run, timing

from .conftest import tiny_config
from .helpers import BENCH_TINY_ARGS

# -- FLOP model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["base", "small"])
def test_flop_model_equals_aten_count(preset):
    # Hooks on our layers vs FlopCounterMode on aten ops (convolution, addmm, bmm): independent.
    # A round trip runs every layer of both networks; odd latent sizes (3x5) exercise the U-Net's
    # crop path, steps=2 the DDIM loop (CDT-small only, to keep the test short).
    config = tiny_config(preset)
    steps = 2 if preset == "small" else 1
    ours = flops.count_macs(config, "roundtrip", 9, 24, 40, steps=steps)
    assert ours.macs > 0 and ours.flops == 2 * ours.macs
    assert ours.macs == flops.aten_macs(config, "roundtrip", 9, 24, 40, steps=steps)
    if preset == "small":
        parts = [
            flops.count_macs(config, op, 9, 24, 40, steps=2).macs for op in ("encode", "decode")
        ]
        assert sum(parts) == ours.macs


def test_flop_model_covers_every_contracting_layer_kind():
    report_ = flops.count_macs(tiny_config("small"), "roundtrip", 9, 32, 32)
    assert set(report_.by_kind()) == {
        "CausalConv3d",
        "Upsample",
        "LinearAttention",
        "TimeDownsample",
        "TimeUpsample",
        "Linear",
    }
    assert set(report_.by_network()) == {"context_fn", "denoise_fn"}
    base = flops.count_macs(tiny_config("base"), "decode", 9, 32, 32).by_kind()
    assert "Upsample" not in base  # nearest + conv: counted once, by the inner conv


def test_flop_model_first_conv_by_hand():
    config = tiny_config("small")
    frames, h, w = 5, 16, 24
    layers = {l.name: l.macs for l in flops.count_macs(config, "encode", frames, h, w).layers}
    first = "model.context_fn.enc.0.0.block1.block.0"  # (3,7,7) causal conv, 3 -> dim channels
    assert layers[first] == (config.context_dim * frames * h * w) * (3 * 3 * 7 * 7)


def test_flop_model_is_chunk_invariant_on_a_real_decode():
    # The model counts one whole-clip pass; the tokenizer's real 2-chunk decode loop does the same
    # conv and attention work. Only the time-MLP linears run once per chunk (the model counts them
    # once per clip). Sizes keep every U-Net level above 1x1, where einsum stops using bmm and
    # FlopCounterMode stops counting the attention matmuls. On meta tensors for speed, so through
    # the loop behind ``decode`` (``decode`` itself checks values, which meta tensors lack).
    with torch.device("meta"):
        model = cdt_fast.CDT(tiny_config("small")).eval()
    z = torch.empty(1, model.config.latent_dim, 2, 2, 3, device="meta")
    noise = torch.empty(model.output_shape(z.shape), device="meta")
    with FlopCounterMode(display=False) as counter:
        chunks = list(model._decode_stream(z, 1, noise, None, 1))
    assert len(chunks) == 2
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = sum(n for op, n in per_op.items() if "addmm" in op or op.endswith(".mm"))
    ours = flops.count_macs(model.config, "decode", 5, 16, 24)
    assert sum(per_op.values()) - linear == 2 * (ours.macs - ours.by_kind()["Linear"])
    assert 0 < linear == 2 * 2 * ours.by_kind()["Linear"]


@pytest.mark.parametrize("bad", [dict(frames=6), dict(height=20), dict(op="train"), dict(steps=0)])
def test_flop_model_rejects_bad_shapes(bad):
    kwargs = dict(op="decode", frames=9, height=16, width=16)
    kwargs.update(bad)
    steps = kwargs.pop("steps", None)
    with pytest.raises(ValueError, match=next(iter(bad))):
        flops.count_macs(tiny_config("small"), kwargs.pop("op"), **kwargs, steps=steps)


def test_peak_table_lookup_and_pct_of_peak():
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3")[0] == "NVIDIA H100 SXM"
    assert flops.peak_tflops("NVIDIA H100 PCIe")[0] == "NVIDIA H100 PCIe"
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB")[1]["bf16"] == 312.0
    assert flops.peak_tflops("NVIDIA L40S")[0] == "NVIDIA L40S"
    assert flops.peak_tflops("NVIDIA L4")[0] == "NVIDIA L4"
    assert flops.peak_tflops("Some Future GPU") == (None, None)
    header = {"gpu_name": "NVIDIA H100 80GB HBM3", "torch_settings": {"cudnn_allow_tf32": True}}
    pct, basis = run.pct_of_peak(494.7, header, "bf16")
    assert pct == pytest.approx(50.0) and "bf16" in basis
    pct, basis = run.pct_of_peak(494.7, header, "fp32")
    assert pct == pytest.approx(100.0) and "tf32" in basis
    assert run.pct_of_peak(1.0, {"gpu_name": None}, "fp32")[0] is None


# -- timing ---------------------------------------------------------------------------------------


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 10):
        samples = list(rng.random(n) * 100)
        for q in (0, 20, 50, 80, 100):
            assert timing.percentile(samples, q) == pytest.approx(np.percentile(samples, q))
    with pytest.raises(ValueError, match="q"):
        timing.percentile([1.0], 101)
    with pytest.raises(ValueError, match="sample"):
        timing.percentile([], 50)


def test_measure_warmup_repeats_and_percentiles():
    calls = []
    durations = iter([0.0, 0.004, 0.012, 0.020, 0.028, 0.036])  # warm-up, then 5 timed calls

    def fn():
        calls.append(1)
        time.sleep(next(durations))
        return len(calls)

    t = timing.measure(fn, torch.device("cpu"), warmup=1, repeats=5, keep_output=True)
    assert len(calls) == 6 and t.repeats == 5 and t.warmup == 1 and t.output == 6
    assert all(s >= d * 0.99 for s, d in zip(t.samples_ms, [4, 12, 20, 28, 36]))
    assert t.p20 <= t.p50 <= t.p80
    assert t.p50 == timing.percentile(t.samples_ms, 50)
    assert t.peak_mem_bytes > 0 and t.peak_mem_delta_bytes >= 0 and "RSS" in t.mem_method


def test_measure_time_budget_and_bad_counts():
    t = timing.measure(lambda: time.sleep(0.03), "cpu", warmup=0, repeats=50, max_time_s=0.01)
    assert t.repeats == 1 and t.output is None
    t = timing.measure(lambda: None, "cpu", warmup=0, repeats=4, min_repeats=3, max_time_s=0.0)
    assert t.repeats == 3
    for bad in (dict(repeats=0), dict(warmup=-1), dict(repeats=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            timing.measure(lambda: None, "cpu", **bad)


def test_rss_sampler_sees_a_large_allocation():
    with timing.RssSampler() as rss:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.02)
        del block
    assert rss.peak - rss.baseline >= 48 * 2**20


# -- run.py end to end ----------------------------------------------------------------------------


class _FakeWanVAE(nn.Module):
    """Stands in for diffusers' AutoencoderKLWan: latent [B,16,T,h,w] -> video [B,3,1+4(T-1),8h,8w]."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv3d(16, 3, 1)
        self.config = types.SimpleNamespace(z_dim=16)

    @property
    def dtype(self):
        return self.proj.weight.dtype

    def decode(self, z):
        y = self.proj(z)
        y = torch.nn.functional.interpolate(y, scale_factor=(4, 8, 8))[:, :, 3:]
        return types.SimpleNamespace(sample=y)


def _fake_backends():
    return {
        "torch": types.SimpleNamespace(available=True, reason=""),
        "triton": types.SimpleNamespace(available=False, reason="needs a CUDA device"),
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of run.py on a tiny setting with the engine's torch backend (stand-in backends():
    two, one unavailable; one warm-up call, which the rows' records leave out) and a stand-in
    diffusers, so that reference, engine, length and peer rows all appear."""
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    fake_diffusers = types.ModuleType("diffusers")
    fake_diffusers.AutoencoderKLWan = _FakeWanVAE
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cdt_fast, "backends", _fake_backends, raising=False)
        mp.setitem(sys.modules, "diffusers", fake_diffusers)
        stdout = _capture(
            lambda: run.main(
                BENCH_TINY_ARGS
                + ["--results-dir", str(out), "--out", str(out / "out.json"), "--kernels"]
                + ["--warmup", "1"]
            )
        )
    torch.set_num_threads(threads)
    results = json.loads((out / "out.json").read_text())
    return out, results, stdout


def _capture(fn):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert fn() == 0
    return buf.getvalue()


def test_run_rows_have_every_field(tiny_run):
    _, results, _ = tiny_run
    assert results["schema"] == run.SCHEMA
    rows = results["rows"]
    for row in rows:
        assert set(run.ROW_FIELDS) <= set(row), set(run.ROW_FIELDS) - set(row)
        assert row["latency_ms_p20"] <= row["latency_ms_p50"] <= row["latency_ms_p80"]
        assert row["latency_ms_min"] <= row["latency_ms_p50"] <= row["latency_ms_max"]
        assert len(row["samples_ms"]) == row["repeats"] == 2  # length rows too: no single call
        assert row["frames_per_s"] == pytest.approx(row["frames"] / row["latency_ms_p50"] * 1e3)
        assert row["peak_mem_bytes"] > 0 and row["pct_peak"] is None and row["pct_peak_note"]
        assert row["widths"] == "tiny" and row["reduced"] is True and row["dtype"] == "fp32"
    main = {(r["impl"], r["op"]) for r in rows if r["suite"] == "main"}
    assert main == {(i, op) for i in ("reference", "engine-torch") for op in flops.OPS}
    expected = {
        op: flops.count_macs(run.model_config("small", True), op, 5, 32, 32).flops
        for op in flops.OPS
    }
    for r in rows:
        if r["suite"] == "main":
            assert r["tflops"] > 0 and r["flops"] == expected[r["op"]]
            # the engine's torch backend on CPU is the reference's arithmetic: bitwise equal
            assert r["psnr_vs_reference"] is None and r["max_abs_err_vs_reference"] == 0.0
    length = [r for r in rows if r["suite"] == "length"]
    assert {(r["impl"], r["op"], r["frames"]) for r in length} == {
        ("reference", "decode", 9),
        ("engine-torch", "decode", 9),
    }
    peer = [r for r in rows if r["suite"] == "peer"]
    assert (
        len(peer) == 1
        and peer[0]["model"] == impls.PEER_MODEL
        and "different model" in peer[0]["impl"]
    )


def _calls_of_one(op, frames=5, size=32):
    """The engine's record of one call of ``op`` on the tiny run's setting."""
    engine = cdt_fast.accelerate(cdt_fast.CDT(run.model_config("small", True)), backend="torch")
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    if op == "encode":
        engine.encode(x)
    elif op == "roundtrip":
        engine(x)
    else:
        engine.decode(engine.reference.encode(x))
    return engine.execution_record()["ops"]


def test_engine_rows_carry_what_their_timed_calls_ran_on(tiny_run):
    _, results, _ = tiny_run
    rows = [r for r in results["rows"] if r["suite"] == "main"]
    for r in rows:
        if r["impl"] == "reference":
            assert r["ran_on"] is None and r["backends_used"] is None and r["cuda_graphs"] is None
            continue
        assert r["backends_used"] == ["torch"]
        assert r["cuda_graphs"] == {
            "state": "off",
            "reason": "no CUDA graphs on cpu",
            "captures": 0,
            "replays": 0,
            "eager": r["repeats"] * (2 if r["op"] == "roundtrip" else 1),
        }
        # the timed calls only: the warm-up call is not in the record
        one = _calls_of_one(r["op"])
        assert r["ran_on"] == {
            op: {b: n * r["repeats"] for b, n in counts.items()} for op, counts in one.items()
        }
    assert {r["impl"] for r in rows} == {"reference", "engine-torch"}


def test_run_header_ratios_and_skips(tiny_run):
    _, results, _ = tiny_run
    header = results["header"]
    for key in (
        "torch",
        "cuda",
        "cudnn",
        "triton",
        "git",
        "torch_settings",
        "gpu_name",
        "cpu_model",
        "command",
    ):
        assert key in header
    assert header["torch_settings"]["num_threads"] == 1
    assert header["engine_backends"]["triton"] == {
        "available": False,
        "reason": "needs a CUDA device",
    }
    ratios = results["ratios"]
    assert {(r["impl"], r["op"]) for r in ratios["engine_vs_reference"]} >= {
        ("engine-torch", op) for op in flops.OPS
    }
    assert all(r["speedup"] > 0 for r in ratios["engine_vs_reference"])
    assert [r["frames"] for r in ratios["memory_vs_length"] if r["impl"] == "reference"] == [5, 9]
    skipped = {s.get("impl") or s.get("model"): s["reason"] for s in results["skipped"]}
    assert skipped["engine-triton"] == "needs a CUDA device"
    assert "reference-compiled" in skipped
    assert results["kernels"] == [] or isinstance(results["kernels"], list)


def test_run_writes_markdown_json_and_plot(tiny_run):
    out, results, stdout = tiny_run
    key = environment.device_key(results["header"]) + "-tiny"
    md = (out / f"{key}.md").read_text()
    assert md == stdout
    assert "| model | impl | op |" in md and "engine-torch" in md and "### small / base" in md
    assert json.loads((out / f"{key}.json").read_text())["rows"] == results["rows"]
    assert (out / f"{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_readme_table_from_results_json(tiny_run):
    out, results, _ = tiny_run
    table = _capture(lambda: run.main(["--readme-table", str(out / "out.json")]))
    assert table == report.readme_table(results)
    lines = [l for l in table.splitlines() if l.startswith("| CDT-small")]
    assert len(lines) == 6  # 2 impls x 3 ops; length rows are not in the README table
    cells = [l.split("|")[7].strip() for l in lines if "engine-torch" in l]
    speedups = [float(c.lstrip("~").split("x")[0]) for c in cells]
    assert len(speedups) == 3 and all(v > 0 for v in speedups)
    assert sum(l.startswith(f"| {impls.PEER_MODEL}") for l in table.splitlines()) == 1


def test_ratios_from_synthetic_rows():
    def row(model, impl, ms, mem, frames=17, suite="main", op="decode"):
        return dict(
            model=model,
            impl=impl,
            op=op,
            frames=frames,
            height=256,
            width=256,
            dtype="bf16",
            suite=suite,
            latency_ms_p50=ms,
            peak_mem_bytes=mem,
            peak_mem_delta_bytes=mem // 2,
        )

    rows = [
        row("base", "reference", 300.0, 1000),
        row("base", "engine-triton", 60.0, 400),
        row("base", "reference-compiled", 120.0, 800),
        row("small", "reference", 100.0, 500),
        row("base", "reference", 1200.0, 1000, frames=65, suite="length"),
    ]
    r = report.compute_ratios(rows)
    (ev,) = r["engine_vs_reference"]
    assert ev["speedup"] == pytest.approx(5.0) and ev["memory_ratio"] == pytest.approx(0.4)
    assert r["engine_vs_compiled"][0]["speedup"] == pytest.approx(2.0)
    (sb,) = r["small_vs_base"]
    assert sb["speedup"] == pytest.approx(3.0)
    assert [(m["frames"], m["peak_vs_shortest"]) for m in r["memory_vs_length"]] == [
        (17, 1.0),
        (65, 1.0),
    ]
    # On CPU the total RSS holds every model built so far: ratios use the calls' own growth.
    cpu = [
        dict(rows[0], device="cpu", peak_mem_delta_bytes=500),
        dict(rows[1], device="cpu", peak_mem_delta_bytes=100),
    ]
    assert report.compute_ratios(cpu)["engine_vs_reference"][0]["memory_ratio"] == pytest.approx(
        0.2
    )


# -- plans, arguments, discovery ------------------------------------------------------------------


def _plan(argv):
    return run.make_plan(run.build_parser().parse_args(argv))


def test_default_cpu_plan_is_reduced_and_says_so(monkeypatch):
    # cdt_fast resolves its attributes lazily: stand in for a build without the engine
    monkeypatch.setattr(
        impls, "engine_backends", lambda: ({}, "cdt_fast.accelerate is not in this build")
    )
    plan = _plan(["--device", "cpu"])
    assert plan.dtype == torch.float32 and plan.models == ["base", "small"]
    assert [(s.frames, s.height, s.suite) for s in plan.settings] == [(9, 64, "main")]
    assert plan.ops == ["encode", "decode"] and plan.repeats == 5 and plan.min_repeats == 3
    assert plan.impls == ["reference"]
    assert all(plan.reduced(s) for s in plan.settings)
    assert any("REDUCED" in n for n in plan.notes)
    assert any("reference-compiled" in n and "--full" in n for n in plan.notes)
    assert any(s["impl"] == "engine" and "accelerate" in s["reason"] for s in plan.skipped)
    full = _plan(["--device", "cpu", "--full"])
    assert "reference-compiled" in full.impls and "roundtrip" in full.ops
    assert [s.frames for s in full.settings if s.suite == "length"] == [25, 33]  # 17 is main


def test_sizes_flag_gives_whole_settings():
    plan = _plan(["--device", "cpu", "--models", "small", "--sizes", "17x256x256,5x32x64"])
    assert [(s.frames, s.height, s.width, s.suite) for s in plan.settings] == [
        (17, 256, 256, "main"),
        (5, 32, 64, "main"),
    ]
    assert plan.models == ["small"]


def test_default_cuda_plan_is_the_papers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = _plan(["--device", "cuda"])
    assert plan.dtype == torch.bfloat16 and plan.compile_mode == "max-autotune"
    assert [(s.frames, s.height, s.suite) for s in plan.settings] == [
        (17, 256, "main"),
        (17, 720, "main"),
        (65, 720, "length"),
        (129, 720, "length"),
    ]
    assert plan.impls[:3] == ["reference", "reference-cl", "reference-compiled"]
    assert not any(plan.reduced(s) for s in plan.settings)
    assert [
        s.frames for s in _plan(["--device", "cuda", "--full"]).settings if s.suite == "length"
    ] == [65, 129, 257]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--frames", "6"], "1 + 4k"),
        (["--size", "30"], "multiples of 8"),
        (["--dtype", "int8"], "dtype"),
        (["--impls", "fastest"], "unknown implementation"),
        (["--models", "large"], "base and/or small"),
        (["--ops", "train"], "--ops"),
        (["--tiny", "--ckpt", "x.ckpt"], "--tiny"),
        (["--sizes", "17x256"], "TxHxW"),
        (["--sizes", "6x64x64"], "1 + 4k"),
        (["--sizes", "17x60x64"], "multiples of 8"),
        (["--sizes", "9x64x64", "--size", "64"], "drop --frames/--size"),
        (["--time-budget", "0"], "positive number of seconds"),
        (["--rounds", "2", "--min-rounds", "3"], "--min-rounds"),
        (["--publish", "--results-dir", "x"], "drop --results-dir"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(argv + ["--device", "cpu", "--no-progress"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_ckpt_is_parsed_per_model():
    assert run._parse_ckpts(["a.ckpt"], ["small"]) == {"small": "a.ckpt"}
    assert run._parse_ckpts(["base=b.ckpt", "small=s.ckpt"], ["base", "small"]) == {
        "base": "b.ckpt",
        "small": "s.ckpt",
    }
    with pytest.raises(ValueError, match="name the model"):
        run._parse_ckpts(["a.ckpt"], ["base", "small"])


def test_kernel_summary_tolerates_broken_and_foreign_modules(tmp_path):
    (tmp_path / "bench_rows.py").write_text(
        "def run_summary():\n    return [{'shape': (1, 2), 'ms': 1.5}]\n"
    )
    (tmp_path / "bench_cli.py").write_text(
        "def main(argv):\n    print('conv3d 1.0 ms')\n    return 0\n"
    )
    (tmp_path / "bench_broken.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "bench_other.py").write_text("X = 1\n")
    (tmp_path / "helper.py").write_text("raise SystemExit('must not be imported')\n")
    got = {k["module"]: k for k in kernel_summary.summarise(tmp_path)}
    assert set(got) == {"bench_rows", "bench_cli", "bench_broken", "bench_other"}
    assert got["bench_rows"]["status"] == "ok" and got["bench_rows"]["summary"] == [
        {"shape": [1, 2], "ms": 1.5}
    ]
    assert got["bench_cli"]["status"] == "ok" and "conv3d 1.0 ms" in got["bench_cli"]["summary"]
    assert (
        got["bench_broken"]["status"] == "error" and "no GPU here" in got["bench_broken"]["error"]
    )
    assert got["bench_other"]["status"] == "skipped"
    md = report.render_markdown({"header": {}, "rows": [], "kernels": list(got.values())})
    assert "#### bench_rows" in md and "no GPU here" in md


def test_device_key_is_a_file_name():
    assert (
        environment.device_key({"gpu_name": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu128"})
        == "nvidia-h100-80gb-hbm3-torch2.13.0-cu128"
    )
    assert (
        environment.device_key(
            {"gpu_name": None, "cpu_model": "AMD EPYC 7B13", "torch": "2.13.0+cpu"}
        )
        == "cpu-amd-epyc-7b13-torch2.13.0-cpu"
    )


def test_psnr_against():
    ref = torch.linspace(-1, 1, 100)
    assert run.psnr_against(ref.clone(), ref, "decode") == (None, 0.0)
    psnr, err = run.psnr_against(ref + 0.01, ref, "decode")
    assert psnr == pytest.approx(10 * np.log10(4 / 1e-4), rel=1e-4) and err == pytest.approx(
        0.01, abs=1e-6
    )
    with pytest.raises(ValueError, match="shape"):
        run.psnr_against(ref[:5], ref, "decode")


def test_merge_results_combines_runs_per_model():
    def part(model):
        row = dict(
            model=model,
            impl="reference",
            op="decode",
            frames=17,
            height=256,
            width=256,
            dtype="bf16",
            suite="main",
            latency_ms_p50=300.0 if model == "base" else 100.0,
            peak_mem_bytes=1,
            peak_mem_delta_bytes=1,
        )
        return {
            "header": {"torch": "2.13"},
            "rows": [row],
            "notes": ["n"],
            "skipped": [{"impl": "engine", "reason": "r"}],
        }

    merged = report.merge_results([part("base"), part("small")])
    assert len(merged["rows"]) == 2 and merged["notes"] == ["n"] and len(merged["skipped"]) == 1
    assert merged["ratios"]["small_vs_base"][0]["speedup"] == pytest.approx(3.0)
    with pytest.raises(ValueError):
        report.merge_results([])


@pytest.mark.slow
def test_compiled_and_channels_last_references_match_eager(tmp_path):
    # torch.compile on CPU takes minutes even for tiny networks: slow, not in CI.
    threads = torch.get_num_threads()
    try:
        _capture(
            lambda: run.main(
                BENCH_TINY_ARGS
                + ["--ops", "decode", "--impls", "reference,reference-cl,reference-compiled"]
                + ["--long-frames", "none", "--warmup", "1", "--repeats", "1"]
                + ["--no-plot", "--no-peer", "--results-dir", str(tmp_path)]
                + ["--out", str(tmp_path / "r.json")]
            )
        )
    finally:
        torch.set_num_threads(threads)
    rows = {r["impl"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert set(rows) == {"reference", "reference-cl", "reference-compiled"}
    for impl in ("reference-cl", "reference-compiled"):
        assert rows[impl]["max_abs_err_vs_reference"] < 1e-4


def test_a_failing_implementation_is_reported_not_fatal(tmp_path, monkeypatch):
    class Exploding:
        def encode(self, x):
            raise RuntimeError("kernel exploded")

        def execution_record(self):
            return {"ops": {}, "cuda_graphs": None}

        def reset_execution_record(self):
            pass

    monkeypatch.setattr(
        cdt_fast, "accelerate", lambda model, backend, dtype: Exploding(), raising=False
    )
    monkeypatch.delattr(cdt_fast, "backends", raising=False)  # then only engine-torch is tried
    threads = torch.get_num_threads()
    try:
        _capture(
            lambda: run.main(
                BENCH_TINY_ARGS
                + [
                    "--ops",
                    "encode",
                    "--impls",
                    "engine",
                    "--long-frames",
                    "none",
                    "--no-plot",
                    "--results-dir",
                    str(tmp_path),
                    "--out",
                    str(tmp_path / "r.json"),
                ]
            )
        )
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["rows"] == []
    (failure,) = [s for s in results["skipped"] if s.get("impl") == "engine-torch"]
    assert failure["op"] == "encode" and "RuntimeError: kernel exploded" in failure["reason"]


def test_an_engine_row_whose_backend_ran_nothing_is_not_a_result(tmp_path, monkeypatch):
    """engine-cpp built by an accelerate that runs everything on torch: its rows are listed
    under "Not measured" with the reason, never reported as cpp's."""
    real_accelerate = cdt_fast.accelerate
    monkeypatch.setattr(
        cdt_fast,
        "accelerate",
        lambda model, backend, dtype: real_accelerate(model, backend="torch", dtype=dtype),
    )
    backends = dict(_fake_backends(), cpp=types.SimpleNamespace(available=True, reason=""))
    monkeypatch.setattr(cdt_fast, "backends", lambda: backends)
    threads = torch.get_num_threads()
    argv = ["--ops", "encode", "--impls", "engine-cpp", "--long-frames", "none", "--no-plot"]
    try:
        stdout = _capture(
            lambda: run.main(
                BENCH_TINY_ARGS
                + argv
                + ["--results-dir", str(tmp_path), "--out", str(tmp_path / "r.json")]
            )
        )
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["rows"] == []
    (skip,) = [s for s in results["skipped"] if s.get("impl") == "engine-cpp"]
    assert skip["op"] == "encode"
    assert skip["reason"] == (
        "not a result: backend cpp ran none of the timed calls' ops (they ran on torch)"
    )
    assert "## Not measured" in stdout and skip["reason"] in stdout


def test_reports_show_the_backend_mix_of_an_engine_row():
    ref = _timed_row("reference", 90.0, 100.0, 110.0)
    mixed = dict(
        _timed_row("engine-triton", 40.0, 45.0, 50.0),
        ran_on={
            "causal_conv3d": {"triton": 4},
            "causal_conv3d_history": {"torch": 4},
            "conv_transpose_up2x": {"torch": 2},
            "channel_norm": {"cpp": 1, "triton": 3},
        },
        backends_used=["cpp", "torch", "triton"],
    )
    pure = dict(
        _timed_row("engine-torch", 40.0, 45.0, 50.0), ran_on={"causal_conv3d": {"torch": 4}}
    )
    label = "engine-triton (+cpp: channel_norm; +torch: causal_conv3d_history, conv_transpose_up2x)"
    assert report.impl_label(mixed) == label
    assert report.impl_label(pure) == "engine-torch" and report.impl_label(ref) == "reference"
    results = {"header": {"cpu_count": 2}, "rows": [ref, mixed, pure], "notes": []}
    table = report.readme_table(results)
    assert f"| CDT-small | decode | 9x64x64 | {label} |" in table
    assert "| CDT-small | decode | 9x64x64 | engine-torch |" in table
    markdown = report.render_markdown(results)
    assert f"| small | {label} | decode |" in markdown  # the results and the ratio table
    assert markdown.count(label) == 2


def test_results_are_readable_by_others(tiny_run):
    import os
    import stat

    out, results, _ = tiny_run
    umask = os.umask(0)
    os.umask(umask)
    for path in out.glob("*.*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


# -- interleaved statistics -------------------------------------------------------------------------


def test_measure_interleaved_rotates_the_order_and_isolates_failures():
    calls = []

    def make(name, fail_at=None):
        def fn():
            calls.append(name)
            if fail_at is not None and calls.count(name) == fail_at:
                raise RuntimeError(f"{name} broke")
            return name

        return fn

    timings, errors = timing.measure_interleaved(
        {"a": make("a"), "b": make("b"), "c": make("c", fail_at=3)},
        "cpu",
        warmup={"a": 1, "b": 0, "c": 0},
        rounds=4,
        keep_output=True,
        after_warmup=lambda name: calls.append(name + "!"),
    )
    # warm-up a; each one's after_warmup before any timed call; then rounds abc, bca,
    # (ab: c raised in the third round) -> a b, then ab
    assert calls == ["a", "a!", "b!", "c!", "a", "b", "c", "b", "c", "a", "c", "a", "b", "b", "a"]
    assert set(timings) == {"a", "b"} and timings["a"].repeats == timings["b"].repeats == 4
    assert timings["a"].output == "a" and timings["a"].warmup == 1
    assert str(errors["c"]) == "c broke"
    assert timings["a"].min <= timings["a"].p50 <= timings["a"].max


def test_measure_interleaved_budget_and_deadline():
    slow = lambda: time.sleep(0.02)  # noqa: E731
    t, _ = timing.measure_interleaved(
        {"x": slow, "y": slow}, "cpu", warmup=0, rounds=20, min_rounds=2, max_time_s=0.0
    )
    assert t["x"].repeats == t["y"].repeats == 2
    t, _ = timing.measure_interleaved(
        {"x": slow}, "cpu", warmup=0, rounds=20, min_rounds=5, deadline=time.perf_counter()
    )
    assert t["x"].repeats == 1  # past the deadline: one round, then stop
    with pytest.raises(ValueError, match="fns"):
        timing.measure_interleaved({}, "cpu")


def _timed_row(impl, lo, mid, hi, model="small"):
    return dict(
        model=model,
        impl=impl,
        op="decode",
        frames=9,
        height=64,
        width=64,
        dtype="fp32",
        suite="main",
        device="cpu",
        latency_ms_p20=lo,
        latency_ms_p50=mid,
        latency_ms_p80=hi,
        latency_ms_min=lo,
        latency_ms_max=hi,
        repeats=5,
        frames_per_s=9e3 / mid,
        peak_mem_bytes=2,
        peak_mem_delta_bytes=1,
    )


def test_overlapping_spreads_make_a_ratio_not_significant():
    ref = _timed_row("reference", 90.0, 100.0, 220.0)
    noisy = _timed_row("engine-torch", 40.0, 45.0, 95.0)  # 2.2x by medians, ranges overlap
    clear = _timed_row("engine-cpp", 40.0, 50.0, 60.0)  # 2x, disjoint ranges
    ratios = {
        r["impl"]: r for r in report.compute_ratios([ref, noisy, clear])["engine_vs_reference"]
    }
    assert ratios["engine-torch"]["significant"] is False
    assert ratios["engine-torch"]["speedup"] == pytest.approx(100 / 45)
    assert ratios["engine-torch"]["speedup_low"] == pytest.approx(90 / 95)
    assert ratios["engine-cpp"]["significant"] is True
    assert ratios["engine-cpp"]["speedup_high"] == pytest.approx(220 / 40)
    assert report.fmt_ratio(100 / 45, False) == "~2.2x (n.s.)"
    assert report.fmt_ratio(2.0, True) == "2.00x"
    results = {"header": {"cpu_count": 2}, "rows": [ref, noisy, clear], "notes": []}
    table = report.readme_table(results)
    line = {l.split("|")[4].strip(): l for l in table.splitlines() if l.startswith("| CDT-")}
    assert "~2.2x (n.s.)" in line["engine-torch"] and "2.00x" in line["engine-cpp"]
    assert "100.0 ms (90-220, 5 rounds)" in line["reference"]
    assert "~2.2x (n.s.)" in report.render_markdown(results)
    # results written before spreads existed keep their table (the README's committed one)
    old = [
        {k: v for k, v in r.items() if k not in ("latency_ms_min", "latency_ms_max")}
        for r in (ref, noisy)
    ]
    assert "2.22x" in report.readme_table({**results, "rows": old})


# -- the main command leaves the checkout clean ---------------------------------------------------


def _git(cwd, *args):
    import subprocess

    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def checkout_copy(tmp_path, monkeypatch):
    """A git repository holding this checkout's .gitignore, README and committed benchmark
    results, with run.py pointed at it."""
    import shutil

    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    for name in (".gitignore", "README.md"):
        shutil.copy(environment.REPO_ROOT / name, root / name)
    shutil.copytree(
        environment.REPO_ROOT / "benchmarks" / "results",
        root / "benchmarks" / "results",
        ignore=shutil.ignore_patterns("local"),
    )
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "committed")
    monkeypatch.setattr(run, "BENCH_DIR", root / "benchmarks")
    monkeypatch.setattr(run, "REPO_ROOT", root)
    return root


def test_the_main_command_leaves_the_checkout_clean(checkout_copy):
    threads = torch.get_num_threads()
    argv = BENCH_TINY_ARGS + [
        "--ops",
        "decode",
        "--long-frames",
        "none",
        "--no-peer",
        "--repeats",
        "1",
    ]
    argv += ["--no-plot", "--min-rounds", "1"]
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cdt_fast, "backends", _fake_backends, raising=False)
            _capture(lambda: run.main(argv))
            assert _git(checkout_copy, "status", "--porcelain", "--untracked-files=all") == ""
            written = list((checkout_copy / "benchmarks" / "results" / "local").glob("*.json"))
            assert len(written) == 1
            # --publish is what writes the committed results and the README table
            _capture(lambda: run.main(argv + ["--publish"]))
    finally:
        torch.set_num_threads(threads)
    changed = _git(checkout_copy, "status", "--porcelain", "--untracked-files=all")
    assert "README.md" in changed and "benchmarks/results/cpu-" in changed
    readme = (checkout_copy / "README.md").read_text()
    assert "rounds)" in readme  # the CPU table now comes from the new results


def test_time_budget_writes_the_rows_measured_so_far(tmp_path):
    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cdt_fast, "backends", _fake_backends, raising=False)
            calls = []
            # out of time from the third check on: the run's start and encode pass, then stop
            mp.setattr(run, "_out_of_time", lambda plan: calls.append(1) or len(calls) >= 3)
            rc = run.main(
                BENCH_TINY_ARGS
                + [
                    "--no-peer",
                    "--no-plot",
                    "--time-budget",
                    "1000",
                    "--out",
                    str(tmp_path / "r.json"),
                    "--results-dir",
                    str(tmp_path),
                ]
            )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert {r["op"] for r in results["rows"]} == {"encode"}
    assert any("TIME BUDGET" in n for n in results["notes"])
    assert any(s["reason"] == "not measured: --time-budget" for s in results["skipped"])


def test_run_py_works_as_a_script():
    """The README's main command runs the file itself, not run.main()."""
    import subprocess

    committed = sorted((environment.REPO_ROOT / "benchmarks" / "results").glob("cpu-*.json"))
    proc = subprocess.run(
        [sys.executable, str(environment.REPO_ROOT / "benchmarks" / "run.py"), "--readme-table"]
        + [str(committed[0])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Measured with `python benchmarks/run.py`")


@pytest.mark.parametrize("where", ["import", "construct"])
def test_a_peer_that_cannot_be_built_is_not_measured(monkeypatch, where):
    """diffusers' lazy imports raise RuntimeError (not ImportError), and building the VAE can
    fail too: either is a reason under "Not measured", never the end of the run."""
    fake = types.ModuleType("diffusers")
    if where == "import":

        def __getattr__(name):
            raise RuntimeError(f"Failed to import diffusers.models.{name}: broken install")

        fake.__getattr__ = __getattr__
    else:

        class AutoencoderKLWan:
            def __init__(self):
                raise torch.OutOfMemoryError("CUDA out of memory")

        fake.AutoencoderKLWan = AutoencoderKLWan
    monkeypatch.setitem(sys.modules, "diffusers", fake)
    runner, reason = impls.build_peer(torch.device("cpu"), torch.float32, 0)
    assert runner is None
    assert ("broken install" if where == "import" else "out of memory") in reason
