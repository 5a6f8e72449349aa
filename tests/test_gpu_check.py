"""tools/gpu_check.sh (the one-shot GPU check) and its Python half, tools/gpu_check.py, without a
GPU: the dry run's plan, argument errors, the time guards, the setup phases and partial results
with stand-in phase commands (fast), the preflight, the summary, the engine-row check and ingest,
and (slow) the whole script in its CPU mode."""

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
SETUP = ["install", "preflight", "env"]
PHASES = SETUP + [
    "smoke",
    "warmup",
    "tests-kernels",
    "tests-model",
    "bench-reference",
    "bench-engine",
    "bench720-reference",
    "bench720-engine",
    "compiled",
]

sys.path.insert(0, str(ROOT / "tools"))
import gpu_check

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


def _plan(*args) -> dict:
    """The dry run as {phase: (budget, command)}, in order, and its last line."""
    res = _run("--dry-run", *args)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    plan = {}
    for line in lines[1:-1]:
        name, budget, command = line.split(None, 2)
        plan[name] = (int(budget.rstrip("s+")), command)
        assert budget.endswith("+") == (name == "compiled")  # the last takes what is left
    return {"header": lines[0], "phases": plan, "total": lines[-1]}


@needs_bash
def test_dry_run_plan_fits_540_s_in_the_required_order():
    plan = _plan()
    phases = plan["phases"]
    assert "gpu mode" in plan["header"] and "540s" in plan["header"]
    assert list(phases) == PHASES
    # every budget, the summary's reserve and a stopped phase's kill delay fit the 540 s
    budgets = sum(b for b, _ in phases.values())
    found = re.search(
        r"phase budgets: (\d+)s \+ (\d+)s \+ (\d+)s = (\d+)s of 540s \(fits\)", plan["total"]
    )
    assert found, plan["total"]
    summary_s, kill_s = int(found.group(2)), int(found.group(3))
    assert int(found.group(1)) == budgets and budgets + summary_s + kill_s <= 540
    assert kill_s >= 30 and f"{kill_s}s for a stopped phase to end" in plan["header"]
    cmd = {name: command for name, (_, command) in phases.items()}
    assert "pip install --no-deps --no-build-isolation --no-index" in cmd["install"]
    assert "CDT_FAST_SKIP_CPP_BUILD=1" in cmd["install"] and cmd["install"].endswith("-e .")
    assert "preflight $OUT/summary.json --mode gpu" in cmd["preflight"]
    # the smoke test is the first work, in its own process, both presets and dtypes, bf16 first
    assert (
        "tools/gpu_smoke.py --presets small,base --dtypes bf16,fp32 --size 256x256" in cmd["smoke"]
    )
    # warm-up: both presets, every size the benchmark phases measure
    sizes = {re.search(r"--size (\d+)", c).group(1) for n, c in cmd.items() if "run.py" in c}
    assert sizes == {"256", "720"}
    assert "--model small,base --size 256x256,720x720" in cmd["warmup"]
    # kernel tests (bf16 first, by the ordering plugin) before the whole-model ones
    assert "-p tests.gpu_order -m gpu" in cmd["tests-kernels"]
    assert "tests/test_causal_conv3d.py" in cmd["tests-kernels"]
    model_files = set(re.findall(r"tests/test_\w+\.py", cmd["tests-model"]))
    assert {"tests/test_engine.py", "tests/test_graphs.py"} <= model_files
    assert not model_files & set(re.findall(r"tests/test_\w+\.py", cmd["tests-kernels"]))
    # every benchmark: CDT-small before CDT-base, reference and engine in separate processes,
    # a time budget under the phase's limit, results where the next step merges them
    for name in (
        "bench-reference",
        "bench-engine",
        "bench720-reference",
        "bench720-engine",
        "compiled",
    ):
        budget, command = phases[name]
        assert "--models small,base" in command
        assert 0 < int(re.search(r"--time-budget (\d+)", command).group(1)) < budget
        impls = re.search(r"--impls (\S+)", command).group(1).split(",")
        assert all(i.startswith("engine") for i in impls) or not any(
            i.startswith("engine") for i in impls
        ), command
    assert "--impls engine " in cmd["bench-engine"] and "--impls engine " in cmd["bench720-engine"]
    assert "--impls reference,reference-cl " in cmd["bench-reference"]
    assert list(phases)[-1] == "compiled" and "--impls reference-compiled" in cmd["compiled"]


@needs_bash
def test_setup_budgets_leave_room_for_a_cold_first_import():
    # preflight is the machine's first import of torch, Triton and CUDA, and a preflight cut by
    # its limit stops the whole check; env writes the results key that ingest needs
    phases = _plan()["phases"]
    assert phases["preflight"][0] >= 40 and phases["env"][0] >= 25


