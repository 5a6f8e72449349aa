"""The Python half of ``benchmarks/gpu_session.sh`` (the lent-GPU runbook) and what
``benchmarks/ingest_gpu_results.py`` reads back: the layout of a session's staging directory, its
manifest and the summary table.

    python -m benchmarks.gpu_session environment [--out PATH]   # versions, GPU (JSON)
    python -m benchmarks.gpu_session backends [--out PATH]      # cdt_fast.backends(), one a line
    python -m benchmarks.gpu_session device-key                 # the results files' device key
    python -m benchmarks.gpu_session finish STAGE --phase P --started EPOCH --budget S [--dry-run]

A staging directory (one per phase, packed as ``<phase>.tar.gz``) holds ``manifest.json``,
``results/`` (files bound for ``benchmarks/results/``), ``logs/`` (one log per step, the junit XML,
the environment) and ``steps.tsv``, which the shell script appends one line to per step:
``name, exit status ('-': not run), seconds, artifact (relative path or '-'), note``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import environment  # noqa: E402

__all__ = [
    "MANIFEST",
    "RESULTS",
    "LOGS",
    "STEPS",
    "MANIFEST_SCHEMA",
    "read_steps",
    "step_status",
    "artifact_detail",
    "build_manifest",
    "summary_table",
    "device_key",
    "main",
]

# The staging layout; gpu_session.sh spells the same names.
MANIFEST = "manifest.json"
RESULTS = "results"
LOGS = "logs"
STEPS = "steps.tsv"
MANIFEST_SCHEMA = "cdt_fast-gpu-session/1"
RUN_SCHEMA = "cdt_fast-benchmark/1"  # benchmarks/run.py's SCHEMA (not imported: run.py loads torch)
# GNU timeout's statuses: 124 the limit was hit; 137 (128 + KILL) the command ignored TERM.
TIMEOUT_STATUSES = (124, 137)
SCRIPT_NOTE = "gpu_session.sh: "  # how a step's log line addresses the summary


def _utc(epoch: Optional[float] = None) -> str:
    moment = (
        _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc)
        if epoch is not None
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- steps and what they left --------------------------------------------------------------------


def read_steps(stage: Path) -> List[Dict[str, Any]]:
    path = Path(stage) / STEPS
    if not path.exists():
        return []
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 5:
            raise ValueError(f"{path}:{number}: expected 5 tab-separated fields, got {len(fields)}")
        name, rc, seconds, artifact, note = fields
        steps.append(
            {
                "name": name,
                "rc": None if rc == "-" else int(rc),
                "seconds": float(seconds),
                "artifact": None if artifact == "-" else artifact,
                "note": note,
            }
        )
    return steps


def step_status(rc: Optional[int]) -> str:
    if rc is None:
        return "not run"
    if rc == 0:
        return "ok"
    return "timeout" if rc in TIMEOUT_STATUSES else "failed"


def _junit_counts(path: Path) -> str:
    root = ET.parse(str(path)).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return (
        f"{passed} passed, {total['failures']} failed, {total['errors']} errors, "
        f"{total['skipped']} skipped"
    )


def artifact_detail(stage: Path, artifact: Optional[str]) -> str:
    """A few words on what a step left: test counts, rows written, backends available."""
    if artifact is None:
        return ""
    path = Path(stage) / artifact
    if not path.exists():
        return f"no {artifact}"
    try:
        if path.suffix == ".log":  # a step's own log: its last line addressed to the reader
            notes = [
                line
                for line in path.read_text(errors="replace").splitlines()
                if line.startswith(SCRIPT_NOTE)
            ]
            return notes[-1][len(SCRIPT_NOTE) :] if notes else ""
        if path.suffix == ".xml":
            return _junit_counts(path)
        data = json.loads(path.read_text())
    except (OSError, ValueError, ET.ParseError) as err:
        return f"{artifact} unreadable: {type(err).__name__}"
    name = path.name
    if isinstance(data, dict) and data.get("schema") == RUN_SCHEMA:
        stopped = data["header"].get("interrupted")
        return f"{name}: {len(data['rows'])} rows" + (" (INTERRUPTED: partial)" if stopped else "")
    if isinstance(data, dict) and data.get("backends"):
        ready = [b for b, s in data["backends"].items() if s["available"]]
        return "available: " + (", ".join(ready) or "none")
    if isinstance(data, dict) and "device_key" in data:  # the environment step's
        return (
            f"{data.get('gpu_name') or data.get('cpu_model')}, torch {data.get('torch')}, "
            f"triton {data.get('triton')}, cuDNN {data.get('cudnn')}"
        )
    for key in ("rows", "runs"):  # kernel benchmarks: rows, or one run per shape table
        if isinstance(data, dict) and isinstance(data.get(key), list):
            return f"{name}: {len(data[key])} {key}"
    return f"{name}: {len(data)} rows" if isinstance(data, list) else name


# -- manifest and summary ------------------------------------------------------------------------


def build_manifest(
    stage: Path,
    phase: str,
    dry_run: bool,
    started: float,
    budget_s: int,
    device: Optional[str] = None,
) -> Dict[str, Any]:
    stage = Path(stage)
    steps = read_steps(stage)
    for step in steps:
        step["status"] = step_status(step["rc"])
        step["detail"] = artifact_detail(stage, step["artifact"])
    finished = _dt.datetime.now(_dt.timezone.utc).timestamp()
    results = sorted(p.name for p in (stage / RESULTS).glob("*") if p.is_file())
    return {
        "schema": MANIFEST_SCHEMA,
        "phase": phase,
        "dry_run": dry_run,
        "started_utc": _utc(started),
        "finished_utc": _utc(finished),
        "elapsed_s": round(finished - started, 1),
        "budget_s": budget_s,
        "device_key": device,
        "git": environment.git_revision(),
        "steps": steps,
        "results": results,
    }


def summary_table(manifest: Dict[str, Any]) -> str:
    steps = manifest["steps"]
    title = (
        f"gpu_session.sh {manifest['phase']}{' (DRY RUN)' if manifest['dry_run'] else ''}: "
        f"{len(steps)} steps in {manifest['elapsed_s']:.0f} s of {manifest['budget_s']} s; "
        f"{manifest.get('device_key') or 'device unknown'}; commit "
        f"{(manifest.get('git') or {}).get('commit') or 'unknown'}"
    )
    width = max([len(s["name"]) for s in steps] + [4])
    lines = [title, f"{'step':<{width}}  {'status':<8} {'rc':>4} {'time':>6}  detail"]
    for s in steps:
        rc = "-" if s["rc"] is None else str(s["rc"])
        detail = "; ".join(part for part in (s.get("detail"), s.get("note")) if part)
        lines.append(
            f"{s['name']:<{width}}  {s['status']:<8} {rc:>4} {s['seconds']:>5.0f}s  {detail}"
        )
    return "\n".join(lines) + "\n"


# -- what the shell script asks ------------------------------------------------------------------


def device_key() -> str:
    """The key run.py names its results files by (GPU or CPU model + torch version)."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return environment.device_key(
        {"gpu_name": gpu, "cpu_model": environment.cpu_model(), "torch": torch.__version__}
    )


