"""What the op microbenchmarks (``benchmarks/bench_<op family>.py``) share: the backends that
implement an op here, timing a case's implementations into rows (ms, GB/s of the bytes the op
must move, % of the device's peak bandwidth, TFLOP/s), the markdown table, the results file, the
command line and the pytest-benchmark hook. Nothing here runs at import.

A row's ``impl`` says what ran: a backend of the engine's op table (``torch``, ``triton``,
``cuda``, ``cpp``: :func:`backend_functions` asks the engine's dispatcher for each one's function
of the op), or an arrangement the family's module names and explains (``torch.compile``, a
fused or unfused pair of kernels, ...).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from benchmarks import hardware, timing
from benchmarks.cdt_shapes import CDT_BASE_720
from benchmarks.dtypes import dtype_argument, dtype_name

__all__ = [
    "RESULTS_DIR",
    "Case",
    "bind",
    "defaults",
    "backend_functions",
    "implementations",
    "device_name",
    "row",
    "measure",
    "run_cases",
    "markdown",
    "save_rows",
    "bench_main",
    "summary_rows",
    "cdt_levels",
    "add_levels_argument",
    "run_benchmark",
]

# Where a microbenchmark's results go unless --out says otherwise: git-ignored, as the model
# benchmark's, so that running one leaves the checkout clean.
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "local"
# The engine's backends an op microbenchmark times on each kind of device. Triton on a CPU would
# be its interpreter, which checks kernels and says nothing of their speed.
DEVICE_BACKENDS = {"cpu": ("torch", "cpp"), "cuda": ("torch", "triton", "cuda")}
# The CPU shapes a family times: "small" runs in seconds, "cdt" is CDT-small's at 256x256.
CPU_SIZES = ("small", "cdt")


@dataclass
class Case:
    """One shape of one op: the callables to time (``impl`` -> no-argument function), the bytes
    the op must move at least (inputs read once, outputs written once) and its FLOPs."""

    op: str
    label: str
    impls: Dict[str, Callable[[], object]]
    nbytes: int
    flops: Optional[int] = None


def bind(fns: Dict[str, Callable], *args, **kwargs) -> Dict[str, Callable[[], object]]:
    """Every function of ``fns`` bound to the same arguments: the callables a :class:`Case`
    times."""
    return {name: functools.partial(fn, *args, **kwargs) for name, fn in fns.items()}


def backend_functions(op: str, device: torch.device) -> Dict[str, Callable]:
    """backend -> the function implementing ``op`` (the op contract of
    :mod:`cdt_fast.functional`) for every backend of :data:`DEVICE_BACKENDS` that can run it on
    ``device``, as the engine resolves it."""
    from cdt_fast.engine.dispatch import resolve

    device = torch.device(device)
    out: Dict[str, Callable] = {}
    for backend in DEVICE_BACKENDS.get(device.type, ("torch",)):
        fn, _ = resolve(backend, op, device)
        if fn is not None:
            out[backend] = fn
    return out


def defaults(
    device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> Tuple[torch.device, torch.dtype]:
    """The device and dtype a microbenchmark runs on unless told: CUDA when present, bf16 there
    and fp32 on a CPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return device, dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def implementations(op: str, device: torch.device, with_compile: bool) -> Dict[str, Callable]:
    """:func:`backend_functions` of ``op`` and, with ``with_compile``, ``torch.compile`` of the
    torch op as one graph (a graph break is an error row, not a compiled row that partly ran
    eagerly)."""
    from cdt_fast import functional

    impls = dict(backend_functions(op, device))
    if with_compile:
        impls["torch.compile"] = torch.compile(
            getattr(functional, op), dynamic=False, fullgraph=True
        )
    return impls


def device_name(device: Optional[torch.device] = None) -> str:
    """``torch.cuda.get_device_name()`` on CUDA (the default when present), else ``"cpu"``."""
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return torch.cuda.get_device_name(device) if cuda else "cpu"


def row(
    op: str,
    case: str,
    impl: str,
    ms: Optional[float],
    nbytes: int,
    flops: Optional[int] = None,
    error: Optional[str] = None,
    device: Optional[torch.device] = None,
) -> Dict[str, object]:
    """One result: time, effective bandwidth (minimal bytes the op must move / time), % of the
    device's peak bandwidth, and TFLOP/s when ``flops`` is given."""
    name = device_name(device)
    peak = hardware.peak_bandwidth_tbps(name) if name != "cpu" else None
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
        "device": name,
        "error": error,
    }


def measure(
    op: str,
    case: str,
    impls: Dict[str, Callable[[], object]],
    nbytes: int,
    flops: Optional[int] = None,
    device: Optional[torch.device] = None,
    repeats: int = 5,
) -> List[Dict[str, object]]:
    """Times every implementation (:func:`benchmarks.timing.kernel_ms`; ``repeats``: timed calls
    on a CPU); one that fails (e.g. torch.compile on an odd setup) gives a row with its error
    instead of sinking the run."""
    device, _ = defaults(device)
    rows = []
    for impl, fn in impls.items():
        try:
            ms = timing.kernel_ms(fn, device, repeats=repeats)
        except Exception as exc:  # report, keep measuring the others
            error = f"{type(exc).__name__}: {exc}"
            rows.append(row(op, case, impl, None, nbytes, flops, error=error, device=device))
            continue
        rows.append(row(op, case, impl, ms, nbytes, flops, device=device))
    return rows


def run_cases(
    cases: Iterable[Case], device: torch.device, repeats: int = 5
) -> List[Dict[str, object]]:
    """The rows of every case, in order (a case's inputs are made when it is reached)."""
    rows: List[Dict[str, object]] = []
    for c in cases:
        rows += measure(c.op, c.label, c.impls, c.nbytes, c.flops, device, repeats)
    return rows


