"""The lent-GPU runbook without a GPU: benchmarks/gpu_session.sh in its dry mode, the tarballs it
packs, benchmarks/ingest_gpu_results.py on them (temporary results directories and README copies
only), the uniform ``--out`` of the kernel benchmarks, and run.py's partial results on SIGTERM."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks import environment, gpu_session, ingest_gpu_results, report, run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
RESULTS = ROOT / "benchmarks" / "results"
BENCHES = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
# What the device tool brings back from $OUT: plain names, at most 8 files.
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

needs_shell = pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("timeout")), reason="needs bash and GNU timeout"
)


def session(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    full_env = dict(
        os.environ,
        OUT=str(out),
        TMPDIR=str(tmp_path),
        PYTHON=sys.executable,
        PYTHONPATH=str(ROOT),
        **env,
    )
    # Its own process group, so that a hung run is stopped with everything it started.
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=str(tmp_path),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def manifest_of(tarball: Path) -> dict:
    with tarfile.open(tarball) as tar:
        name = next(n for n in tar.getnames() if n.endswith("/" + gpu_session.MANIFEST))
        return json.loads(tar.extractfile(name).read())


def ingest(*argv) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = ingest_gpu_results.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def repo_copy(tmp_path):
    """A results directory and README like the repository's, to be written to."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    readme = tmp_path / "README.md"
    shutil.copyfile(ROOT / "README.md", readme)
    return results, readme


# -- gpu_session.sh ------------------------------------------------------------------------------


