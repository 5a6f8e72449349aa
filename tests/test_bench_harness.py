"""The benchmark harness around the GPU check: each op microbenchmark's --out, run.py's partial
results under a time guard's SIGTERM, the results' commit without .git, and the README's CPU
table being what the committed CPU results give."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from benchmarks import environment, measure, microbench, report, run, timing
from benchmarks.interrupt import EXIT_INTERRUPTED
from benchmarks.results import SCHEMA

from .helpers import BENCH_TINY_ARGS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCHES = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- {name} -->\n")[1].split(f"<!-- /{name} -->")[0]


def test_readme_cpu_table_is_generated_from_the_committed_results():
    """The committed CPU results of the README table's device, merged oldest first, give the
    table the README holds."""
    parts = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    parts = [d for d in parts if d.get("schema") == SCHEMA and not d["header"].get("gpu_name")]
    keys = {
        (environment.device_key(d["header"]), d["header"].get("widths", "preset")) for d in parts
    }
    readme = _block((ROOT / "README.md").read_text(), "perf-table")
    tables = []
    for key in sorted(keys):
        mine = [
            d
            for d in parts
            if (environment.device_key(d["header"]), d["header"].get("widths", "preset")) == key
        ]
        mine.sort(key=lambda d: d["header"].get("timestamp_utc", ""))
        tables.append(report.readme_table(report.merge_results(mine)))
    assert any(t.rstrip("\n") + "\n" == readme for t in tables), "README CPU table is stale"


def test_git_commit_from_the_environment_without_git(tmp_path, monkeypatch):
    monkeypatch.delenv("CDT_FAST_GIT_COMMIT", raising=False)
    assert environment.git_revision(tmp_path)["commit"] is None
    monkeypatch.setenv("CDT_FAST_GIT_COMMIT", " 0123abc\n")
    assert environment.git_revision(tmp_path)["commit"] == "0123abc"


# -- the benchmarks' --out ------------------------------------------------------------------------


@pytest.mark.parametrize("bench", BENCHES)
def test_every_kernel_benchmark_takes_out(bench, capsys):
    module = importlib.import_module(f"benchmarks.{bench}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert re.search(r"--out\b", capsys.readouterr().out)


def test_json_is_kept_as_the_old_name_of_out(tmp_path, monkeypatch):
    from benchmarks import bench_channel_norm

    monkeypatch.setattr(microbench, "run_cases", lambda cases, device, repeats: [])
    out = tmp_path / "a.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert bench_channel_norm.main(["--device", "cpu", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"] == []


def test_bench_main_writes_out(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    monkeypatch.setattr(timing, "kernel_ms", lambda fn, device, repeats=5: 2.0)
    cases = lambda args: [microbench.Case("op", "case", {"triton": None}, 4_000_000)]  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()):
        rc = microbench.bench_main(
            "toy", "d", cases, ["--out", str(tmp_path / "x.json")], results_dir=tmp_path / "res"
        )
    assert rc == 0
    saved = json.loads((tmp_path / "x.json").read_text())
    assert saved["rows"][0]["GB/s"] == pytest.approx(2.0) and not (tmp_path / "res").exists()
    assert saved["rows"][0]["%peak_bw"] == pytest.approx(0.1)  # of the H100 PCIe's 2.0 TB/s
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        microbench.bench_main("toy", "d", cases, ["--out", "y.json", "--no-save"])
    assert "--out and --no-save" in err.getvalue()


# -- run.py under a time guard -------------------------------------------------------------------


def test_run_writes_partial_results_when_terminated(tmp_path, monkeypatch):
    # The peer row comes after every model row: SIGTERM there leaves the model rows measured.
    monkeypatch.setattr(measure, "run_peer", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = run.main(
            BENCH_TINY_ARGS
            + ["--long-frames", "none", "--ops", "decode", "--impls", "reference"]
            + ["--repeats", "1", "--no-plot", "--results-dir", str(tmp_path)]
            + ["--out", str(tmp_path / "out.json")]
        )
    torch.set_num_threads(threads)
    assert rc == EXIT_INTERRUPTED and signal.getsignal(signal.SIGTERM) == before
    results = json.loads((tmp_path / "out.json").read_text())
    assert [(r["impl"], r["op"]) for r in results["rows"]] == [("reference", "decode")]
    assert results["header"]["interrupted"] == "stopped by SIGTERM"
    assert any(n.startswith("INTERRUPTED") for n in results["notes"])
    assert "INTERRUPTED" in report.readme_table(results)
