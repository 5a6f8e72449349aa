"""tools/gpu_check.sh (the one-shot GPU check) and its Python half, tools/gpu_check.py, without a
GPU: the dry run, argument errors, the time guards and partial results with stand-in phase
commands (fast), the summary and ingest, and (slow) the whole script in its CPU mode."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.sh"
PHASES = ["env", "warmup", "tests", "bench", "compiled", "bench720"]

sys.path.insert(0, str(ROOT / "tools"))
import gpu_check  # noqa: E402

needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout"
)


def _run(*args, env=None, timeout=120):
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        cwd=ROOT,
    )


@needs_bash
def test_dry_run_lists_phases_budgets_and_commands():
    res = _run("--dry-run")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "gpu mode" in lines[0] and "540s" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == PHASES
    text = res.stdout
    assert "-m cdt_fast warmup --model small --size 256x256 --frames 17 --dtype bf16 --json" in text
    assert "-m pytest -m gpu tests" in text
    for impl in ("reference,reference-cl,engine", "reference-compiled"):
        assert f"--impls {impl}" in text
    assert "--frames 17 --size 256 --dtype bf16" in text and "--size 720" in text
    res = _run("--dry-run", "--cpu", "--phases", "bench", "--phase-budget", "bench=33")
    assert res.returncode == 0, res.stderr
    rows = [line.split()[:2] for line in res.stdout.splitlines()[1:]]
    assert rows == [["env", "30s"], ["bench", "33s"]]  # env always runs: it names the results
    assert "--tiny --device cpu" in res.stdout


@needs_bash
@pytest.mark.parametrize(
    "args,message",
    [
        (["--budget", "soon"], "--budget needs whole seconds"),
        (["--phases", "env,nope"], "unknown phase 'nope'"),
        (["--phase-budget", "bench"], "--phase-budget needs P=S"),
        (["--phase-budget", "x=3"], "unknown phase 'x'"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
    ],
)
def test_bad_arguments_are_named(args, message):
    res = _run("--dry-run", *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr


STUB = """#!/usr/bin/env bash
# Stand-in interpreter: the real one for the summary tool, canned behaviour for each phase.
case "$1" in
  tools/gpu_check.py)
    if [[ $2 == env ]]; then exec {py} -c 'import sys, json; sys.path.insert(0, "tools")
import gpu_check as g; d = g.load(__import__("pathlib").Path(sys.argv[1]))
d["environment"] = {{"device": "Fake GPU", "torch": "2.11.0", "key": "fake"}}; d["mode"] = "gpu"
g._save(__import__("pathlib").Path(sys.argv[1]), d)' "$3"; fi
    exec {py} "$@" ;;
  -c) exec {py} "$@" ;;
  -m) [[ $2 == cdt_fast ]] && {{ echo "compiling"; echo '{{"kernels": 42, "seconds": 1.5}}'; exit 0; }}
      [[ $2 == pytest ]] && {{ echo "a hung test"; exec sleep 60; }} ;;
  benchmarks/run.py)
    out=""; while (( $# )); do [[ $1 == --out ]] && out=$2; shift; done
    case "$out" in
      */bench-256.json) echo '{{"rows": [{{"op": "decode"}}, {{"error": "boom"}}]}}' > "$out" ;;
      */bench-compiled.json) echo "compile failed" >&2; exit 1 ;;
      *) exec sleep 60 ;;
    esac ;;
