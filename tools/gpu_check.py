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
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

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
# Engine-row verdicts: kept in the published results, or withheld from them.
KEPT, WITHHELD = ("verified", "mixed"), ("mislabelled", "unverified")

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


def _json_lines(path: Path) -> Any:
    """The lines of a command's console that are JSON objects (stderr is interleaved): the one
    object, or the list of them when there are several."""
    found = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    if not found:
        raise ValueError(f"no JSON object line in {path.name}")
    return found[0] if len(found) == 1 else found


def _row_label(row: Dict[str, Any]) -> str:
    return (
        f"CDT-{row.get('model')} {row.get('op')} {row.get('frames')}x{row.get('height')}x"
        f"{row.get('width')} {row.get('dtype')} {row.get('impl')}"
    )


def engine_row_verdicts(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One verdict per engine row (``impl`` = ``engine-<backend>``) from what the row says ran
    its ops: ``ran_on`` ({op: {backend: calls}}), ``backends_used`` and ``cuda_graphs``.

    - ``verified``: the labelled backend ran every op call;
    - ``mixed``: it ran some, other backends the rest (kept; ``reason`` states the mix);
    - ``mislabelled``: it ran none (withheld: the row measured another backend);
    - ``unverified``: the row has no such record, or its two records disagree (withheld).
    """
    verdicts = []
    for row in rows:
        impl = str(row.get("impl", ""))
        if not impl.startswith("engine-"):
            continue
        label = impl[len("engine-") :]
        ran_on, used = row.get("ran_on"), row.get("backends_used")
        graphs = row.get("cuda_graphs")
        verdict: Dict[str, Any] = {
            "row": _row_label(row),
            "cuda_graphs": graphs.get("state") if isinstance(graphs, dict) else None,
        }
        verdicts.append(verdict)
        if not isinstance(ran_on, dict) or not isinstance(used, list):
            verdict.update(
                verdict="unverified",
                reason="the row does not record which backend ran its ops (ran_on, backends_used)",
            )
            continue
        calls: Counter = Counter()
        ops_of: Dict[str, List[str]] = {}
        for op, per_backend in ran_on.items():
            for backend, n in (per_backend or {}).items():
                if n:
                    calls[backend] += int(n)
                    ops_of.setdefault(backend, []).append(op)
        verdict["backends_used"] = sorted(used)
        verdict["calls"] = dict(calls)
        if sorted(calls) != sorted(used):
            verdict.update(
                verdict="unverified",
                reason=f"backends_used {sorted(used)} disagrees with ran_on {sorted(calls)}",
            )
        elif not calls.get(label):
            ran = ", ".join(f"{b} {n} calls" for b, n in sorted(calls.items())) or "no op"
            verdict.update(
                verdict="mislabelled", reason=f"labelled {impl}, but {label} ran no op ({ran})"
            )
        elif len(calls) > 1:
            others = "; ".join(
                f"{b} {calls[b]} calls ({', '.join(sorted(ops_of[b]))})"
                for b in sorted(calls)
                if b != label
            )
            verdict.update(verdict="mixed", reason=f"{label} {calls[label]} calls; also {others}")
        else:
            verdict.update(verdict="verified", reason=f"{label} ran all {calls[label]} op calls")
    return verdicts


def _bench(path: Path) -> Dict[str, Any]:
    data = json.loads(path.read_text())
    rows = data.get("rows", [])
    errors = [r for r in rows if r.get("error")]
    verdicts = engine_row_verdicts(rows)
    header = data.get("header") or {}
    return {
        "file": path.name,
        "rows": len(rows),
        "rows_with_error": len(errors),
        "interrupted": header.get("interrupted"),
        "time_budget_spent": any(n.startswith("TIME BUDGET") for n in data.get("notes", [])),
        "engine_rows": {v: sum(x["verdict"] == v for x in verdicts) for v in KEPT + WITHHELD},
        "engine_notes": [
            f"{x['row']}: {x['verdict']}: {x['reason']}"
            for x in verdicts
            if x["verdict"] != "verified"
        ],
    }


def _smoke(path: Path) -> Dict[str, Any]:
    data = json.loads(path.read_text())
    failing = [r for r in data.get("results", []) if r.get("status") not in ("ok", None)]
    return {
        "file": path.name,
        "status": data.get("status"),
        "summary": data.get("summary"),
        "compile": [
            {k: c.get(k) for k in ("groups", "kernels", "seconds")} | {"failed": len(c["failed"])}
            for c in data.get("compile") or []
        ],
        "failing": [
            f"{r['preset']} {r['dtype']} {r['op']} ({', '.join(r.get('kernels', []))}): "
            f"{r.get('status')}"
            + (f" in {r['kernel']}" if r.get("kernel") else "")
            + (f": {r['error']}" if r.get("error") else "")
            + (f": largest error {r['worst']:.3g}x its tolerance" if r.get("worst") else "")
            for r in failing[:20]
        ],
    }


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
        ("result", json_file, _json_lines),
        ("tests", junit, _junit),
        ("bench", bench, _bench),
        ("smoke", smoke, _smoke),
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


def _detail(name: str, p: Dict[str, Any], data: Dict[str, Any]) -> List[str]:
    """The phase table's detail for one phase: its first line, then any lines that follow."""
    more: List[str] = []
    detail = p.get("note", "")
    if "tests" in p:
        t = p["tests"]
        detail = f"{t['tests']} tests, {t['failures']} failed, {t['errors']} errors, "
        detail += f"{t['skipped']} skipped"
        more = [f"failed: {test}" for test in t.get("failed", [])[:10]]
    elif "bench" in p:
        b = p["bench"]
        detail = f"{b['rows']} rows ({b['rows_with_error']} with an error) from {b['file']}"
        counts = b.get("engine_rows", {})
        if any(counts.values()):
            detail += "; engine rows: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        if b.get("time_budget_spent"):
            detail += "; time budget spent"
        more = list(b.get("engine_notes", []))
    elif "smoke" in p:
        sm = p["smoke"]
        counts = sm.get("summary") or {}
        detail = f"{sm.get('status')}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
        more = [
            f"compiled {', '.join(c.get('groups') or [])}: {c.get('kernels')} kernels in "
            f"{c.get('seconds')} s, {c.get('failed')} failed"
            for c in sm.get("compile", [])
        ] + list(sm.get("failing", []))
    elif "result" in p:
        runs = p["result"] if isinstance(p["result"], list) else [p["result"]]
        if all(isinstance(r, dict) and "kernels" in r for r in runs):  # the warm-up's lines
            detail = "; ".join(
                f"{r.get('model')} {'x'.join(map(str, r.get('size') or []))}: {r['kernels']} "
                f"kernels in {r.get('seconds')} s"
                + (f", {len(r['failed'])} failed" if r.get("failed") else "")
                for r in runs
            )
            more = [f"not compiled: {line}" for r in runs for line in r.get("failed") or []][:10]
        else:
            detail = json.dumps(p["result"])[:100]
    elif name == "preflight" and data.get("preflight"):
        pre = data["preflight"]
        problems = pre.get("problems", [])
        detail = (
            "; ".join(problems)
            if problems
            else (
                f"cdt_fast from {pre.get('cdt_fast')}, {pre.get('kernel_modules')} kernel modules"
            )
        )
    elif name == "env" and data.get("environment"):
        env = data["environment"]
        detail = f"{env.get('device')}, torch {env.get('torch')}, triton {env.get('triton')}"
    for key in ("result_error", "tests_error", "bench_error", "smoke_error"):
        if key in p:
            detail = f"{detail} [{p[key]}]".strip()
    if p.get("note") and detail != p["note"]:
        detail = f"{detail} ({p['note']})"
    return [detail] + more


def phase_table(data: Dict[str, Any]) -> str:
    lines = ["phase              status    seconds  limit  detail"]
    for name, p in data.get("phases", {}).items():
        first, *more = _detail(name, p, data)
        lines.append(f"{name:<18} {p['status']:<9} {p['seconds']:>7} {p['limit_s']:>6}  {first}")
        lines += [f"{'':<44}{line}" for line in more]
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
            verdicts.get(_row_label(row)) if str(row.get("impl")).startswith("engine-") else None
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
