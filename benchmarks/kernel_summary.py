"""Run the microbenchmarks (``benchmarks/bench_*.py``: one per op family, and the generator's and
tiling's) and collect what they report, for ``run.py --kernels``.

Contract for a ``bench_*.py`` module (either entry point; ``run_summary`` is preferred):

- ``run_summary()`` returns a JSON-able summary: ideally a list of flat dicts, one per measured
  case (e.g. ``{"shape": ..., "backend": ..., "ms": ..., "speedup": ...}``), else a dict or text.
- ``main(argv)`` is called with ``argv=[]``; what it prints is kept (the last lines), its return
  value is the exit status.

A module that is missing, fails to import or raises is reported with its error; the others still
run. Nothing here assumes any particular kernel module exists.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

__all__ = ["discover", "run_one", "summarise"]

OUTPUT_TAIL_LINES = 40


def discover(bench_dir: Path) -> List[Path]:
    return sorted(Path(bench_dir).glob("bench_*.py"))


def _jsonable(value: Any) -> Any:
    """What the JSON results will hold: tuples become lists, unknown objects their str()."""
    return json.loads(json.dumps(value, default=str))


def run_one(path: Path, argv: Sequence[str] = ()) -> Dict[str, Any]:
    path = Path(path)
    entry: Dict[str, Any] = {
        "module": path.stem,
        "path": str(path),
        "entry": None,
        "status": "error",
        "summary": None,
        "error": None,
        "seconds": None,
    }
    started = time.perf_counter()
    out = io.StringIO()
    try:
        spec = importlib.util.spec_from_file_location(f"_cdt_fast_bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(out):
            spec.loader.exec_module(module)
            if callable(getattr(module, "run_summary", None)):
                entry["entry"] = "run_summary()"
                entry["summary"] = _jsonable(module.run_summary())
                entry["status"] = "ok"
            elif callable(getattr(module, "main", None)):
                entry["entry"] = "main(argv)"
                try:
                    rc = module.main(list(argv))
                except SystemExit as exit_:  # argparse-style mains exit
                    rc = exit_.code
                entry["status"] = "ok" if rc in (None, 0) else f"exit {rc}"
                tail = out.getvalue().strip().splitlines()[-OUTPUT_TAIL_LINES:]
                entry["summary"] = "\n".join(tail)
            else:
                entry["status"] = "skipped"
                entry["error"] = "defines neither run_summary() nor main(argv)"
    except Exception as err:  # a broken microbenchmark must not sink the main run
        entry["error"] = f"{type(err).__name__}: {err}"
    entry["seconds"] = time.perf_counter() - started
    return entry


def summarise(bench_dir: Path, argv: Sequence[str] = ()) -> List[Dict[str, Any]]:
    return [run_one(path, argv) for path in discover(bench_dir)]
