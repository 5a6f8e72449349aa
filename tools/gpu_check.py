#!/usr/bin/env python
"""The Python half of ``tools/gpu_check.sh``: the run's summary file, and bringing a run's files
into the repository.

    python tools/gpu_check.py env SUMMARY                 # versions, device, backends, results key
    python tools/gpu_check.py record SUMMARY --phase P --rc N --seconds S --limit L
                                   [--json FILE] [--junit FILE] [--bench FILE] [--note TEXT]
    python tools/gpu_check.py show SUMMARY                # the phase table
    python tools/gpu_check.py ingest DIR [--results-dir D] [--readme README.md] [--force]

``SUMMARY`` (``$OUT/summary.json``) is rewritten atomically after every phase, so a run cut short
still leaves every finished phase in it. Only ``env`` imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

SCHEMA = "cdt_fast-gpu-check/1"
TIMEOUT_STATUSES = (124, 137)  # GNU timeout: the limit was hit (137: it needed KILL)
ROOT = Path(__file__).resolve().parent.parent
BENCH_PREFIX = "bench-"

__all__ = ["SCHEMA", "results_key", "load", "record", "phase_table", "ingest", "main"]


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


def _junit(path: Path) -> Dict[str, Any]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    counts["skipped"] = sum(int(s.get("skipped", 0)) for s in suites)
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["failed"] = failed
    return counts


def _last_json_line(path: Path) -> Any:
    """The last line of a command's console that is a JSON object (stderr is interleaved)."""
    for line in reversed(path.read_text().splitlines()):
        if line.lstrip().startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError(f"no JSON object line in {path.name}")


def _bench(path: Path) -> Dict[str, Any]:
    data = json.loads(path.read_text())
    rows = data.get("rows", [])
    errors = [r for r in rows if r.get("error")]
    return {"file": path.name, "rows": len(rows), "rows_with_error": len(errors)}


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
) -> Dict[str, Any]:
    """Add one phase's outcome to the summary (rc None: not started)."""
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
        ("result", json_file, _last_json_line),
        ("tests", junit, _junit),
        ("bench", bench, _bench),
    ):
        if path is None:
            continue
        try:
            entry[what] = read(path)
        except (OSError, ValueError, IndexError, ET.ParseError) as err:
            entry[f"{what}_error"] = f"{type(err).__name__}: {err}"
    data = load(summary)
    data["phases"][phase] = entry
    _save(summary, data)
    return entry


def phase_table(data: Dict[str, Any]) -> str:
    lines = ["phase       status    seconds  limit  detail"]
    for name, p in data.get("phases", {}).items():
        detail = p.get("note", "")
        if "tests" in p:
            t = p["tests"]
            detail = f"{t['tests']} tests, {t['failures']} failed, {t['errors']} errors, "
            detail += f"{t['skipped']} skipped"
        elif "bench" in p:
            b = p["bench"]
            detail = f"{b['rows']} rows ({b['rows_with_error']} with an error) in {b['file']}"
        elif "result" in p:
            detail = json.dumps(p["result"])[:100]
        elif name == "env" and data.get("environment"):
            env = data["environment"]
            detail = f"{env.get('device')}, torch {env.get('torch')}, triton {env.get('triton')}"
        for key in ("result_error", "tests_error", "bench_error"):
            if key in p:
                detail = f"{detail} [{p[key]}]".strip()
        lines.append(f"{name:<11} {p['status']:<9} {p['seconds']:>7} {p['limit_s']:>6}  {detail}")
    env = data.get("environment")
    if env:
        lines.append(f"results key: {env.get('key')}")
    return "\n".join(lines) + "\n"


def _replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"README: expected one '{start.strip()}' and one '{end}' line")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return head + start + body.rstrip("\n") + "\n" + end + tail


def ingest(
    source: Path,
    results_dir: Path = ROOT / "benchmarks" / "results",
    readme: Optional[Path] = ROOT / "README.md",
    force: bool = False,
) -> Path:
    """Copy a run's summary and benchmark JSON into ``results_dir/<results key>/`` and, when
    benchmark rows from a GPU arrived, regenerate the README's GPU table from them. Refuses a
    CPU-mode run, and (without ``force``) a target file with other contents."""
    data = load(source / "summary.json")
    env = data.get("environment")
    if not env:
        raise ValueError(f"{source}/summary.json has no environment: the env phase did not run")
    if data.get("mode") != "gpu":
        raise ValueError(f"{source}: a {data.get('mode')!r}-mode run; only GPU runs are committed")
    target = results_dir / env["key"]
    files = [source / "summary.json"] + sorted(source.glob(f"{BENCH_PREFIX}*.json"))
    files += [p for p in (source / "tests-junit.xml",) if p.exists()]
    for f in files:
        dest = target / f.name
        if dest.exists() and dest.read_bytes() != f.read_bytes() and not force:
            raise ValueError(f"{dest} exists with other contents (--force replaces it)")
    for f in files:
        _atomic_write(target / f.name, f.read_text())
    _atomic_write(target / "summary.md", phase_table(data))
    benches = [json.loads(f.read_text()) for f in files if f.name.startswith(BENCH_PREFIX)]
    benches = [b for b in benches if b.get("rows")]
    if readme is not None and benches:
        sys.path.insert(0, str(ROOT))
        from benchmarks import report

        table = report.readme_table(report.merge_results(benches))
        readme.write_text(_replace_block(readme.read_text(), "perf-table-gpu", table))
    return target


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="versions, device and backends into the summary")
    e.add_argument("summary", type=Path)
    e.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    r = sub.add_parser("record", help="one phase's outcome into the summary")
    r.add_argument("summary", type=Path)
    r.add_argument("--phase", required=True)
    r.add_argument("--rc", default=None, help="exit status; '-' for not run")
    r.add_argument("--seconds", type=float, default=0.0)
    r.add_argument("--limit", type=float, default=0.0)
    r.add_argument("--json", type=Path, dest="json_file", help="a file whose last line is JSON")
    r.add_argument("--junit", type=Path)
    r.add_argument("--bench", type=Path)
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
