"""``cdt-fast gen-train LATENTS_DIR --out RUN``: train the latent video generator on an
``encode-dataset`` folder (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._training import add_run_args, fit_and_report, run_overrides


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
    overrides = run_overrides(args, backend=args.backend)
    return config.replace(**overrides)


def _gen_train(args: argparse.Namespace) -> int:
    import torch

    from ..generation.train import GenTrainer, LatentClips
    from ..train.distributed import setup_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    config = _config(args)
    dataset = LatentClips(
        args.input,
        config.frames,
        config.size,
        labels=args.labels,
        patch_size=config.model.patch_size,
    )
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
        progress=not args.quiet,
        dist_info=dist_info,
    )
    normaliser = f"latents normalised by {dataset.normalizer.source}"
    sizes = ", ".join(f"{h}x{w} ({n} clip{'s' * (n != 1)})" for (h, w), n in dataset.latent_sizes)
    buckets = f"{len(dataset.latent_sizes)} latent size buckets: {sizes}"
    return fit_and_report(trainer, dist_info, args.stop_at, [normaliser, buckets])


def register(sub) -> None:
    p = sub.add_parser(
        "gen-train",
        help="train the latent video generator on an encode-dataset folder",
        description="Train a Latte-style video diffusion transformer (rectified flow) on the "
        "latents of an encode-dataset folder, normalised by its latent-stats (else by the "
        "tokenizer's latent_scale). Latents of several sizes train in shape buckets (each batch "
        "from one); latent sides must be multiples of the patch size (encode-dataset --crop "
        "makes them so), checked before any model is built. Run under torchrun for DDP. Writes "
        "metrics.jsonl, resumable checkpoints and, at the end, model.safetensors / "
        "ema.safetensors into --out.",
    )
    p.add_argument("input", metavar="LATENTS_DIR")
    p.add_argument("--preset", default="tiny", help="tiny | S | B | a .json GenTrainConfig")
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
        choices=["auto", "flash", "xformers", "sdpa", "torch", "math"],
        help="attention backend for training (default auto; math: the deprecated name of torch)",
    )
    add_run_args(p, frames_help="latent frames per training clip (5 = 17 frames)")
    p.set_defaults(func=_gen_train)