esac
"""


@needs_bash
def test_time_guards_and_partial_results_with_stand_in_phases(tmp_path):
    """A hung phase is stopped at its own limit and the next phases still run; a failing phase is
    recorded; a phase the total budget cannot fit is not started; the summary and log are in
    $OUT throughout."""
    stub = tmp_path / "python"
    stub.write_text(STUB.format(py=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    res = _run(
        *("--budget", "40", "--phase-budget", "tests=1", "--phase-budget", "bench720=1"),
        env={"PYTHON": str(stub), "OUT": str(out)},
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    phases = summary["phases"]
    assert list(phases) == PHASES
    assert phases["env"]["status"] == "ok" and summary["environment"]["key"] == "fake"
    assert phases["warmup"]["result"] == {"kernels": 42, "seconds": 1.5}
    assert phases["tests"]["status"] == "timeout" and phases["tests"]["limit_s"] == 1
    assert phases["bench"]["bench"] == {
        "file": "bench-256.json",
        "rows": 2,
        "rows_with_error": 1,
    }
    assert phases["compiled"]["status"] == "failed" and phases["compiled"]["rc"] == 1
    assert phases["bench720"]["status"] == "timeout" and phases["bench720"]["limit_s"] == 1
    log = (out / "gpu_check.log").read_text()
    assert "a hung test" in log and "tests: exit 124" in log and "results key: fake" in log
    assert sorted(p.name for p in out.iterdir()) == [
        "bench-256.json",
        "gpu_check.log",
        "summary.json",
    ]
    # 20 s in all: after the 15 kept back and the 5 a kill may take, no phase can start
    res = _run("--budget", "20", env={"PYTHON": str(stub), "OUT": str(out)}, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    phases = json.loads((out / "summary.json").read_text())["phases"]
    assert {p["status"] for p in phases.values()} == {"not run"} and list(phases) == PHASES


def test_record_statuses_and_artifacts(tmp_path):
    summary = tmp_path / "summary.json"
    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    out = tmp_path / "warmup.txt"
    out.write_text('compiling...\n{"kernels": 7, "seconds": 2.0}\nwarning: on stderr\n')
    gpu_check.record(summary, "warmup", 0, 2.4, 90, json_file=out)
    gpu_check.record(summary, "tests", 1, 50, 120, junit=junit)
    gpu_check.record(summary, "bench", 124, 121, 120, bench=tmp_path / "missing.json")
    gpu_check.record(summary, "bench720", None, 0, 3, note="not started")
    data = gpu_check.load(summary)
    p = data["phases"]
    assert list(p) == ["warmup", "tests", "bench", "bench720"]
    assert p["warmup"]["result"] == {"kernels": 7, "seconds": 2.0}
    assert p["tests"]["status"] == "failed"
    assert p["tests"]["tests"]["failed"] == ["tests.test_a::test_bad"]
    assert p["bench"]["status"] == "timeout" and "bench_error" in p["bench"]
    assert p["bench720"]["status"] == "not run"
    table = gpu_check.phase_table(data)
    assert "3 tests, 1 failed" in table and "not started" in table
    summary.write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="not a gpu_check summary"):
        gpu_check.load(summary)


def test_results_key_names_device_and_versions():
    key = gpu_check.results_key(
        {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0", "cudnn": 91300,
         "triton": "3.6.0"}
    )  # fmt: skip
    assert key == "nvidia-h200-torch2.11.0-cu130-cuda13.0-cudnn91300-triton3.6.0"


def _gpu_run(tmp_path) -> Path:
    source = tmp_path / "fetched"
    source.mkdir()
    committed = json.loads(
        (ROOT / "benchmarks/results/cpu-amd-epyc-torch2.13.0-cpu.json").read_text()
    )
    committed["header"]["gpu_name"] = "NVIDIA H200"
    (source / "bench-256.json").write_text(json.dumps(committed))
    summary = source / "summary.json"
    gpu_check.record(summary, "bench", 0, 100, 120, bench=source / "bench-256.json")
    data = gpu_check.load(summary)
    data["environment"] = {"device": "NVIDIA H200", "torch": "2.11.0", "key": "nvidia-h200-x"}
    data["mode"] = "gpu"
    gpu_check._save(summary, data)
    return source


def test_ingest_copies_results_and_fills_the_gpu_table(tmp_path):
    source = _gpu_run(tmp_path)
    results = tmp_path / "results"
    readme = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text()
    readme.write_text(original)
    assert gpu_check.main(["ingest", str(source), "--results-dir", str(results), "--readme",
                           str(readme)]) == 0  # fmt: skip
    target = results / "nvidia-h200-x"
    assert sorted(p.name for p in target.iterdir()) == [
        "bench-256.json",
        "summary.json",
        "summary.md",
    ]
    after = readme.read_text()
    assert after != original
    gpu_block = after.split("<!-- perf-table-gpu -->")[1].split("<!-- /perf-table-gpu -->")[0]
    assert "|" in gpu_block
    cpu = "<!-- perf-table -->"
    assert (
        after.split(cpu)[1].split("<!-- /perf-table -->")[0]
        == original.split(cpu)[1].split("<!-- /perf-table -->")[0]
    )
    # a different file of the same name is refused without --force
    (source / "bench-256.json").write_text(json.dumps({"rows": []}))
    argv = ["ingest", str(source), "--results-dir", str(results), "--no-readme"]
    assert gpu_check.main(argv) == 2
    assert gpu_check.main(argv + ["--force"]) == 0


def test_ingest_refuses_cpu_mode_runs(tmp_path):
    source = _gpu_run(tmp_path)
    summary = source / "summary.json"
    data = gpu_check.load(summary)
    data["mode"] = "cpu"
    gpu_check._save(summary, data)
    with pytest.raises(ValueError, match="only GPU runs"):
        gpu_check.ingest(source, tmp_path / "results", None)


@needs_bash
@pytest.mark.slow
def test_cpu_mode_runs_end_to_end(tmp_path):
    """The whole script on this machine with tiny sizes (about 2-3 minutes on 2 busy cores)."""
    out = tmp_path / "out"
    res = _run("--cpu", env={"OUT": str(out), "PYTHON": sys.executable}, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    phases = json.loads((out / "summary.json").read_text())["phases"]
    assert list(phases) == PHASES
    assert phases["env"]["status"] == "ok" and phases["tests"]["status"] == "ok"
    assert phases["bench"]["status"] == "ok" and phases["bench"]["bench"]["rows"] > 0
    assert phases["tests"]["tests"]["tests"] > 0
    for name in ("compiled", "bench720"):  # done, or cut by its limit with the rows so far
        assert phases[name]["status"] in ("ok", "timeout"), phases[name]
    assert not list((ROOT / "benchmarks" / "results").glob("*tiny*")), "run.py wrote into the tree"
    # what the device tool brings back: at most 8 plain files with plain names
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and re.fullmatch(r"[\w.-]+", f.name) for f in files)
