"""``cdt-fast train``: train or fine-tune a CDT (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse

from ._training import add_run_args, fit_and_report, run_overrides


def _train(args: argparse.Namespace) -> int:
    import torch

    from ..data import open_dataset
    from ..train import Trainer, resolve_train_config
    from ..train.distributed import setup_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    config, init_weights = resolve_train_config(args.config)
    overrides = run_overrides(
        args,
        size=args.size,
        stride=args.stride,
        kl=args.kl_weight,
        lpips=args.lpips_weight,
        t_range=tuple(args.t_range) if args.t_range else None,
    )
    config = config.replace(**overrides)
    lpips = None
    if config.loss.lpips > 0:
        from ..metrics import LPIPS

        lpips = LPIPS.from_pretrained(args.lpips_backbone, args.lpips_heads)
    dist_info = setup_distributed(args.device)
    dataset = open_dataset(args.data, config.frames, config.size, config.stride, config.seed)
    trainer = Trainer(
        config,
        dataset,
        args.out,
        resume=args.resume,
        init_weights=None if args.resume else init_weights,
        lpips=lpips,
        progress=not args.quiet,
        dist_info=dist_info,
    )
    return fit_and_report(trainer, dist_info, args.stop_at)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a CDT (torchrun for several GPUs/nodes)",
        description="Train a CDT with the paper's losses (x-prediction diffusion MSE + KL + LPIPS). "
        "Run under torchrun for DDP. Writes metrics.jsonl and resumable checkpoints "
        "into --out.",
    )
    p.add_argument(
        "--config",
        default="tiny",
        help="tiny | small | base | a .json TrainConfig | a .safetensors to fine-tune",
    )
    p.add_argument(
        "--data",
        default="synthetic",
        help="synthetic, photos, photos:DIR, a folder of videos/images, or A+B (e.g. photos+synthetic)",
    )
    p.add_argument("--size", type=int, help="square crop side, a multiple of 8")
    p.add_argument("--stride", type=int, help="take every n-th video frame")
    p.add_argument("--kl-weight", type=float)
    p.add_argument(
        "--lpips-weight", type=float, help="0 trains without LPIPS (no VGG16 weights needed)"
    )
    p.add_argument(
        "--lpips-backbone", help="torchvision vgg16 state dict (e.g. vgg16-397923af.pth)"
    )
    p.add_argument(
        "--lpips-heads", help="LPIPS v0.1 vgg.pth heads (default: from the installed lpips package)"
    )
    p.add_argument(
        "--t-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="draw t uniformly from [LO, HI) x num_timesteps (default 0 1: the paper's uniform t)",
    )
    add_run_args(p, frames_help="frames per clip, 1+4k")
    p.set_defaults(func=_train)