@needs_bash
@pytest.mark.parametrize(
    "args", [(), ("--phase-budget", "tests-kernels=30", "--phase-budget", "tests-model=12")]
)
def test_test_phases_stop_a_hung_test_and_name_each_test(args):
    phases = _plan(*args)["phases"]
    for name in ("tests-kernels", "tests-model"):
        limit, command = phases[name]
        # a hung test ends well before its phase's limit, leaving the other tests time to run
        per_test = int(re.search(r"--timeout (\d+)", command).group(1))
        assert 0 < per_test <= limit // 2, (name, per_test, limit)
        # verbose: each test's id is printed before it runs (a crash that loses the junit XML
        # still names its test in the log)
        assert " -v " in command and " -q " not in command


@needs_bash
def test_dry_run_options():
    plan = _plan("--cpu", "--phases", "bench-engine", "--phase-budget", "bench-engine=33")
    # the setup phases always run: a rerun needs them
    assert [(n, b) for n, (b, _) in plan["phases"].items()] == [
        ("install", 20), ("preflight", 30), ("env", 30), ("bench-engine", 33)
    ]  # fmt: skip
    assert plan["phases"]["install"][1] == "true" and "install: path" in plan["header"]
    assert "--tiny --device cpu" in plan["phases"]["bench-engine"][1]
    plan = _plan("--with-extension")
    install = plan["phases"]["install"]
    assert install[0] == 300 and "CDT_FAST_FORCE_BUILD=1" in install[1]
    assert "SKIP_CPP_BUILD" not in install[1] and "DOES NOT FIT" in plan["total"]


