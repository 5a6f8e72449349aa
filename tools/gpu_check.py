#!/usr/bin/env python
"""The Python half of ``tools/gpu_check.sh``: the run's summary file, and bringing a run's files
into the repository.

    python tools/gpu_check.py preflight SUMMARY --mode gpu|cpu   # fails loudly, in one line
    python tools/gpu_check.py env SUMMARY --mode gpu|cpu          # versions, device, results key
    python tools/gpu_check.py record SUMMARY --phase P --rc N --seconds S --limit L
                                   [--json FILE] [--junit FILE] [--bench FILE] [--smoke FILE]
                                   [--into FILE] [--note TEXT]
    python tools/gpu_check.py show SUMMARY                         # the phase table
    python tools/gpu_check.py ingest DIR [--results-dir D] [--readme README.md] [--force]

``SUMMARY`` (``$OUT/summary.json``) is rewritten atomically after every phase, so a run cut short
still leaves every finished phase in it. ``record --into`` merges a phase's benchmark JSON or
junit XML into one file of the run (a remote runner may bring back only 8 files). Every engine
row of a benchmark is checked against what it says ran it (:func:`engine_row_verdicts`): a row
whose labelled backend ran no op, or that does not say, is withheld from the committed results
and the README table. Only ``preflight`` and ``env`` import torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from gpu_check_report import (
    KEPT,
    engine_row_verdicts,
    json_lines,
    phase_table,
    read_bench,
    read_junit,
    read_smoke,
    row_label,
)

SCHEMA = "cdt_fast-gpu-check/1"
TIMEOUT_STATUSES = (124, 137)  # GNU timeout: the limit was hit (137: it needed KILL)
ROOT = Path(__file__).resolve().parent.parent
BENCH_PREFIX = "bench-"
SMOKE_FILE = "smoke.json"
JUNIT_FILE = "tests-junit.xml"
# What the check cannot do without, per mode (pytest-timeout is in the GPU image; a hung test
# would otherwise take its whole phase).
REQUIRED_MODULES = {
    "gpu": ("numpy", "triton", "pytest", "pytest_timeout"),
    "cpu": ("numpy", "triton", "pytest"),
}

__all__ = [
    "SCHEMA",
    "REQUIRED_MODULES",
    "results_key",
    "load",
    "preflight",
    "record",
    "engine_row_verdicts",
    "merge_bench",
    "phase_table",
    "ingest",
    "main",
]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(summary: Path) -> Dict[str, Any]:
    if summary.exists():
        data = json.loads(summary.read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"{summary}: not a gpu_check summary (schema {data.get('schema')!r})")
        return data
    return {"schema": SCHEMA, "phases": {}}


def _save(summary: Path, data: Dict[str, Any]) -> None:
    _atomic_write(summary, json.dumps(data, indent=2) + "\n")  # phases in the order they ran


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-")


def results_key(env: Dict[str, Any]) -> str:
    """Directory name of a run's results: device, torch, CUDA, cuDNN and Triton versions, e.g.
    ``nvidia-h200-torch2.11.0-cu130-cuda13.0-cudnn91300-triton3.6.0``."""
    parts = [
        env.get("device") or "unknown-device",
        f"torch{env.get('torch')}",
        f"cuda{env.get('cuda') or 'none'}",
        f"cudnn{env.get('cudnn') or 'none'}",
        f"triton{env.get('triton') or 'none'}",
    ]
    return "-".join(_slug(p) for p in parts)


def environment() -> Dict[str, Any]:
    import platform

    import torch

    env: Dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "commit": os.environ.get("CDT_FAST_GIT_COMMIT") or None,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001 - recorded, the check goes on
        env["triton"] = None
        env["triton_error"] = f"{type(err).__name__}: {err}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = props.name
        env["capability"] = f"{props.major}.{props.minor}"
        env["memory_bytes"] = props.total_memory
        env["multiprocessors"] = props.multi_processor_count
    else:
        env["device"] = f"cpu-{platform.machine()}"
    try:
        import cdt_fast

        env["backends"] = {
            name: {"available": bool(s.available), "reason": s.reason}
            for name, s in cdt_fast.backends().items()
        }
    except Exception as err:  # noqa: BLE001
        env["backends_error"] = f"{type(err).__name__}: {err}"
    env["key"] = results_key(env)
    return env


def preflight(mode: str, root: Path = ROOT) -> Dict[str, Any]:
    """Whether this interpreter can run the check: the modules it needs import, ``cdt_fast`` is
    this checkout's, every Triton kernel module imports, and (GPU mode) torch sees a GPU.
    ``problems`` is empty when it can."""
    problems: List[str] = []

    def attempt(name: str):
        try:
            return importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - every failure is named, none is fatal here
            problems.append(f"{name} does not import ({type(err).__name__}: {err})")
            return None

    for name in REQUIRED_MODULES[mode]:
        attempt(name)
    result: Dict[str, Any] = {"mode": mode, "problems": problems}
    cdt_fast = attempt("cdt_fast")
    if cdt_fast is not None:
        where = Path(cdt_fast.__file__).resolve().parent
        result["cdt_fast"] = str(where)
        if not where.is_relative_to(root.resolve()):
            problems.append(f"cdt_fast imports from {where}, not from this checkout ({root})")
        # every module the launch capture redirects, and every module an op dispatches to
        warmup, dispatch = attempt("cdt_fast.engine.warmup"), attempt("cdt_fast.engine.dispatch")
        modules = set(warmup.KERNEL_MODULES if warmup is not None else ())
        if dispatch is not None:
            modules |= {m.rsplit(".", 1)[1] for m in dispatch.implementations("triton").values()}
        imported = [m for m in sorted(modules) if attempt(f"cdt_fast.kernels.{m}") is not None]
        result["kernel_modules"] = len(imported)
    if mode == "gpu":
        import torch

        if not torch.cuda.is_available():
            problems.append(f"torch {torch.__version__} sees no CUDA GPU")
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            problems.append("TRITON_INTERPRET is set: Triton would run interpreted, not compiled")
    return result


def merge_bench(parts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Benchmark results of several processes of one run as one results file: the rows, notes
    and skips of all (``benchmarks.report.merge_results``), every process's header kept under
    ``part_headers``."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import report

    headers = [h for p in parts for h in p.get("part_headers", [p.get("header")])]
    merged = report.merge_results(list(parts))
    return {**merged, "part_headers": headers}


def _merge_into(kind: str, part: Path, into: Path) -> None:
    if kind == "bench":
        new = json.loads(part.read_text())
        parts = [json.loads(into.read_text()), new] if into.exists() else [new]
        _atomic_write(into, json.dumps(merge_bench(parts), indent=1) + "\n")
        return
    tree = ET.parse(part)
    suites = [tree.getroot()] if tree.getroot().tag == "testsuite" else list(tree.getroot())
    root = ET.parse(into).getroot() if into.exists() else ET.Element("testsuites")
    for suite in suites:
        suite.set("name", part.stem)
        root.append(suite)
    _atomic_write(into, ET.tostring(root, encoding="unicode") + "\n")


def record(
    summary: Path,
    phase: str,
    rc: Optional[int],
    seconds: float,
    limit: float,
    json_file: Optional[Path] = None,
    junit: Optional[Path] = None,
    bench: Optional[Path] = None,
    note: str = "",
    smoke: Optional[Path] = None,
    into: Optional[Path] = None,
) -> Dict[str, Any]:
    """Add one phase's outcome to the summary (rc None: not started). ``into``: merge the
    phase's ``bench`` JSON or ``junit`` XML into that file of the run."""
    if rc is None:
        status = "not run"
    elif rc == 0:
        status = "ok"
    elif rc in TIMEOUT_STATUSES:
        status = "timeout"
    else:
        status = "failed"
    entry: Dict[str, Any] = {
        "status": status,
        "rc": rc,
        "seconds": round(seconds, 1),
        "limit_s": limit,
    }
    if note:
        entry["note"] = note
    for what, path, read in (
        ("result", json_file, json_lines),
        ("tests", junit, read_junit),
        ("bench", bench, read_bench),
        ("smoke", smoke, read_smoke),
    ):
        if path is None:
            continue
        try:
            entry[what] = read(path)
            if into is not None and what in ("tests", "bench"):
                _merge_into(what, path, into)
                entry[what]["into"] = into.name
        except (OSError, ValueError, KeyError, IndexError, ET.ParseError) as err:
            entry[f"{what}_error"] = f"{type(err).__name__}: {err}"
    data = load(summary)
    data["phases"][phase] = entry
    _save(summary, data)
    return entry


