"""The model benchmark's results: the header of what a run measured on (:func:`build_header`),
the results document (:func:`assemble`, schema :data:`SCHEMA`), its file names
(:func:`file_key`) and writing it as JSON, markdown and a plot (:func:`write_results`), every
file atomically."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks import environment, hardware, impls, report
from benchmarks.plan import Plan
from benchmarks.rows import row_order
from cdt_fast.checkpoint import atomic_write

__all__ = ["SCHEMA", "build_header", "assemble", "file_key", "write_text", "write_results"]

SCHEMA = "cdt_fast-benchmark/1"
Row = Dict[str, Any]


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _write_json(path: Path, payload: Dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")


def build_header(plan: Plan, argv: Sequence[str]) -> Dict[str, Any]:
    """What the run measured on (:func:`benchmarks.environment.describe`) and how."""
    header = environment.describe(plan.device)
    label, peaks = hardware.peak_tflops(header.get("gpu_name"))
    backends, no_engine = impls.engine_backends()
    header.update(
        {
            "command": "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv),
            "dtype": plan.dtype_name,
            "seed": plan.seed,
            "warmup": plan.warmup,
            "repeats": plan.repeats,
            "min_repeats": plan.min_repeats,
            "statistics": "implementations interleaved: per round one timed call of each, order "
            "rotated by one per round; latency = median over rounds, spread = min-max; a ratio "
            "whose spreads overlap is not significant",
            "max_time_s": plan.max_time_s,
            "compile_mode": plan.compile_mode,
            "widths": "tiny" if plan.tiny else "preset",
            "weights": {
                m: plan.ckpts.get(m, f"random (cdt_fast.randomize_, seed {plan.seed})")
                for m in plan.models
            },
            "settings": [vars(s) for s in plan.settings],
            "impls": plan.impls,
            "engine_backends": {
                b: {"available": ok, "reason": why} for b, (ok, why) in backends.items()
            },
            "engine_missing": no_engine,
            "peak_tflops": {"gpu": label, **dict(peaks)} if peaks else None,
            "flop_model": "benchmarks/flops.py: MACs of convs, linears and attention matmuls, x2",
        }
    )
    return header


def assemble(
    plan: Plan,
    header: Dict[str, Any],
    rows: List[Row],
    kernels: Optional[List[Dict[str, Any]]],
) -> Dict[str, Any]:
    """The results document: rows in table order, ratios, notes, what was not measured."""
    rows = sorted(rows, key=lambda r: row_order(plan, r))
    return {
        "schema": SCHEMA,
        "header": header,
        "notes": plan.notes,
        "rows": rows,
        "ratios": report.compute_ratios(rows),
        "skipped": plan.skipped,
        "kernels": kernels,
    }


def file_key(header: Dict[str, Any], tiny: bool, tag: Optional[str]) -> str:
    """The results files' name: the device key, ``-tiny`` for narrow networks, then the tag."""
    return (
        environment.device_key(header)
        + ("-tiny" if tiny else "")
        + (f"-{environment.slug(tag)}" if tag else "")
    )


def write_results(
    results: Dict[str, Any],
    out_dir: Path,
    key: str,
    out: Optional[Path] = None,
    plot: bool = True,
) -> str:
    """``<out_dir>/<key>.json``, ``.md`` and (``plot``) ``.png``, the JSON also at ``out``;
    returns the markdown."""
    _write_json(out_dir / f"{key}.json", results)
    if out is not None:
        _write_json(Path(out), results)
    markdown = report.render_markdown(results)
    write_text(out_dir / f"{key}.md", markdown)
    if plot:
        from benchmarks.plot import write_plot

        write_plot(results, out_dir / f"{key}.png")
    return markdown
