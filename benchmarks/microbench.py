"""What the kernel microbenchmarks (``benchmarks/bench_*.py``) share: device peaks, CUDA timing,
GB/s rows, the markdown table and the JSON results file. Nothing here runs at import."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch

__all__ = [
    "PEAK_BANDWIDTH_TBPS",
    "peak_bandwidth_tbps",
    "time_ms",
    "row",
    "measure",
    "markdown",
    "save_rows",
    "bench_main",
    "run_benchmark",
]

# HBM bandwidth from the vendors' data sheets, TB/s, keyed by torch.cuda.get_device_name().
PEAK_BANDWIDTH_TBPS: Dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 3.35,  # H100 SXM5
    "NVIDIA H100 SXM": 3.35,
    "NVIDIA H100 PCIe": 2.0,
    "NVIDIA H100 NVL": 3.9,
    "NVIDIA H200": 4.8,
    "NVIDIA A100-SXM4-80GB": 2.039,
    "NVIDIA A100-SXM4-40GB": 1.555,
    "NVIDIA A100 80GB PCIe": 1.935,
    "NVIDIA A100-PCIE-40GB": 1.555,
    "NVIDIA L40S": 0.864,
    "NVIDIA L4": 0.3,
    "NVIDIA A10G": 0.6,
    "NVIDIA GeForce RTX 4090": 1.008,
    "NVIDIA GeForce RTX 3090": 0.936,
}


def peak_bandwidth_tbps(device=None) -> Optional[float]:
    """The device's peak memory bandwidth (TB/s), or None when unknown or not CUDA."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    if name in PEAK_BANDWIDTH_TBPS:
        return PEAK_BANDWIDTH_TBPS[name]
    # Longest key that prefixes the name ("NVIDIA H200 NVL" -> "NVIDIA H200").
    matches = [k for k in PEAK_BANDWIDTH_TBPS if name.startswith(k)]
    return PEAK_BANDWIDTH_TBPS[max(matches, key=len)] if matches else None


def time_ms(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median CUDA time of ``fn()`` in ms (Triton's do_bench: L2 flushed between runs)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def row(
    op: str,
    case: str,
    impl: str,
    ms: Optional[float],
    nbytes: int,
    flops: Optional[int] = None,
    error: Optional[str] = None,
) -> Dict[str, object]:
    """One result: time, effective bandwidth (minimal bytes the op must move / time), % of the
    device's peak bandwidth, and TFLOP/s when ``flops`` is given."""
    peak = peak_bandwidth_tbps()
    gbps = nbytes / ms / 1e6 if ms else None
    return {
        "op": op,
        "case": case,
        "impl": impl,
        "ms": ms,
        "bytes": nbytes,
        "GB/s": gbps,
        "%peak_bw": 100 * gbps / (peak * 1e3) if gbps and peak else None,
        "TFLOP/s": flops / ms / 1e9 if flops and ms else None,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "error": error,
    }


def measure(
    op: str,
    case: str,
    impls: Dict[str, Callable[[], object]],
    nbytes: int,
    flops: Optional[int] = None,
) -> List[Dict[str, object]]:
    """Times every implementation; one that fails (e.g. torch.compile on an odd setup) gives a
    row with its error instead of sinking the run."""
    rows = []
    for impl, fn in impls.items():
        try:
            rows.append(row(op, case, impl, time_ms(fn), nbytes, flops))
        except Exception as exc:  # report, keep measuring the others
            rows.append(
                row(op, case, impl, None, nbytes, flops, error=f"{type(exc).__name__}: {exc}")
            )
    return rows


def markdown(rows: Iterable[Dict[str, object]]) -> str:
    cols = ["op", "case", "impl", "ms", "GB/s", "%peak_bw", "TFLOP/s"]
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(c)) for c in cols]
        if r.get("error"):
            cells[3] = f"error: {r['error'][:60]}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_rows(
    rows: List[Dict[str, object]], results_dir: Path, name: str, path: Optional[Path] = None
) -> Path:
    """Writes the rows with library versions, atomically, to ``path`` or else to
    ``<results_dir>/<name>-<device>.json``."""
    import triton

    from cdt_fast.checkpoint import atomic_write

    device = rows[0]["device"] if rows else "cpu"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(device)).strip("-").lower()
    payload = {
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "peak_bandwidth_TBps": peak_bandwidth_tbps(),
        "rows": rows,
    }
    path = Path(path) if path is not None else Path(results_dir) / f"{name}-{slug}.json"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)))


def bench_main(
    name: str, description: str, run_summary: Callable[[], List[dict]], results_dir: Path, argv=None
) -> int:
    """The ``main(argv)`` of a ``bench_<name>.py``: table to stdout, JSON under ``results_dir``
    (or at ``--out``)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help=f"write the JSON here instead of {results_dir}/{name}-<device>.json",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = parser.parse_args(argv)
    if args.out is not None and args.no_save:
        parser.error("--out and --no-save contradict each other: pass one")
    if not torch.cuda.is_available():
        print(f"bench_{name}: needs CUDA, skipped")
        return 0
    rows = run_summary()
    print(markdown(rows))
    if not args.no_save:
        print("wrote", save_rows(rows, results_dir, name, args.out))
    return 0


def run_benchmark(benchmark, fn: Callable[[], object]) -> None:
    """pytest-benchmark of a CUDA callable: warmed up (compiles, autotunes), synchronised."""
    fn()
    torch.cuda.synchronize()
    benchmark(lambda: (fn(), torch.cuda.synchronize()))
