"""``cdt-fast warmup``: compile every Triton kernel of an encode and a decode ahead of time."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import List, Tuple

from ..dtypes import DTYPE_NAMES


def parse_size(text: str) -> Tuple[int, int]:
    """``"256x256"`` or ``"256"`` -> (256, 256)."""
    found = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if not found:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 256x256) or N, got {text!r}")
    height = int(found.group(1))
    width = int(found.group(2) or height)
    return height, width


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    """``"256x256,720x720"`` -> [(256, 256), (720, 720)]."""
    return [parse_size(part) for part in str(text).split(",")]


def parse_models(text: str) -> List[str]:
    """``"small,base"`` -> ["small", "base"]."""
    models = [m.strip() for m in str(text).split(",")]
    if not all(m in ("base", "small") for m in models):
        raise argparse.ArgumentTypeError(f"model must be base, small or a comma list, got {text!r}")
    return models


def _warmup(args) -> int:
    from ..availability import triton_interpreted
    from ..engine.warmup import warmup

    if triton_interpreted():
        raise ValueError("unset TRITON_INTERPRET: the Triton interpreter compiles nothing")

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")

    def progress(done, total, name):
        if not args.json:
            print(f"  [{done}/{total}] {name}", file=sys.stderr, flush=True)

    failed = 0
    # every size for every model, sizes outer: the first size's kernels are ready first
    for size in args.size:
        for model in args.model:
            result = warmup(
                model,
                size,
                args.frames,
                args.dtype,
                arch=args.arch,
                compile=not args.count_only,
                progress=progress,
                jobs=args.jobs,
            )
            info = result.to_dict()
            failed += len(result.failed)
            if args.json:
                print(json.dumps(info), flush=True)
                continue
            verb = "counted" if args.count_only else "compiled"
            print(
                f"{verb} {info['kernels']} kernels ({info['launches']} launches) for CDT-{model} "
                f"{args.frames}x{size[0]}x{size[1]} {args.dtype} on {info['arch']} "
                f"in {info['seconds']:.1f} s (Triton {info['triton']})",
                flush=True,
            )
            for line in result.failed:
                print(f"  not compiled: {line}", file=sys.stderr)
    return 1 if failed else 0


def register(sub) -> None:
    p = sub.add_parser(
        "warmup",
        help="compile the Triton kernels of an encode and a decode ahead of time",
        description="Compile every Triton kernel that an encode and a decode of one shape "
        "launch, into Triton's cache (~/.triton/cache or TRITON_CACHE_DIR), and report how "
        "many and how long, for every model and size given. With --arch no GPU is needed; the "
        "cache is reused by a GPU of that architecture with the same Triton (see "
        "docs/kernels.md). A kernel that fails to compile is listed and the exit status is 1.",
    )
    p.add_argument(
        "--model",
        type=parse_models,
        default=["small"],
        metavar="small|base",
        help="preset, or a comma list (default small)",
    )
    p.add_argument(
        "--size",
        type=parse_sizes,
        default=[(256, 256)],
        metavar="HxW",
        help="frame size in pixels, or a comma list (default 256x256)",
    )
    p.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bf16")
    p.add_argument(
        "--arch",
        default=None,
        metavar="sm_90a",
        help="compile for this GPU architecture without one (default: this machine's GPU)",
    )
    p.add_argument(
        "--count-only",
        action="store_true",
        help="capture the launches and count the kernels, compile nothing",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="compile in this many forked worker processes (default 1: in this process)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"kernels": N, "seconds": S, ...}, one line per model and size',
    )
    p.set_defaults(func=_warmup)