@needs_bash
@pytest.mark.parametrize(
    "args,message",
    [
        (["--budget", "soon"], "--budget needs whole seconds"),
        (["--phases", "env,nope"], "unknown phase 'nope'"),
        (["--phase-budget", "bench"], "--phase-budget needs P=S"),
        (["--phase-budget", "x=3"], "unknown phase 'x'"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
        (["--install", "global"], "--install needs editable or path"),
        (["--install", "path", "--with-extension"], "--with-extension needs --install editable"),
    ],
)
def test_bad_arguments_are_named(args, message):
    res = _run("--dry-run", *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr


STUB = """#!/usr/bin/env bash
# Stand-in interpreter: the real one for the summary tool, canned behaviour for each phase.
save() {{ {py} -c 'import sys, json, pathlib; sys.path.insert(0, "tools"); import gpu_check as g
p = pathlib.Path(sys.argv[1]); d = g.load(p); d.update(json.loads(sys.argv[2])); g._save(p, d)' "$@"; }}
out=""; junit=""; args=("$@")
for (( i = 0; i < $#; i++ )); do
  [[ ${{args[i]}} == --out ]] && out=${{args[i + 1]}}
  [[ ${{args[i]}} == --junitxml ]] && junit=${{args[i + 1]}}
done
case "$1" in
  tools/gpu_check.py)
    case "$2" in
      preflight)
        if [[ ${{STUB_PREFLIGHT:-}} == fail ]]; then
          save "$3" '{{"preflight": {{"problems": ["triton does not import (stand-in)"]}}}}'
          echo "preflight failed: triton does not import (stand-in)" >&2; exit 1
        fi
        save "$3" '{{"preflight": {{"problems": [], "cdt_fast": "here", "kernel_modules": 8}}}}'
        exit 0 ;;
      env) save "$3" '{{"environment": {{"device": "Fake GPU", "key": "fake"}}, "mode": "gpu"}}'
        exit 0 ;;
    esac
    exec {py} "$@" ;;
  -c) exec {py} "$@" ;;
  -m)
    case "$2" in
      pip) [[ ${{STUB_PIP:-}} == fail ]] && {{ echo "pip: no setuptools" >&2; exit 1; }}; exit 0 ;;
      cdt_fast) echo "compiling"; echo '{{"model": "small", "size": [256, 256], "kernels": 42, "seconds": 1.5}}'
        echo '{{"model": "base", "size": [256, 256], "kernels": 40, "seconds": 2.5, "failed": ["k: boom"]}}'
        exit 0 ;;
      pytest)
        if [[ " $* " == *" tests/test_engine.py "* ]]; then
          echo '<testsuites><testsuite tests="2" failures="1" errors="0" skipped="0">'\\
'<testcase classname="t" name="ok"/><testcase classname="t" name="bad"><failure/></testcase>'\\
'</testsuite></testsuites>' > "$junit"; exit 1
        fi
        echo "a hung test"; exec sleep 60 ;;
    esac ;;
  tools/gpu_smoke.py)
    echo '{{"status": "done", "summary": {{"ok": 1, "mismatch": 1}}, "results": [{{"preset": "small",'\\
' "dtype": "bf16", "op": "channel_norm", "kernels": ["_k"], "status": "mismatch"}}]}}' > "$out"
    exit 1 ;;
  benchmarks/run.py)
    case "$out" in
      */bench-reference.json) echo '{{"rows": [{{"impl": "reference", "model": "small"}}]}}' > "$out" ;;
      */bench-engine.json) echo '{{"rows": [{ENGINE_ROWS}]}}' > "$out" ;;
      */compiled.json) echo "compile failed" >&2; exit 1 ;;
      *) exec sleep 60 ;;
    esac ;;
esac
"""
# two engine rows: triton labelled but torch ran every op; torch and only torch
ENGINE_ROWS = (
    '{{"impl": "engine-triton", "model": "small", "ran_on": {{"causal_conv3d": {{"torch": 9}}}},'
    ' "backends_used": ["torch"]}}, {{"impl": "engine-torch", "model": "small", "ran_on":'
    ' {{"causal_conv3d": {{"torch": 9}}}}, "backends_used": ["torch"]}}'
)


def _stub(tmp_path) -> str:
    stub = tmp_path / "python"
    stub.write_text(STUB.replace("{ENGINE_ROWS}", ENGINE_ROWS).format(py=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return str(stub)


HUNG = ("tests-kernels", "bench720-reference", "bench720-engine")


@needs_bash
def test_time_guards_and_partial_results_with_stand_in_phases(tmp_path):
    """A hung phase is stopped at its own limit and the next phases still run; a failing phase is
    recorded; benchmark and junit parts are merged into one file each; a phase the total budget
    cannot fit is not started; the summary and log are in $OUT throughout."""
    out = tmp_path / "out"
    budgets = [a for name in HUNG for a in ("--phase-budget", f"{name}=1")]
    env = {"PYTHON": _stub(tmp_path), "OUT": str(out)}
    res = _run("--budget", "120", *budgets, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    phases = summary["phases"]
    assert list(phases) == PHASES
    assert phases["install"]["status"] == "ok" and "editable" in phases["install"]["note"]
    assert phases["env"]["status"] == "ok" and summary["environment"]["key"] == "fake"
    assert phases["smoke"]["status"] == "failed" and phases["smoke"]["smoke"]["summary"] == {
        "ok": 1,
        "mismatch": 1,
    }
    assert [r["kernels"] for r in phases["warmup"]["result"]] == [42, 40]
    for name in HUNG:
        assert phases[name]["status"] == "timeout" and phases[name]["limit_s"] == 1
    assert phases["tests-model"]["tests"]["failed"] == ["t::bad"]
    assert phases["bench-reference"]["bench"]["rows"] == 1
    engine = phases["bench-engine"]["bench"]
    assert engine["engine_rows"]["mislabelled"] == 1 and engine["engine_rows"]["verified"] == 1
    assert phases["compiled"]["status"] == "failed" and phases["compiled"]["rc"] == 1
    bench = json.loads((out / "bench-256.json").read_text())  # reference and engine, merged
    assert [r["impl"] for r in bench["rows"]] == ["reference", "engine-triton", "engine-torch"]
    log = (out / "gpu_check.log").read_text()
    assert "a hung test" in log and "tests-kernels: exit 124" in log and "results key: fake" in log
    assert "labelled engine-triton, but triton ran no op (torch 9 calls)" in log
    assert "not compiled: k: boom" in log
    assert sorted(p.name for p in out.iterdir()) == [
        "bench-256.json",
        "gpu_check.log",
        "smoke.json",
        "summary.json",
        "tests-junit.xml",
    ]
    # 50 s in all: after the 15 kept back and the 30 a stopped phase may take, none can start
    res = _run("--budget", "50", env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    phases = json.loads((out / "summary.json").read_text())["phases"]
    assert {p["status"] for p in phases.values()} == {"not run"} and list(phases) == PHASES


@needs_bash
def test_setup_phases_fall_back_or_stop_loudly(tmp_path):
    out = tmp_path / "out"
    env = {"PYTHON": _stub(tmp_path), "OUT": str(out), "STUB_PIP": "fail"}
    res = _run("--phases", "warmup", env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    install = json.loads((out / "summary.json").read_text())["phases"]["install"]
    assert install["status"] == "ok" and "checkout is on PYTHONPATH instead" in install["note"]
    assert "pip install -e failed (exit 1): the checkout is on PYTHONPATH" in res.stdout
    # a failed preflight stops the check: one line naming what, every later phase not run
    res = _run("--phases", "warmup", env=dict(env, STUB_PREFLIGHT="fail"), timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "preflight failed: triton does not import (stand-in)" in res.stdout
    phases = json.loads((out / "summary.json").read_text())["phases"]
    assert phases["preflight"]["status"] == "failed"
    assert [phases[p]["status"] for p in ("env", "warmup")] == ["not run", "not run"]
    assert "preflight failed: triton does not import" in phases["warmup"]["note"]


def test_preflight_names_what_does_not_import(tmp_path, monkeypatch, capsys):
    real = gpu_check.importlib.import_module

    def without_triton(name):
        if name == "triton" or name.startswith("cdt_fast.kernels."):
            raise ImportError(f"simulated: no {name} here")
        return real(name)

    monkeypatch.setattr(gpu_check.importlib, "import_module", without_triton)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    summary = tmp_path / "summary.json"
    assert gpu_check.main(["preflight", str(summary), "--mode", "gpu"]) == 1
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert captured.out == "" and "\n" not in line and line.startswith("preflight failed: ")
    assert "triton does not import (ImportError: simulated: no triton here)" in line
    assert "cdt_fast.kernels.causal_conv3d does not import" in line
    assert "TRITON_INTERPRET is set" in line
    if not __import__("torch").cuda.is_available():
        assert "sees no CUDA GPU" in line
    assert json.loads(summary.read_text())["preflight"]["kernel_modules"] == 0


def test_preflight_passes_here_in_cpu_mode():
    from cdt_fast.engine.warmup import KERNEL_MODULES

    result = gpu_check.preflight("cpu")
    assert result["problems"] == [] and result["kernel_modules"] == len(KERNEL_MODULES)
    assert Path(result["cdt_fast"]) == ROOT / "cdt_fast"


def test_gpu_order_puts_bf16_then_small_first():
    from types import SimpleNamespace as NS

    import torch

    from tests import gpu_order

    def item(name, **params):
        return NS(name=name, callspec=NS(params=params))

    items = [
        item("fp32-base", dtype=torch.float32, preset="base"),
        item("plain"),
        item("bf16-base", dtype=torch.bfloat16, preset="base"),
        item("fp32-small", dtype=torch.float32, preset="small"),
        item("bf16-small", dtype=torch.bfloat16, preset="small"),
        NS(name="no-params"),
    ]
    gpu_order.pytest_collection_modifyitems(None, None, items)
    assert [i.name for i in items] == [
        "bf16-small", "bf16-base", "plain", "fp32-small", "no-params", "fp32-base"
    ]  # fmt: skip


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


def _engine_row(impl, ran_on, used=None, **extra):
    row = {"model": "small", "op": "decode", "frames": 17, "height": 256, "width": 256}
    row.update(impl=impl, dtype="bf16", ran_on=ran_on, **extra)
    row["backends_used"] = (
        used
        if used is not None
        else sorted({b for per_op in ran_on.values() for b, n in per_op.items() if n})
    )
    return row


def test_engine_row_verdicts():
    graphs = {"state": "replayed", "reason": "", "captures": 1, "replays": 9}
    rows = [
        {"impl": "reference", "model": "small"},
        _engine_row("engine-triton", {"causal_conv3d": {"triton": 40}}, cuda_graphs=graphs),
        _engine_row(
            "engine-triton",
            {"causal_conv3d": {"triton": 40}, "conv_transpose_up2x": {"torch": 2, "triton": 0}},
        ),
        _engine_row("engine-triton", {"causal_conv3d": {"torch": 40}}),
        _engine_row("engine-cuda", {"channel_norm": {"cuda": 3}}, used=["cuda", "torch"]),
        {"impl": "engine-torch", "model": "small", "op": "encode"},
    ]
    verdicts = gpu_check.engine_row_verdicts(rows)
    assert [v["verdict"] for v in verdicts] == [
        "verified",
        "mixed",
        "mislabelled",
        "unverified",
        "unverified",
    ]
    assert verdicts[0]["cuda_graphs"] == "replayed" and verdicts[1]["cuda_graphs"] is None
    assert verdicts[1]["reason"] == "triton 40 calls; also torch 2 calls (conv_transpose_up2x)"
    assert verdicts[2]["reason"] == "labelled engine-triton, but triton ran no op (torch 40 calls)"
    assert "disagrees" in verdicts[3]["reason"] and "does not record" in verdicts[4]["reason"]


def test_ingest_withholds_mislabelled_and_unrecorded_engine_rows(tmp_path):
    source = _gpu_run(tmp_path)
    committed = json.loads((source / "bench-256.json").read_text())
    reference = next(r for r in committed["rows"] if r["impl"] == "reference")
    good = dict(reference, impl="engine-torch", ran_on={"causal_conv3d": {"torch": 7}})
    good["backends_used"] = ["torch"]
    bad = dict(reference, impl="engine-triton", ran_on={"causal_conv3d": {"torch": 7}})
    bad["backends_used"] = ["torch"]
    unrecorded = dict(reference, impl="engine-cpp")
    committed["rows"] = [reference, good, bad, unrecorded]
    (source / "bench-256.json").write_text(json.dumps(committed))
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    target = gpu_check.ingest(source, tmp_path / "results", readme)
    published = json.loads((target / "bench-256.json").read_text())
    assert [r["impl"] for r in published["rows"]] == ["reference", "engine-torch"]
    reasons = [s["reason"] for s in published["skipped"]]
    assert any("mislabelled: labelled engine-triton, but triton ran no op" in r for r in reasons)
    assert any("engine-cpp" in s["impl"] and "unverified" in s["reason"]
               for s in published["skipped"] if s.get("impl"))  # fmt: skip
    table = readme.read_text().split("<!-- perf-table-gpu -->")[1].split("<!-- /perf-table-gpu")[0]
    assert "engine-torch" in table and "engine-triton" not in table and "engine-cpp" not in table
    summary_md = (target / "summary.md").read_text()
    assert "withheld" in summary_md and "engine-triton: mislabelled" in summary_md


def test_record_merges_parts_into_one_file(tmp_path):
    summary, merged = tmp_path / "summary.json", tmp_path / "bench-256.json"
    part = {"header": {"command": "a"}, "rows": [{"impl": "reference"}], "notes": ["n"]}
    (tmp_path / "a.json").write_text(json.dumps(part))
    part2 = {"header": {"command": "b"}, "rows": [_engine_row("engine-torch", {"x": {"torch": 1}})]}
    (tmp_path / "b.json").write_text(json.dumps(part2))
    gpu_check.record(summary, "bench-reference", 0, 9, 45, bench=tmp_path / "a.json", into=merged)
    gpu_check.record(summary, "bench-engine", 0, 9, 45, bench=tmp_path / "b.json", into=merged)
    data = json.loads(merged.read_text())
    assert [r["impl"] for r in data["rows"]] == ["reference", "engine-torch"]
    assert [h["command"] for h in data["part_headers"]] == ["a", "b"]
    phases = gpu_check.load(summary)["phases"]
    assert phases["bench-engine"]["bench"]["into"] == "bench-256.json"
    assert phases["bench-engine"]["bench"]["engine_rows"]["verified"] == 1
    junit = tmp_path / "tests-junit.xml"
    for name, tests in (("tests-kernels", 3), ("tests-model", 2)):
        (tmp_path / f"{name}.xml").write_text(
            f'<testsuites><testsuite tests="{tests}" failures="0" errors="0" skipped="0">'
            "</testsuite></testsuites>"
        )
        gpu_check.record(summary, name, 0, 1, 1, junit=tmp_path / f"{name}.xml", into=junit)
    assert gpu_check.read_junit(junit)["tests"] == 5


@needs_bash
@pytest.mark.slow
def test_cpu_mode_runs_end_to_end(tmp_path):
    """The whole script on this machine with tiny sizes (about 3 minutes on 2 busy cores)."""
    out = tmp_path / "out"
    res = _run("--cpu", env={"OUT": str(out), "PYTHON": sys.executable}, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    phases = json.loads((out / "summary.json").read_text())["phases"]
    assert list(phases) == PHASES
    for name in PHASES[:-1]:
        assert phases[name]["status"] == "ok", (name, phases[name])
    assert "PYTHONPATH" in phases["install"]["note"]
    assert phases["smoke"]["smoke"]["summary"]["ok"] > 0
    assert phases["smoke"]["smoke"]["summary"]["not_run"] == 0
    assert phases["bench-reference"]["bench"]["rows"] > 0
    assert phases["bench-engine"]["bench"]["rows"] > 0
    assert phases["tests-kernels"]["tests"]["tests"] > 0
    # done, or cut by its limit with the rows so far
    assert phases["compiled"]["status"] in ("ok", "timeout"), phases["compiled"]
    assert not list((ROOT / "benchmarks" / "results").glob("*tiny*")), "run.py wrote into the tree"
    # what a remote runner brings back: at most 8 plain files with plain names
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and re.fullmatch(r"[\w.-]+", f.name) for f in files)
