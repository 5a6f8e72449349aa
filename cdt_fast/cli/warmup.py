"""``cdt-fast warmup``: compile every Triton kernel of an encode and a decode ahead of time."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Tuple

from ._common import DTYPES


def parse_size(text: str) -> Tuple[int, int]:
    """``"256x256"`` or ``"256"`` -> (256, 256)."""
    found = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if not found:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 256x256) or N, got {text!r}")
    height = int(found.group(1))
    width = int(found.group(2) or height)
    return height, width


def _warmup(args) -> int:
    from ..availability import triton_interpreted
    from ..engine.warmup import warmup

    if triton_interpreted():
        raise ValueError("unset TRITON_INTERPRET: the Triton interpreter compiles nothing")

    def progress(done, total, name):
        if not args.json:
            print(f"  [{done}/{total}] {name}", file=sys.stderr, flush=True)

    result = warmup(
        args.model,
        args.size,
        args.frames,
        args.dtype,
        arch=args.arch,
        compile=not args.count_only,
        progress=progress,
    )
    info = result.to_dict()
    if args.json:
        print(json.dumps(info))
    else:
        verb = "counted" if args.count_only else "compiled"
        print(
            f"{verb} {info['kernels']} kernels ({info['launches']} launches) for CDT-{args.model} "
            f"{args.frames}x{args.size[0]}x{args.size[1]} {args.dtype} on {info['arch']} "
            f"in {info['seconds']:.1f} s (Triton {info['triton']})"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "warmup",
        help="compile the Triton kernels of an encode and a decode ahead of time",
        description="Compile every Triton kernel that an encode and a decode of one shape "
        "launch, into Triton's cache (~/.triton/cache or TRITON_CACHE_DIR), and report how "
        "many and how long. With --arch no GPU is needed; the cache is reused by a GPU of that "
        "architecture with the same Triton (see docs/kernels.md).",
    )
    p.add_argument("--model", choices=["base", "small"], default="small")
    p.add_argument(
        "--size", type=parse_size, default=(256, 256), metavar="HxW", help="frame size in pixels"
    )
    p.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
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
    p.add_argument("--json", action="store_true", help='print {"kernels": N, "seconds": S, ...}')
    p.set_defaults(func=_warmup)
