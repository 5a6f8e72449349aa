"""What one run of the model benchmark measures: the device, dtype, models, implementations, ops
and settings, and how many rounds, decided from the command line and the device
(:func:`make_plan`); and the model each setting is measured on (:func:`model_config`).

Defaults. CUDA: the paper's settings, 17 frames at 256x256 and 720x720, bf16, every
implementation, plus a decode memory-vs-length series at 720x720 (65 and 129 frames; 257 with
--full). CPU: reduced sizes so that the run ends within minutes on 2 cores: 9 frames at 64x64,
fp32, the real preset widths, encode and decode (roundtrip, 17 frames, 128x128, a decode length
series and ``reference-compiled`` only with --full). Every row says whether its setting is
reduced.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks import flops, impls
from benchmarks.arguments import TINY_WIDTH
from benchmarks.dtypes import dtype_name
from cdt_fast import CDTConfig

__all__ = [
    "PAPER_FRAMES",
    "PAPER_SIZES",
    "Setting",
    "Plan",
    "make_plan",
    "parse_ckpts",
    "model_config",
]

PAPER_FRAMES, PAPER_SIZES = 17, ((256, 256), (720, 720))


@dataclass(frozen=True)
class Setting:
    frames: int
    height: int
    width: int
    suite: str  # "main" (every op, PSNR) or "length" (decode only: memory vs video length)

    @property
    def label(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


@dataclass
class Plan:
    device: torch.device
    dtype: torch.dtype
    models: List[str]
    impls: List[str]
    ops: List[str]
    settings: List[Setting]
    warmup: int
    repeats: int  # rounds: timed calls per implementation
    min_repeats: int
    max_time_s: Optional[float]
    tiny: bool
    seed: int
    compile_mode: Optional[str]
    ckpts: Dict[str, str]
    peer: bool
    deadline: Optional[float] = None  # time.perf_counter() value of --time-budget's end
    notes: List[str] = field(default_factory=list)
    skipped: List[Dict[str, str]] = field(default_factory=list)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def main_settings(self) -> List[Setting]:
        return [s for s in self.settings if s.suite == "main"]

    def reduced(self, s: Setting) -> bool:
        """Smaller than the paper's settings (the length series varies frames by design)."""
        paper_size = (s.height, s.width) in PAPER_SIZES
        return self.tiny or not paper_size or (s.suite == "main" and s.frames != PAPER_FRAMES)

    def out_of_time(self) -> bool:
        """Past --time-budget's end."""
        return self.deadline is not None and time.perf_counter() > self.deadline

    def skip_for_time(self, model: str, what: str) -> None:
        self.skipped.append(
            {"model": model, "setting": what, "reason": "not measured: --time-budget"}
        )


def parse_ckpts(values: Sequence[str], models: Sequence[str]) -> Dict[str, str]:
    """``--ckpt [MODEL=]PATH`` values -> {model: path}."""
    out: Dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in ("base", "small"):
            out[name] = path
        elif len(models) == 1:
            out[models[0]] = value
        else:
            raise ValueError("--ckpt: with several models, name the model: --ckpt base=PATH")
    return out


def model_config(name: str, tiny: bool) -> CDTConfig:
    """The preset ``name``, or with --tiny its narrow version (the same layers, few channels)."""
    if not tiny:
        return CDTConfig.preset(name)
    out_channels = CDTConfig.preset(name).out_channels
    return CDTConfig.preset(
        name,
        context_dim=TINY_WIDTH,
        unet_dim=TINY_WIDTH,
        out_channels=min(out_channels, TINY_WIDTH),
    )


def _device(args: argparse.Namespace) -> torch.device:
    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return device


def _models_and_ops(args: argparse.Namespace, cuda: bool) -> Tuple[List[str], List[str]]:
    models = [] if args.models == ["none"] else (args.models or ["base", "small"])
    for m in models:
        if m not in ("base", "small"):
            raise ValueError(f"--models: expected base and/or small, got {m!r}")
    ops = args.ops or list(flops.OPS)
    for op in ops:
        if op not in flops.OPS:
            raise ValueError(f"--ops: expected some of {flops.OPS}, got {op!r}")
    if args.tiny and args.ckpt:
        raise ValueError("--tiny builds narrow networks that no checkpoint fits; drop --ckpt")
    if args.sizes is not None and (args.frames is not None or args.size is not None):
        raise ValueError("--sizes gives whole TxHxW settings: drop --frames/--size")
    if args.ops is None and not cuda and not args.full:
        # roundtrip is encode then decode: on CPU it would add their time again for no news
        ops = ["encode", "decode"]
    return models, ops


