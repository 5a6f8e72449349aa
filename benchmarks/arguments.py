"""The model benchmark's command line (``python benchmarks/run.py --help``): its options and the
checks of each value on its own. What the values mean together is :func:`benchmarks.plan.make_plan`'s."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import List, Tuple

from benchmarks.dtypes import dtype_argument
from cdt_fast.cli.warmup import parse_size

__all__ = ["build_parser", "TINY_WIDTH"]

DESCRIPTION = "The CDT benchmark: reference vs compiled reference vs engine, CDT-base vs CDT-small."
TINY_WIDTH = 8  # channels of the --tiny networks


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _frames_list(text: str) -> List[int]:
    if text.strip().lower() in ("none", "0", ""):
        return []
    out = []
    for t in _csv(text):
        n = int(t)
        if n < 1 or (n - 1) % 4:
            raise argparse.ArgumentTypeError(f"frames must be 1 + 4k (1, 5, 9, 17, ...), got {n}")
        out.append(n)
    return out


def _sizes(text: str) -> List[Tuple[int, int]]:
    out = []
    for t in _csv(text):
        h, w = parse_size(t)
        if h < 8 or w < 8 or h % 8 or w % 8:
            raise argparse.ArgumentTypeError(f"sizes must be multiples of 8 (S or HxW), got {t!r}")
        out.append((h, w))
    return out


def _shapes(text: str) -> List[Tuple[int, int, int]]:
    out = []
    for t in _csv(text):
        parts = t.lower().split("x")
        try:
            f, h, w = (int(v) for v in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"sizes must be TxHxW (e.g. 17x256x256), got {t!r}"
            ) from None
        if f < 1 or (f - 1) % 4:
            raise argparse.ArgumentTypeError(f"sizes: frames must be 1 + 4k, got {t!r}")
        if h < 8 or w < 8 or h % 8 or w % 8:
            raise argparse.ArgumentTypeError(f"sizes: H and W must be multiples of 8, got {t!r}")
        out.append((f, h, w))
    return out


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _add_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="also write the JSON results to this file")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where <device-key>.json/.md/.png go (default benchmarks/results/local, "
        "git-ignored; with --publish benchmarks/results)",
    )
    p.add_argument(
        "--publish",
        action="store_true",
        help="write the results into the committed benchmarks/results/ and regenerate the "
        "README performance table of this device from them",
    )
    p.add_argument(
        "--time-budget",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="stop measuring after this many seconds (the current measurement ends its "
        "round) and write the rows measured so far",
    )


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--full",
        action="store_true",
        help="more settings and repeats; on CPU also reference-compiled/-cl",
    )
    p.add_argument(
        "--models",
        type=_csv,
        default=None,
        help="comma list of base, small (default both); 'none' for kernels only",
    )
    p.add_argument(
        "--impls",
        type=_csv,
        default=None,
        help="comma list: reference, reference-cl, reference-compiled, engine (every "
        "available backend), engine-<backend> (default: per device)",
    )
    p.add_argument("--ops", type=_csv, default=None, help="comma list of encode, decode, roundtrip")
    p.add_argument(
        "--dtype",
        type=dtype_argument,
        default=None,
        help="fp32, fp16 or bf16 (default bf16 on CUDA, fp32 on CPU)",
    )


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=_frames_list, default=None, help="comma list of 1+4k")
    p.add_argument("--size", type=_sizes, default=None, help="comma list of S or HxW")
    p.add_argument(
        "--sizes",
        type=_shapes,
        default=None,
        help="comma list of TxHxW settings (e.g. 17x256x256), instead of --frames/--size",
    )
    p.add_argument(
        "--long-frames",
        type=_frames_list,
        default=None,
        help="decode memory-vs-length series at the largest size ('none' to skip)",
    )
    p.add_argument(
        "--ckpt",
        action="append",
        default=[],
        metavar="[MODEL=]PATH",
        help="checkpoint instead of random weights; MODEL= when benchmarking both",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help=f"narrow networks ({TINY_WIDTH} channels): for tests, not the real models",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: best present)")


def _add_measurement(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per implementation")
    p.add_argument(
        "--rounds",
        "--repeats",
        type=int,
        default=None,
        dest="repeats",
        help="interleaved rounds, each timing one call of every implementation",
    )
    p.add_argument(
        "--min-rounds",
        type=int,
        default=None,
        dest="min_repeats",
        help="rounds done even past --max-time (default 3; at most --rounds)",
    )
    p.add_argument(
        "--max-time",
        type=float,
        default=None,
        dest="max_time_s",
        help="stop adding rounds to a measurement after this many seconds (once --min-rounds "
        "are done)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of reference-compiled (default max-autotune on CUDA)",
    )


def _add_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-peer", action="store_true", help="skip the diffusers peer row")
    p.add_argument(
        "--kernels",
        action="store_true",
        help="also run and summarise benchmarks/bench_*.py kernel microbenchmarks",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--tag", default=None, help="suffix of the results file names (e.g. one per --models run)"
    )
    p.add_argument(
        "--readme-table",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="print the README performance table of results JSON files and exit",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``benchmarks/run.py``."""
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add in (_add_outputs, _add_selection, _add_settings, _add_measurement, _add_extras):
        add(p)
    return p
