"""What the GPU check's phases produced, read back and judged: test counts from junit XML, JSON
lines from a console, benchmark rows with a verdict per engine row, the smoke test's report, and
the phase table that ``tools/gpu_check.py show`` prints and ``ingest`` commits."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence

# Engine-row verdicts: kept in the published results, or withheld from them.
KEPT, WITHHELD = ("verified", "mixed"), ("mislabelled", "unverified")

__all__ = [
    "KEPT",
    "WITHHELD",
    "engine_row_verdicts",
    "json_lines",
    "phase_table",
    "read_bench",
    "read_junit",
    "read_smoke",
    "row_label",
]


def read_junit(path: Path) -> Dict[str, Any]:
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


def json_lines(path: Path) -> Any:
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


def row_label(row: Dict[str, Any]) -> str:
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
            "row": row_label(row),
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


def read_bench(path: Path) -> Dict[str, Any]:
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


def read_smoke(path: Path) -> Dict[str, Any]:
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