def _environment() -> Dict[str, Any]:
    import torch

    info = environment.describe(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    info["device_key"] = device_key()
    return info


def _backends() -> Dict[str, Any]:
    import cdt_fast

    return {
        "backends": {
            name: {"available": s.available, "reason": s.reason}
            for name, s in cdt_fast.backends().items()
        }
    }


def _write(payload: Dict[str, Any], out: Optional[Path]) -> None:
    if out is not None:
        from cdt_fast.checkpoint import atomic_write

        text = json.dumps(payload, indent=1, default=str) + "\n"
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_session", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("environment", "backends"):
        sub.add_parser(name).add_argument("--out", type=Path, help="also write the JSON here")
    sub.add_parser("device-key")
    finish = sub.add_parser("finish", help="write STAGE/manifest.json and print the summary")
    finish.add_argument("stage", type=Path)
    finish.add_argument("--phase", required=True)
    finish.add_argument("--started", type=float, required=True, help="epoch seconds")
    finish.add_argument("--budget", type=int, required=True, help="the phase's budget, seconds")
    finish.add_argument("--dry-run", action="store_true")
    finish.add_argument("--device-key", default=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "environment":
        info = _environment()
        _write(info, args.out)
        for key in (
            "gpu_name",
            "gpu_capability",
            "gpu_memory_bytes",
            "cpu_model",
            "cpu_count",
            "python",
            "torch",
            "cuda",
            "cudnn",
            "triton",
            "platform",
            "device_key",
        ):
            print(f"{key:17s} {info.get(key)}")
        print(f"{'git':17s} {info['git']}")
    elif args.command == "backends":
        info = _backends()
        _write(info, args.out)
        for name, s in info["backends"].items():
            print(f"{name:7s} {'yes' if s['available'] else 'NO '}  {s['reason']}")
    elif args.command == "device-key":
        print(device_key())
    else:
        if not args.stage.is_dir():
            parser.error(f"finish: STAGE {args.stage} is not a directory")
        manifest = build_manifest(
            args.stage, args.phase, args.dry_run, args.started, args.budget, args.device_key
        )
        (args.stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        sys.stdout.write(summary_table(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
