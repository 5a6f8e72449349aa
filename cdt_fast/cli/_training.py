"""What ``train`` and ``gen-train`` share: the options of a training run, the overrides they make
to a training config, and running the trainer to its end with one summary."""

from __future__ import annotations

import argparse
from typing import Dict, Iterable

from ._common import add_quiet_arg

# option dest -> config field, for the options every training run has
_RUN_FIELDS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "frames": "frames",
    "seed": "seed",
    "log_every": "log_every",
    "ckpt_every": "ckpt_every",
    "warmup_steps": "warmup_steps",
    "ema_decay": "ema_decay",
    "workers": "num_workers",
}


def add_run_args(parser: argparse.ArgumentParser, frames_help: str) -> None:
    """Output folder, schedule, resuming, logging and process options of a training run."""
    parser.add_argument("--out", required=True, metavar="RUN", help="output folder")
    parser.add_argument("--steps", type=int, help="total steps (the LR schedule's length)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in RUN"
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        help="stop (with a checkpoint) at this step, keeping the schedule of --steps; "
        "continue later with --resume",
    )
    parser.add_argument("--frames", type=int, help=frames_help)
    parser.add_argument("--batch-size", type=int, help="clips per process per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--ema-decay", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--ckpt-every", type=int)
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    add_quiet_arg(parser)


def run_overrides(args: argparse.Namespace, **more) -> Dict[str, object]:
    """The config fields the run options (and ``more``) set; options left out change nothing."""
    values = {field: getattr(args, dest) for dest, field in _RUN_FIELDS.items()}
    values.update(more)
    return {k: v for k, v in values.items() if v is not None}


def fit_and_report(trainer, dist_info, until, extra_lines: Iterable[str] = ()) -> int:
    """Train until step ``until`` (``--stop-at``; None: the end), print one summary on the main
    rank and tear DDP down; exit status 1 when the ranks' weights differ."""
    import torch

    last = trainer.fit(until=until)
    agree = trainer.ranks_agree()
    if dist_info.is_main:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
        print(f"step {trainer.step}/{trainer.config.steps}: {summary}")
        for line in extra_lines:
            print(line)
        if dist_info.enabled:
            print(f"{dist_info.world_size} ranks hold identical weights: {agree}")
        print(f"checkpoint: {trainer.latest_checkpoint()}")
    if dist_info.enabled:
        torch.distributed.destroy_process_group()
    return 0 if agree else 1
