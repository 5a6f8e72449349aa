"""``cdt-fast train``: train or fine-tune a CDT (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    import torch

    from ..data import open_dataset
    from ..train import Trainer, resolve_train_config
    from ..train.distributed import setup_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    config, init_weights = resolve_train_config(args.config)
    overrides = {
        k: v
        for k, v in dict(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            frames=args.frames,
            size=args.size,
            stride=args.stride,
            seed=args.seed,
            log_every=args.log_every,
            ckpt_every=args.ckpt_every,
            warmup_steps=args.warmup_steps,
            num_workers=args.workers,
            ema_decay=args.ema_decay,
            kl=args.kl_weight,
            lpips=args.lpips_weight,
            t_range=tuple(args.t_range) if args.t_range else None,
        ).items()
        if v is not None
    }
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
        progress=not args.no_progress,
        dist_info=dist_info,
    )
    last = trainer.fit(until=args.stop_at)
    agree = trainer.ranks_agree()
    if dist_info.is_main:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
        print(f"step {trainer.step}/{config.steps}: {summary}")
        if dist_info.enabled:
            print(f"{dist_info.world_size} ranks hold identical weights: {agree}")
        print(f"checkpoint: {trainer.latest_checkpoint()}")
    if dist_info.enabled:
        torch.distributed.destroy_process_group()
    return 0 if agree else 1


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
    p.add_argument("--steps", type=int, help="total steps (the LR schedule's length)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out"
    )
    p.add_argument(
        "--stop-at",
        type=int,
        help="stop (with a checkpoint) at this step, keeping the "
        "schedule of --steps; continue later with --resume",
    )
    p.add_argument("--batch-size", type=int, help="clips per process per step")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--frames", type=int, help="frames per clip, 1+4k")
    p.add_argument("--size", type=int, help="square crop side, a multiple of 8")
    p.add_argument("--stride", type=int, help="take every n-th video frame")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--seed", type=int)
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
    p.add_argument("--log-every", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)