def _replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"README: expected one '{start.strip()}' and one '{end}' line")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return head + start + body.rstrip("\n") + "\n" + end + tail


def _publishable(bench: Dict[str, Any]) -> tuple:
    """A benchmark results dict without its withheld engine rows (each listed under ``skipped``
    with the reason), and one line per withheld row."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import report

    rows = bench.get("rows", [])
    verdicts = {v["row"]: v for v in engine_row_verdicts(rows)}
    kept, skipped, lines = [], list(bench.get("skipped", [])), []
    for row in rows:
        verdict = (
            verdicts.get(row_label(row)) if str(row.get("impl")).startswith("engine-") else None
        )
        if verdict is None or verdict["verdict"] in KEPT:
            kept.append(row)
            continue
        reason = f"withheld by tools/gpu_check.py: {verdict['verdict']}: {verdict['reason']}"
        skipped.append(
            {
                "model": row.get("model"),
                "impl": row.get("impl"),
                "op": row.get("op"),
                "setting": f"{row.get('frames')}x{row.get('height')}x{row.get('width')}",
                "reason": reason,
            }
        )
        lines.append(f"{verdict['row']}: {verdict['verdict']}: {verdict['reason']}")
    published = dict(bench, rows=kept, skipped=skipped, ratios=report.compute_ratios(kept))
    return published, lines


def ingest(
    source: Path,
    results_dir: Path = ROOT / "benchmarks" / "results",
    readme: Optional[Path] = ROOT / "README.md",
    force: bool = False,
) -> Path:
    """Copy a run's summary, smoke report, junit XML and benchmark JSON into
    ``results_dir/<results key>/`` and, when benchmark rows from a GPU arrived, regenerate the
    README's GPU table from them. Engine rows that :func:`engine_row_verdicts` withholds are
    left out of both (listed under the file's ``skipped`` and in ``summary.md``). Refuses a
    CPU-mode run, and (without ``force``) a target file with other contents."""
    data = load(source / "summary.json")
    env = data.get("environment")
    if not env:
        raise ValueError(f"{source}/summary.json has no environment: the env phase did not run")
    if data.get("mode") != "gpu":
        raise ValueError(f"{source}: a {data.get('mode')!r}-mode run; only GPU runs are committed")
    target = results_dir / env["key"]
    texts = {"summary.json": (source / "summary.json").read_text()}
    for extra in (source / JUNIT_FILE, source / SMOKE_FILE):
        if extra.exists():
            texts[extra.name] = extra.read_text()
    benches, withheld = [], []
    for path in sorted(source.glob(f"{BENCH_PREFIX}*.json")):
        bench, held = _publishable(json.loads(path.read_text()))
        texts[path.name] = json.dumps(bench, indent=1) + "\n"
        withheld += held
        if bench.get("rows"):
            benches.append(bench)
    table = phase_table(data)
    if withheld:
        table += "\nEngine rows withheld from these results and the README table:\n"
        table += "".join(f"- {line}\n" for line in withheld)
    texts["summary.md"] = table
    for name, text in texts.items():
        dest = target / name
        if dest.exists() and dest.read_text() != text and not force:
            raise ValueError(f"{dest} exists with other contents (--force replaces it)")
    for name, text in texts.items():
        _atomic_write(target / name, text)
    if readme is not None and benches:
        sys.path.insert(0, str(ROOT))
        from benchmarks import report

        table = report.readme_table(report.merge_results(benches))
        readme.write_text(_replace_block(readme.read_text(), "perf-table-gpu", table))
    return target


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("preflight", help="fail, in one line, unless the check can run here")
    f.add_argument("summary", type=Path)
    f.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    e = sub.add_parser("env", help="versions, device and backends into the summary")
    e.add_argument("summary", type=Path)
    e.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    r = sub.add_parser("record", help="one phase's outcome into the summary")
    r.add_argument("summary", type=Path)
    r.add_argument("--phase", required=True)
    r.add_argument("--rc", default=None, help="exit status; '-' for not run")
    r.add_argument("--seconds", type=float, default=0.0)
    r.add_argument("--limit", type=float, default=0.0)
    r.add_argument("--json", type=Path, dest="json_file", help="a console with JSON lines")
    r.add_argument("--junit", type=Path)
    r.add_argument("--bench", type=Path)
    r.add_argument("--smoke", type=Path, help="tools/gpu_smoke.py's report")
    r.add_argument("--into", type=Path, help="merge --bench or --junit into this file")
    r.add_argument("--note", default="")
    s = sub.add_parser("show", help="print the phase table")
    s.add_argument("summary", type=Path)
    i = sub.add_parser("ingest", help="commit-ready copies of a run's files")
    i.add_argument("source", type=Path, help="the folder the run's $OUT files were fetched to")
    i.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    i.add_argument("--readme", type=Path, default=ROOT / "README.md")
    i.add_argument("--no-readme", action="store_true")
    i.add_argument("--force", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "preflight":
        result = preflight(args.mode)
        data = load(args.summary)
        data["preflight"] = result
        _save(args.summary, data)
        if result["problems"]:
            print("preflight failed: " + "; ".join(result["problems"]), file=sys.stderr)
            return 1
        print(
            f"preflight: cdt_fast from {result['cdt_fast']}, "
            f"{result['kernel_modules']} kernel modules import"
        )
        return 0
    if args.cmd == "env":
        env = environment()
        data = load(args.summary)
        data["environment"], data["mode"] = env, args.mode
        _save(args.summary, data)
        print(json.dumps(env, indent=2, sort_keys=True))
        return 0
    if args.cmd == "record":
        rc = None if args.rc in (None, "-") else int(args.rc)
        record(
            args.summary,
            args.phase,
            rc,
            args.seconds,
            args.limit,
            args.json_file,
            args.junit,
            args.bench,
            args.note,
            args.smoke,
            args.into,
        )
        return 0
    if args.cmd == "show":
        sys.stdout.write(phase_table(load(args.summary)))
        return 0
    try:
        target = ingest(
            args.source, args.results_dir, None if args.no_readme else args.readme, args.force
        )
    except ValueError as err:
        print(f"tools/gpu_check.py ingest: {err}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
