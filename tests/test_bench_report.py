"""What the model benchmark reports from its rows: ratios and their significance, markdown, the
README table, merged results, accuracy against the reference, file keys, and the kernel
microbenchmarks' summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import environment, kernel_summary, report
from benchmarks.rows import psnr_against

from .bench_helpers import timed_row


def _row(model, impl, ms, mem, frames=17, suite="main", op="decode"):
    """A bf16 256x256 row without spreads: median ``ms``, peak ``mem`` bytes (half its own)."""
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


def test_ratios_from_synthetic_rows():
    rows = [
        _row("base", "reference", 300.0, 1000),
        _row("base", "engine-triton", 60.0, 400),
        _row("base", "reference-compiled", 120.0, 800),
        _row("small", "reference", 100.0, 500),
        _row("base", "reference", 1200.0, 1000, frames=65, suite="length"),
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
    assert psnr_against(ref.clone(), ref, "decode") == (None, 0.0)
    psnr, err = psnr_against(ref + 0.01, ref, "decode")
    assert psnr == pytest.approx(10 * np.log10(4 / 1e-4), rel=1e-4) and err == pytest.approx(
        0.01, abs=1e-6
    )
    with pytest.raises(ValueError, match="shape"):
        psnr_against(ref[:5], ref, "decode")


def test_merge_results_combines_runs_per_model():
    def part(model):
        row = _row(model, "reference", 300.0 if model == "base" else 100.0, 2)
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


def test_reports_show_the_backend_mix_of_an_engine_row():
    ref = timed_row("reference", 90.0, 100.0, 110.0)
    mixed = dict(
        timed_row("engine-triton", 40.0, 45.0, 50.0),
        ran_on={
            "causal_conv3d": {"triton": 4},
            "causal_conv3d_history": {"torch": 4},
            "conv_transpose_up2x": {"torch": 2},
            "channel_norm": {"cpp": 1, "triton": 3},
        },
        backends_used=["cpp", "torch", "triton"],
    )
    pure = dict(timed_row("engine-torch", 40.0, 45.0, 50.0), ran_on={"causal_conv3d": {"torch": 4}})
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


def test_overlapping_spreads_make_a_ratio_not_significant():
    ref = timed_row("reference", 90.0, 100.0, 220.0)
    noisy = timed_row("engine-torch", 40.0, 45.0, 95.0)  # 2.2x by medians, ranges overlap
    clear = timed_row("engine-cpp", 40.0, 50.0, 60.0)  # 2x, disjoint ranges
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
    # rows without spreads keep their table (the README's committed results have none)
    old = [
        {k: v for k, v in r.items() if k not in ("latency_ms_min", "latency_ms_max")}
        for r in (ref, noisy)
    ]
    assert "2.22x" in report.readme_table({**results, "rows": old})
