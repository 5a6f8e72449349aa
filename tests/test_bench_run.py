"""benchmarks/run.py end to end on a tiny setting (with a stand-in engine backend list and peer,
so that every kind of row is produced): the rows, what the engine's rows ran on, the files it
writes, partial results, failures reported per implementation, and a checkout left clean."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

import cdt_fast
from benchmarks import environment, flops, impls, report, run
from benchmarks.plan import Plan, model_config
from benchmarks.results import SCHEMA
from benchmarks.rows import ROW_FIELDS

from .bench_helpers import FakeWanVAE, capture, fake_backends
from .helpers import BENCH_TINY_ARGS


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """run.main sets torch's thread count (``--threads``): the tests after one keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of run.py on a tiny setting with the engine's torch backend (stand-in backends():
    two, one unavailable; one warm-up call, which the rows' records leave out) and a stand-in
    diffusers, so that reference, engine, length and peer rows all appear."""
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    fake_diffusers = types.ModuleType("diffusers")
    fake_diffusers.AutoencoderKLWan = FakeWanVAE
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cdt_fast, "backends", fake_backends, raising=False)
        mp.setitem(sys.modules, "diffusers", fake_diffusers)
        stdout = capture(
            lambda: run.main(
                BENCH_TINY_ARGS
                + ["--results-dir", str(out), "--out", str(out / "out.json"), "--kernels"]
                + ["--warmup", "1"]
            )
        )
    torch.set_num_threads(threads)
    results = json.loads((out / "out.json").read_text())
    return out, results, stdout


def test_run_rows_have_every_field(tiny_run):
    _, results, _ = tiny_run
    assert results["schema"] == SCHEMA
    rows = results["rows"]
    for row in rows:
        assert set(ROW_FIELDS) <= set(row), set(ROW_FIELDS) - set(row)
        assert row["latency_ms_p20"] <= row["latency_ms_p50"] <= row["latency_ms_p80"]
        assert row["latency_ms_min"] <= row["latency_ms_p50"] <= row["latency_ms_max"]
        assert len(row["samples_ms"]) == row["repeats"] == 2  # length rows too: no single call
        assert row["frames_per_s"] == pytest.approx(row["frames"] / row["latency_ms_p50"] * 1e3)
        assert row["peak_mem_bytes"] > 0 and row["pct_peak"] is None and row["pct_peak_note"]
        assert row["widths"] == "tiny" and row["reduced"] is True and row["dtype"] == "fp32"
    main = {(r["impl"], r["op"]) for r in rows if r["suite"] == "main"}
    assert main == {(i, op) for i in ("reference", "engine-torch") for op in flops.OPS}
    expected = {
        op: flops.count_macs(model_config("small", True), op, 5, 32, 32).flops for op in flops.OPS
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
    engine = cdt_fast.accelerate(cdt_fast.CDT(model_config("small", True)), backend="torch")
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
    table = capture(lambda: run.main(["--readme-table", str(out / "out.json")]))
    assert table == report.readme_table(results)
    lines = [l for l in table.splitlines() if l.startswith("| CDT-small")]
    assert len(lines) == 6  # 2 impls x 3 ops; length rows are not in the README table
    cells = [l.split("|")[7].strip() for l in lines if "engine-torch" in l]
    speedups = [float(c.lstrip("~").split("x")[0]) for c in cells]
    assert len(speedups) == 3 and all(v > 0 for v in speedups)
    assert sum(l.startswith(f"| {impls.PEER_MODEL}") for l in table.splitlines()) == 1


def test_results_are_readable_by_others(tiny_run):
    import os
    import stat

    out, results, _ = tiny_run
    umask = os.umask(0)
    os.umask(umask)
    for path in out.glob("*.*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


@pytest.mark.slow
def test_compiled_and_channels_last_references_match_eager(tmp_path):
    # torch.compile on CPU takes minutes even for tiny networks: slow, not in CI.
    capture(
        lambda: run.main(
            BENCH_TINY_ARGS
            + ["--ops", "decode", "--impls", "reference,reference-cl,reference-compiled"]
            + ["--long-frames", "none", "--warmup", "1", "--repeats", "1"]
            + ["--no-plot", "--no-peer", "--results-dir", str(tmp_path)]
            + ["--out", str(tmp_path / "r.json")]
        )
    )
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
    capture(
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
    backends = dict(fake_backends(), cpp=types.SimpleNamespace(available=True, reason=""))
    monkeypatch.setattr(cdt_fast, "backends", lambda: backends)
    argv = ["--ops", "encode", "--impls", "engine-cpp", "--long-frames", "none", "--no-plot"]
    stdout = capture(
        lambda: run.main(
            BENCH_TINY_ARGS
            + argv
            + ["--results-dir", str(tmp_path), "--out", str(tmp_path / "r.json")]
        )
    )
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["rows"] == []
    (skip,) = [s for s in results["skipped"] if s.get("impl") == "engine-cpp"]
    assert skip["op"] == "encode"
    assert skip["reason"] == (
        "not a result: backend cpp ran none of the timed calls' ops (they ran on torch)"
    )
    assert "## Not measured" in stdout and skip["reason"] in stdout


def test_time_budget_writes_the_rows_measured_so_far(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cdt_fast, "backends", fake_backends, raising=False)
        calls = []
        # out of time from the third check on: the run's start and encode pass, then stop
        mp.setattr(Plan, "out_of_time", lambda self: calls.append(1) or len(calls) >= 3)
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
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cdt_fast, "backends", fake_backends, raising=False)
        capture(lambda: run.main(argv))
        assert _git(checkout_copy, "status", "--porcelain", "--untracked-files=all") == ""
        written = list((checkout_copy / "benchmarks" / "results" / "local").glob("*.json"))
        assert len(written) == 1
        # --publish is what writes the committed results and the README table
        capture(lambda: run.main(argv + ["--publish"]))
    changed = _git(checkout_copy, "status", "--porcelain", "--untracked-files=all")
    assert "README.md" in changed and "benchmarks/results/cpu-" in changed
    readme = (checkout_copy / "README.md").read_text()
    assert "rounds)" in readme  # the CPU table now comes from the new results