@needs_shell
@pytest.mark.parametrize(
    "args, env, message",
    [
        ((), {}, "missing PHASE"),
        (("bogus",), {}, "unknown PHASE 'bogus'"),
        (("tests", "kernels"), {}, "one PHASE at a time"),
        (("--fast", "tests"), {}, "unknown option '--fast'"),
        (("tests",), {"CDT_FAST_GPU_SESSION_BUDGET": "9m"}, "CDT_FAST_GPU_SESSION_BUDGET must be"),
        (
            ("tests",),
            {"CDT_FAST_GPU_SESSION_DRY": "maybe"},
            "CDT_FAST_GPU_SESSION_DRY must be 0 or 1",
        ),
    ],
)
def test_session_names_the_bad_argument(tmp_path, args, env, message):
    done = session(tmp_path, *args, **env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()  # refused before writing anything


@needs_shell
def test_session_help_lists_every_phase(tmp_path):
    done = session(tmp_path, "--help")
    assert done.returncode == 0
    for phase in ("setup", "tests", "kernels", "models", "models-base", "models-small", "all"):
        assert re.search(rf"^  {phase} ", done.stdout, re.M), phase


@needs_shell
def test_dry_setup_packs_one_tarball_and_one_log(tmp_path):
    done = session(tmp_path, "setup", CDT_FAST_GPU_SESSION_DRY="1")
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["setup.log", "setup.tar.gz"]
    log = (out / "setup.log").read_text()
    assert log.rstrip().splitlines()[-1].startswith(f"wrote {out / 'setup.tar.gz'}")
    assert "step" in log and "DRY RUN" in log and done.stdout == log
    manifest = manifest_of(out / "setup.tar.gz")
    assert manifest["schema"] == gpu_session.MANIFEST_SCHEMA and manifest["dry_run"] is True
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["install"]["status"] == "not run" and "dry run" in steps["install"]["note"]
    assert (
        steps["environment"]["status"] == "ok"
        and f"torch {torch.__version__}" in steps["environment"]["detail"]
    )
    assert steps["backends"]["status"] == "ok" and "torch" in steps["backends"]["detail"]
    assert not list(tmp_path.glob("cdt_fast-gpu-session.*"))  # the staging dir is removed


@needs_shell
def test_dry_models_small_then_ingest(tmp_path, repo_copy):
    done = session(tmp_path, "--dry-run", "models-small")
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    assert all(OUT_NAME.match(p.name) for p in out.iterdir()) and len(list(out.iterdir())) == 2
    tarball = out / "models-small.tar.gz"
    manifest = manifest_of(tarball)
    (step,) = [s for s in manifest["steps"] if s["name"] == "models-small"]
    assert step["status"] == "ok" and "rows" in step["detail"], step
    assert any(n.endswith("-tiny-small.json") for n in manifest["results"])

    results, readme = repo_copy
    before = readme.read_text()
    rc, _, err = ingest(tarball, "--results-dir", results, "--readme", readme)
    assert rc == 2 and "--allow-dry" in err and readme.read_text() == before
    rc, stdout, err = ingest(tarball, "--results-dir", results, "--readme", readme, "--allow-dry")
    assert rc == 0, err
    for name in manifest["results"]:
        assert (results / name).is_file() and f"new         {results / name}" in stdout
    table = report.readme_table(json.loads(next(results.glob("*-tiny-small.json")).read_text()))
    assert ingest_gpu_results.replace_block(before, "perf-table", table) == readme.read_text()
    # Ingesting the same tarball again changes nothing.
    rc, stdout, _ = ingest(tarball, "--results-dir", results, "--readme", readme, "--allow-dry")
    assert rc == 0 and "new " not in stdout and "tables unchanged" in stdout


@needs_shell
@pytest.mark.slow
def test_dry_all_runs_every_step(tmp_path):
    done = session(tmp_path, "all", "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    steps = {s["name"]: s for s in manifest_of(tmp_path / "out" / "all.tar.gz")["steps"]}
    assert {"environment", "install", "backends", "tests", *BENCHES} <= set(steps)
    assert steps["tests"]["status"] == "ok"  # collected only
    assert list(steps)[-1] == "bench_causal_conv3d"  # last: it takes the time left


# -- ingest_gpu_results.py on synthetic tarballs --------------------------------------------------


def gpu_results(tag: str, ms: float = 100.0) -> dict:
    """A run.py results file as a GPU would write it (the committed CPU one, relabelled)."""
    data = json.loads((RESULTS / "cpu-amd-epyc-torch2.13.0-cpu.json").read_text())
    data["header"].update(
        gpu_name="NVIDIA H100 80GB HBM3",
        torch="2.11.0+cu130",
        timestamp_utc=f"2026-12-01T00:00:0{len(tag) % 10}Z",
    )
    for row in data["rows"]:
        row.update(device="cuda", latency_ms_p50=ms if row["impl"] == "reference" else ms / 4)
    data["notes"] = []
    return data


def make_tarball(tmp_path: Path, phase: str, files: dict, dry: bool = False) -> Path:
    stage = tmp_path / "stage" / phase
    (stage / gpu_session.RESULTS).mkdir(parents=True)
    for name, payload in files.items():
        (stage / gpu_session.RESULTS / name).write_text(json.dumps(payload))
    first = next(iter(files), None)
    (stage / gpu_session.STEPS).write_text(
        f"models-base\t0\t12\t{gpu_session.RESULTS}/{first}\t\n" if first else ""
    )
    manifest = gpu_session.build_manifest(stage, phase, dry, 0.0, 540, "nvidia-h100")
    (stage / gpu_session.MANIFEST).write_text(json.dumps(manifest))
    tarball = tmp_path / f"{phase}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(stage, arcname=phase)
    return tarball


def test_ingest_fills_the_gpu_table_and_leaves_the_cpu_one(tmp_path, repo_copy):
    results, readme = repo_copy
    base, small = gpu_results("base"), gpu_results("small", 50.0)
    tarball = make_tarball(tmp_path, "models", {"h100-base.json": base, "h100-small.json": small})
    before = readme.read_text()
    rc, stdout, err = ingest(tarball, "--results-dir", results, "--readme", readme)
    assert rc == 0, err
    assert "models-base" in stdout and f"h100-base.json: {len(base['rows'])} rows" in stdout
    after = readme.read_text()
    table = report.readme_table(report.merge_results([base, small]))
    assert after == ingest_gpu_results.replace_block(before, "perf-table-gpu", table)
    assert "NVIDIA H100 80GB HBM3" in after and after.count("<!-- perf-table -->") == 1
    assert not list(results.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_ingest_refuses_to_overwrite_without_force(tmp_path, repo_copy):
    results, readme = repo_copy
    (results / "h100-base.json").write_text(json.dumps(gpu_results("base", 90.0)))
    tarball = make_tarball(tmp_path, "models", {"h100-base.json": gpu_results("base")})
    before = readme.read_text()
    rc, _, err = ingest(tarball, "--results-dir", results, "--readme", readme)
    assert rc == 2 and str(results / "h100-base.json") in err and "--force" in err
    assert readme.read_text() == before  # nothing written
    rc, stdout, _ = ingest(tarball, "--results-dir", results, "--readme", readme, "--force")
    assert rc == 0 and "overwritten" in stdout
    assert json.loads((results / "h100-base.json").read_text())["rows"][0]["latency_ms_p50"] == 100


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing", "no such file"),
        ("not-a-tarball", "not a readable .tar.gz"),
        ("escape", "refusing member"),
        ("no-manifest", "expected one <phase>/manifest.json"),
        ("no-markers", "<!-- perf-table-gpu -->"),
    ],
)
def test_ingest_names_what_is_wrong(tmp_path, repo_copy, problem, message):
    results, readme = repo_copy
    tarball = make_tarball(tmp_path, "models", {"h100-base.json": gpu_results("base")})
    if problem == "missing":
        tarball = tmp_path / "nope.tar.gz"
    elif problem == "not-a-tarball":
        tarball.write_text("hello")
    elif problem in ("escape", "no-manifest"):
        tarball = tmp_path / "bad.tar.gz"
        with tarfile.open(tarball, "w:gz") as tar:
            src = tmp_path / "x.json"
            src.write_text("{}")
            tar.add(src, arcname="../x.json" if problem == "escape" else "models/x.json")
    else:
        readme.write_text(readme.read_text().replace("<!-- /perf-table-gpu -->\n", ""))
    before = sorted(p.name for p in results.iterdir())
    rc, _, err = ingest(tarball, "--results-dir", results, "--readme", readme)
    assert rc == 2 and message in err, err
    assert sorted(p.name for p in results.iterdir()) == before


def test_readme_cpu_table_is_generated_from_the_committed_results():
    """What ingest would write for the committed CPU results is what the README holds."""
    committed = sorted(RESULTS.glob("*.json"))
    tables = ingest_gpu_results.readme_tables(committed, committed)
    readme = (ROOT / "README.md").read_text()
    assert ingest_gpu_results.replace_block(readme, "perf-table", tables["perf-table"]) == readme


def test_manifest_schema_names_match_run_and_shell_script():
    assert gpu_session.RUN_SCHEMA == run.SCHEMA
    script = SCRIPT.read_text()
    for name in (gpu_session.RESULTS, gpu_session.LOGS, gpu_session.STEPS):
        assert f'"$STAGE/{name}' in script, name


def test_git_commit_from_the_environment_without_git(tmp_path, monkeypatch):
    monkeypatch.delenv("CDT_FAST_GIT_COMMIT", raising=False)
    assert environment.git_revision(tmp_path)["commit"] is None
    monkeypatch.setenv("CDT_FAST_GIT_COMMIT", " 0123abc\n")
    assert environment.git_revision(tmp_path)["commit"] == "0123abc"


# -- the benchmarks' --out ------------------------------------------------------------------------


@pytest.fixture
def bench_support(monkeypatch):
    """This checkout's kernels/_bench_support.py, also where ``cdt_fast.kernels`` is installed
    from another checkout (a git worktree using the main one's editable install)."""
    spec = importlib.util.spec_from_file_location(
        "cdt_fast.kernels._bench_support", ROOT / "kernels" / "_bench_support.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, spec.name, module)
    return module


@pytest.mark.parametrize("bench", BENCHES)
def test_every_kernel_benchmark_takes_out(bench, capsys, bench_support):
    module = importlib.import_module(f"benchmarks.{bench}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert re.search(r"--out\b", capsys.readouterr().out)


def test_json_is_kept_as_the_old_name_of_out():
    from benchmarks import bench_channel_norm

    assert bench_channel_norm.main_arguments("doc", ["--json", "a.json"]).out == "a.json"


def test_bench_main_writes_out(tmp_path, monkeypatch, bench_support):
    _bench_support = bench_support
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    rows = lambda: [_bench_support.row("op", "case", "triton", 2.0, 4_000_000)]  # noqa: E731
    with contextlib.redirect_stdout(io.StringIO()):
        assert (
            _bench_support.bench_main(
                "toy", "d", rows, tmp_path / "res", ["--out", str(tmp_path / "x.json")]
            )
            == 0
        )
    saved = json.loads((tmp_path / "x.json").read_text())
    assert saved["rows"][0]["GB/s"] == pytest.approx(2.0) and not (tmp_path / "res").exists()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        _bench_support.bench_main("toy", "d", rows, tmp_path, ["--out", "y.json", "--no-save"])
    assert "--out and --no-save" in err.getvalue()


# -- run.py under a time guard -------------------------------------------------------------------


def test_run_writes_partial_results_when_terminated(tmp_path, monkeypatch):
    # The peer row comes after every model row: SIGTERM there leaves the model rows measured.
    monkeypatch.setattr(run, "run_peer", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = run.main(
            [
                "--tiny",
                "--models",
                "small",
                "--frames",
                "5",
                "--size",
                "32",
                "--long-frames",
                "none",
                "--ops",
                "decode",
                "--impls",
                "reference",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--threads",
                "1",
                "--no-progress",
                "--no-plot",
                "--results-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "out.json"),
            ]
        )
    torch.set_num_threads(threads)
    assert rc == run.EXIT_INTERRUPTED and signal.getsignal(signal.SIGTERM) == before
    results = json.loads((tmp_path / "out.json").read_text())
    assert [(r["impl"], r["op"]) for r in results["rows"]] == [("reference", "decode")]
    assert results["header"]["interrupted"] == "stopped by SIGTERM"
    assert any(n.startswith("INTERRUPTED") for n in results["notes"])
    assert "INTERRUPTED" in report.readme_table(results)