def _custom(args: argparse.Namespace) -> bool:
    return args.frames is not None or args.size is not None or args.sizes is not None


def _default_grid(args: argparse.Namespace, cuda: bool, notes: List[str]):
    """(frames, sizes, long_frames) of the device's defaults where the command line gives none;
    a reduced CPU grid says so in ``notes``."""
    if cuda:
        frames = args.frames or [PAPER_FRAMES]
        sizes = args.size or list(PAPER_SIZES)
        long_frames = [65, 129] + ([257] if args.full else [])
    else:
        frames = args.frames or ([9, 17] if args.full else [9])
        sizes = args.size or ([(64, 64), (128, 128)] if args.full else [(64, 64)])
        # At these sizes a decode is one chunk, so memory grows with length by design: the
        # series says little on CPU and would double the default run.
        long_frames = [17, 25, 33] if args.full else []
        if not _custom(args):
            notes.append(
                "CPU run with REDUCED sizes: "
                + ", ".join(f"{f} frames" for f in frames)
                + " at "
                + ", ".join(f"{h}x{w}" for h, w in sizes)
                + " (the paper's 17 frames at 256x256 "
                "and 720x720 are the CUDA default), so that it ends in minutes on 2 cores. "
                + ("Tiny widths." if args.tiny else "Real CDT-base/CDT-small widths.")
            )
    if args.long_frames is not None:
        long_frames = args.long_frames
    elif _custom(args):
        long_frames = []
    return frames, sizes, long_frames


def _settings(
    args: argparse.Namespace, cuda: bool, ops: Sequence[str], notes: List[str]
) -> List[Setting]:
    frames, sizes, long_frames = _default_grid(args, cuda, notes)
    if args.sizes is not None:
        settings = [Setting(f, h, w, "main") for f, h, w in args.sizes]
        largest = max(((h, w) for _, h, w in args.sizes), key=lambda s: s[0] * s[1])
        frames = [f for f, _, _ in args.sizes]
    else:
        settings = [Setting(f, h, w, "main") for h, w in sizes for f in frames]
        largest = max(sizes, key=lambda s: s[0] * s[1])
    if "decode" in ops:
        settings += [Setting(f, *largest, "length") for f in long_frames if f not in frames]
    return settings


def _rounds(args: argparse.Namespace, cuda: bool) -> Tuple[int, int]:
    """(rounds, minimum rounds)."""
    full_repeats = 20 if cuda else 7
    default = full_repeats if args.full else (10 if cuda else 5)
    repeats = args.repeats if args.repeats is not None else default
    min_repeats = args.min_repeats if args.min_repeats is not None else min(3, repeats)
    if repeats < 1 or min_repeats < 1 or min_repeats > repeats:
        raise ValueError(
            f"--rounds must be >= 1 and --min-rounds in [1, --rounds], got {repeats}, {min_repeats}"
        )
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    return repeats, min_repeats


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan of a parsed command line (``benchmarks.arguments.build_parser``); a ValueError
    names the option whose value does not fit the others."""
    device = _device(args)
    cuda = device.type == "cuda"
    models, ops = _models_and_ops(args, cuda)
    notes: List[str] = []
    settings = _settings(args, cuda, ops, notes)
    if args.tiny:
        notes.append(
            f"--tiny: networks {TINY_WIDTH} channels wide, not the real presets; "
            "numbers only exercise the pipeline."
        )
    impl_names, skipped, impl_notes = impls.resolve_impls(args.impls, device, args.full)
    repeats, min_repeats = _rounds(args, cuda)
    return Plan(
        device=device,
        dtype=args.dtype or (torch.bfloat16 if cuda else torch.float32),
        models=models,
        impls=impl_names,
        ops=ops,
        settings=settings,
        warmup=args.warmup if args.warmup is not None else (3 if cuda else 1),
        repeats=repeats,
        min_repeats=min_repeats,
        max_time_s=args.max_time_s if args.max_time_s is not None else (60.0 if cuda else 20.0),
        tiny=args.tiny,
        seed=args.seed,
        compile_mode=args.compile_mode or ("max-autotune" if cuda else None),
        ckpts=parse_ckpts(args.ckpt, models),
        peer=not args.no_peer and "decode" in ops,
        notes=notes + impl_notes,
        skipped=skipped,
    )
