#!/usr/bin/env python
"""The CDT benchmark: reference vs compiled reference vs engine, CDT-base vs CDT-small.

    python benchmarks/run.py                  # best device present, its default settings
    python benchmarks/run.py --full           # more settings (and, on CPU, torch.compile too)
    python benchmarks/run.py --models small --ops decode --sizes 17x256x256 --impls reference,engine
    python benchmarks/run.py --publish        # write benchmarks/results/ and the README table
    python benchmarks/run.py --readme-table benchmarks/results/<key>.json

What a run measures by default on each device is :mod:`benchmarks.plan`'s; how it is measured,
:mod:`benchmarks.measure` and :mod:`benchmarks.timing`. Statistics: per (model, setting, op) the
implementations are interleaved: after a warm-up, every round times one call of each
implementation in rotated order; rows give the median over rounds and the min-max spread, and a
ratio whose spreads overlap is marked not significant.

Results: markdown on stdout, and ``<device-key>.{json,md,png}`` in ``benchmarks/results/local/``
(git-ignored: running the benchmark leaves the checkout clean), or with ``--publish`` in
``benchmarks/results/`` with the README's table regenerated (:mod:`benchmarks.readme`); JSON
also in ``--out``. All files are written atomically. A SIGTERM or ``--time-budget`` ends the
measuring early and the rows measured so far are written (:mod:`benchmarks.interrupt`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import environment, kernel_summary, report  # noqa: E402
from benchmarks.arguments import build_parser  # noqa: E402
from benchmarks.interrupt import EXIT_INTERRUPTED, Interrupted, sigterm_interrupts  # noqa: E402
from benchmarks.measure import Progress, count_steps, run_plan  # noqa: E402
from benchmarks.plan import Plan, make_plan  # noqa: E402
from benchmarks.readme import publish_readme_table  # noqa: E402
from benchmarks.results import assemble, build_header, file_key, write_results  # noqa: E402

__all__ = ["main", "BENCH_DIR", "REPO_ROOT"]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def _print_readme_table(parser: argparse.ArgumentParser, paths: Sequence[Path]) -> int:
    try:
        parts = [json.loads(Path(p).read_text()) for p in paths]
    except (OSError, ValueError) as err:
        parser.error(f"--readme-table: cannot read a results file: {err}")
    sys.stdout.write(report.readme_table(report.merge_results(parts)))
    return 0


def _note(plan: Plan, note: str) -> None:
    plan.notes.append(note)
    print(f"note: {note}", file=sys.stderr)


def _measure(
    plan: Plan, header: Dict[str, Any], args: argparse.Namespace
) -> Tuple[List[Dict[str, Any]], Optional[list], Optional[str]]:
    """(rows, kernel microbenchmark summaries, why the run was interrupted or None)."""
    progress = Progress(count_steps(plan) + (1 if args.kernels else 0), not args.no_progress)
    rows: List[Dict[str, Any]] = []
    kernels = None
    try:
        with sigterm_interrupts():
            run_plan(plan, header, progress, rows)
            if args.kernels:
                progress.step("kernel microbenchmarks")
                kernels = kernel_summary.summarise(BENCH_DIR)
                progress.done()
    except Interrupted as stop:
        _note(
            plan,
            f"INTERRUPTED ({stop}) after {len(rows)} rows: partial results, the "
            "implementations and settings after the last row were not measured.",
        )
        return rows, kernels, str(stop)
    finally:
        progress.close()
    return rows, kernels, None


def _close_header(header, plan: Plan, args, rows, interrupted, started: float) -> None:
    """What the header learns at the end of the run; a spent --time-budget becomes a note."""
    header["load_average_at_end"] = environment.load_average()
    header["interrupted"] = interrupted
    header["wall_s"] = round(time.perf_counter() - started, 1)
    header["time_budget_s"] = args.time_budget
    if any(s.get("reason") == "not measured: --time-budget" for s in plan.skipped):
        _note(
            plan,
            f"TIME BUDGET of {args.time_budget:g} s spent after {len(rows)} rows: partial "
            "results, the settings listed under 'Not measured' were not timed.",
        )


def _plan(parser: argparse.ArgumentParser, args: argparse.Namespace, started: float) -> Plan:
    try:
        plan = make_plan(args)
    except ValueError as err:
        parser.error(str(err))
    if args.publish and args.results_dir is not None:
        parser.error("--publish writes benchmarks/results/: drop --results-dir")
    if args.time_budget is not None:
        plan.deadline = started + args.time_budget
    return plan


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.readme_table is not None:
        return _print_readme_table(parser, args.readme_table)
    started = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    plan = _plan(parser, args, started)
    results_dir = BENCH_DIR / "results" if args.publish else BENCH_DIR / "results" / "local"
    out_dir = Path(args.results_dir if args.results_dir is not None else results_dir)
    if plan.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # recorded in the header's torch_settings
    header = build_header(plan, argv)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)

    rows, kernels, interrupted = _measure(plan, header, args)
    _close_header(header, plan, args, rows, interrupted, started)
    results = assemble(plan, header, rows, kernels)
    key = file_key(header, plan.tiny, args.tag)
    sys.stdout.write(write_results(results, out_dir, key, args.out, plot=not args.no_plot))
    print(
        f"\nwrote {out_dir / key}.json/.md"
        + ("" if args.no_plot else "/.png")
        + (f" and {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    if args.publish:
        readme = publish_readme_table(out_dir / f"{key}.json", out_dir, REPO_ROOT / "README.md")
        print(f"regenerated the performance table in {readme}", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