def markdown(rows: Iterable[Dict[str, object]]) -> str:
    cols = ["op", "case", "impl", "ms", "GB/s", "%peak_bw", "TFLOP/s"]

    def fmt(v: object) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(c)) for c in cols]
        if r.get("error"):
            cells[3] = f"error: {str(r['error'])[:60]}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_rows(
    rows: List[Dict[str, object]], results_dir: Path, name: str, path: Optional[Path] = None
) -> Path:
    """Writes the rows with library versions, atomically, to ``path`` or else to
    ``<results_dir>/<name>-<device>.json``."""
    from benchmarks.environment import package_version
    from cdt_fast.checkpoint import atomic_write

    device = rows[0]["device"] if rows else "cpu"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(device)).strip("-").lower()
    payload = {
        "device": device,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "cuda": torch.version.cuda,
        "peak_bandwidth_TBps": hardware.peak_bandwidth_tbps(str(device)),
        "rows": rows,
    }
    path = Path(path) if path is not None else Path(results_dir) / f"{name}-{slug}.json"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)))


def _parser(description: str, default_results: Path, cpu: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--device",
        default=None,
        help="cuda or cpu (default: cuda when present)"
        + ("" if cpu else "; this benchmark needs cuda"),
    )
    parser.add_argument(
        "--dtype",
        type=dtype_argument,
        default=None,
        help="bf16, fp16 or fp32 (default bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--size",
        choices=CPU_SIZES,
        default="small",
        help="CPU shapes: small (seconds) or cdt (CDT-small's at 256x256); CUDA runs CDT's",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="CPU: timed calls per implementation (median)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--out",
        "--json",
        dest="out",
        type=Path,
        metavar="PATH",
        help=f"write the JSON here instead of {default_results}/<name>-<device>.json "
        "(--json: the same option)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write the results file")
    return parser


def _arguments(
    description: str,
    argv: Optional[Sequence[str]],
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]],
    cpu: bool,
    results_dir: Path,
) -> argparse.Namespace:
    """The parsed, checked command line of a ``bench_<family>.py``, its device, dtype and
    ``compile`` resolved."""
    parser = _parser(description, results_dir, cpu)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.out is not None and args.no_save:
        parser.error("--out and --no-save contradict each other: pass one")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    args.device, args.dtype = defaults(args.device, args.dtype)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    args.compile = args.device.type == "cuda" and not args.no_compile
    return args


def bench_main(
    name: str,
    description: str,
    make_cases: Callable[[argparse.Namespace], Sequence[Case]],
    argv: Optional[Sequence[str]] = None,
    *,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
    cpu: bool = True,
    results_dir: Path = RESULTS_DIR,
) -> int:
    """The ``main(argv)`` of a ``bench_<family>.py``: its cases (``make_cases(args)``; ``args``
    has ``device``, ``dtype``, ``compile``, ``size`` and what ``add_arguments`` adds) timed, the
    table on stdout, the JSON under ``results_dir`` (or at ``--out``). ``cpu=False``: nothing to
    time on a CPU (the family has no CPU backend but torch), so a CPU run says so and measures
    nothing."""
    args = _arguments(description, argv, add_arguments, cpu, results_dir)
    if args.device.type == "cpu" and not cpu:
        print(f"bench_{name}: needs CUDA, skipped")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run_cases(make_cases(args), args.device, args.repeats)
    print(f"bench_{name} on {device_name(args.device)}, {dtype_name(args.dtype)}")
    print(markdown(rows))
    if not args.no_save:
        print("wrote", save_rows(rows, results_dir, name, args.out))
    return 0


def summary_rows(
    make_cases: Callable[[argparse.Namespace], Sequence[Case]],
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
) -> List[Dict[str, object]]:
    """The ``run_summary()`` of a ``bench_<family>.py``: the rows its ``main`` measures with no
    arguments (the default device and dtype, CPU ``--size small``), not saved."""
    args = _arguments("", [], add_arguments, True, RESULTS_DIR)
    return run_cases(make_cases(args), args.device, args.repeats)


def cdt_levels(
    device: torch.device,
    cpu_levels: Dict[str, List[tuple]],
    size: str = "small",
    names: Optional[Sequence[str]] = None,
) -> List[tuple]:
    """The ``(name, channels, frames, side)`` levels a family times: on CUDA the CDT-base
    U-Net's at 720x720 (:data:`benchmarks.cdt_shapes.CDT_BASE_720`, only those in ``names``
    when given), on a CPU ``cpu_levels[size]``."""
    if torch.device(device).type != "cuda":
        return cpu_levels[size]
    return [lv for lv in CDT_BASE_720 if not names or lv[0] in names]


def add_levels_argument(parser: argparse.ArgumentParser) -> None:
    """``--levels``: the :func:`cdt_levels` names a CUDA run keeps."""
    parser.add_argument("--levels", nargs="*", help="CUDA: level names to run (default: all)")


def run_benchmark(benchmark, fn: Callable[[], object], nbytes: Optional[int] = None) -> None:
    """pytest-benchmark of a CUDA callable: warmed up (compiles, autotunes), synchronised; with
    ``nbytes``, the effective bandwidth and its % of the device's peak in ``extra_info``."""
    fn()
    torch.cuda.synchronize()

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    if nbytes is not None:
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["GB/s"] = nbytes / seconds / 1e9
        peak = hardware.peak_bandwidth_tbps(torch.cuda.get_device_name())
        if peak:
            benchmark.extra_info["% peak bandwidth"] = 100 * nbytes / seconds / (peak * 1e12)
