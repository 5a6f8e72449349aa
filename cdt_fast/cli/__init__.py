"""``python -m cdt_fast`` / ``cdt-fast``: one module per command, each with ``register(sub)``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Command modules of this package, in the order --help lists them.
COMMANDS = ["demo", "reconstruct", "encode", "decode", "encode_dataset", "info", "train", "eval"]
COMMANDS += ["latent_stats"]
COMMANDS += ["gen_train"]
COMMANDS += ["generate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdt-fast",
        description="cdt_fast: a fast, faithful engine for CDT, the Conditioned Diffusion-based "
        "video Tokenizer.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as err:
        print(f"cdt-fast {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cdt-fast {args.command}: interrupted", file=sys.stderr)
        return 130
