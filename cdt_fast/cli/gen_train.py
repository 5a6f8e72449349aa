"""``cdt-fast gen-train LATENTS_DIR --out RUN``: train the latent video generator on an
``encode-dataset`` folder (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _config(args: argparse.Namespace):
    from ..generation.model import GenConfig
    from ..generation.train import GEN_PRESETS, GenTrainConfig

    if args.preset in GEN_PRESETS:
        config = GEN_PRESETS[args.preset]()
    elif Path(args.preset).suffix == ".json" and Path(args.preset).is_file():
        values = json.loads(Path(args.preset).read_text())
        model = values.get("model", {})
        if isinstance(model, dict) and "preset" in model:
            model = dict(model)
            values["model"] = GenConfig.preset(model.pop("preset"), **model)
        config = GenTrainConfig.from_dict(values)
    else:
        raise ValueError(
            f"--preset must be one of {sorted(GEN_PRESETS)} or a .json GenTrainConfig, "
            f"got {args.preset!r}"
        )
    model_changes = {
        k: v
        for k, v in dict(num_classes=args.num_classes, causal=True if args.causal else None).items()
        if v is not None
    }
    if model_changes:
        config = config.replace(model=config.model.replace(**model_changes))
    overrides = {
        k: v
        for k, v in dict(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            frames=args.frames,
            seed=args.seed,
            log_every=args.log_every,
            ckpt_every=args.ckpt_every,
            warmup_steps=args.warmup_steps,
            ema_decay=args.ema_decay,
            num_workers=args.workers,
            backend=args.backend,
        ).items()
        if v is not None
    }
    return config.replace(**overrides)


def _gen_train(args: argparse.Namespace) -> int:
    import torch

    from ..generation.train import GenTrainer, LatentClips
    from ..train.distributed import setup_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    config = _config(args)
    dataset = LatentClips(args.input, config.frames, config.size, labels=args.labels)
    if args.labels == "dirs" and config.model.num_classes == 0:
        config = config.replace(
            model=config.model.replace(num_classes=max(1, len(dataset.class_names)))
        )
    dist_info = setup_distributed(args.device)
    trainer = GenTrainer(
        config,
        dataset,
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
        dist_info=dist_info,
    )
    last = trainer.fit(until=args.stop_at)
    agree = trainer.ranks_agree()
    if dist_info.is_main:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
        print(f"step {trainer.step}/{config.steps}: {summary}")
        print(f"latents normalised by {dataset.normalizer.source}")
        if dist_info.enabled:
            print(f"{dist_info.world_size} ranks hold identical weights: {agree}")
        print(f"checkpoint: {trainer.latest_checkpoint()}")
    if dist_info.enabled:
        torch.distributed.destroy_process_group()
    return 0 if agree else 1


def register(sub) -> None:
    p = sub.add_parser(
        "gen-train",
        help="train the latent video generator on an encode-dataset folder",
        description="Train a Latte-style video diffusion transformer (rectified flow) on the "
        "latents of an encode-dataset folder, normalised by its latent-stats (else by the "
        "tokenizer's latent_scale). Run under torchrun for DDP. Writes metrics.jsonl, resumable "
        "checkpoints and, at the end, model.safetensors / ema.safetensors into --out.",
    )
    p.add_argument("input", metavar="LATENTS_DIR")
    p.add_argument("--out", required=True, metavar="RUN", help="output folder")
    p.add_argument("--preset", default="tiny", help="tiny | S | B | a .json GenTrainConfig")
    p.add_argument("--steps", type=int, help="total steps (the LR schedule's length)")
    p.add_argument("--resume", action="store_true", help="continue from RUN's latest checkpoint")
    p.add_argument(
        "--stop-at", type=int, help="stop (with a checkpoint) at this step; --resume later"
    )
    p.add_argument("--frames", type=int, help="latent frames per training clip (5 = 17 frames)")
    p.add_argument("--batch-size", type=int, help="clips per process per step")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--labels",
        choices=["dirs"],
        help="class labels from the top-level folder of each source video (for --cfg sampling)",
    )
    p.add_argument("--num-classes", type=int, help="label classes (default: from --labels)")
    p.add_argument(
        "--causal", action="store_true", help="causal-in-time model (chunked generation)"
    )
    p.add_argument(
        "--backend",
        choices=["auto", "flash", "xformers", "sdpa", "math"],
        help="attention backend for training (default auto)",
    )
    p.add_argument("--log-every", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_gen_train)
