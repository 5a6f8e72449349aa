"""How the bundled demo generator is made, end to end on a CPU:

``python -m cdt_fast.generation.demo WORKDIR [--steps N] [--install]``

1. synthetic clips (:class:`cdt_fast.data.SyntheticVideos`, 17 frames at 64x64) encoded by the
   bundled demo tokenizer into an ``encode-dataset``-style folder (``train``) and a held-out one,
2. ``latent-stats`` on the training folder,
3. ``gen-train`` of the ``tiny`` preset,
4. the latent Fréchet distance of samples of the untrained and the trained (EMA) model against
   the held-out latents, written to ``WORKDIR/demo_report.json``,
5. with ``--install``, the EMA weights copied to ``cdt_fast/assets/generator_demo.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..checkpoint import atomic_write

__all__ = ["write_latent_folder", "encode_synthetic", "build_demo"]


def write_latent_folder(
    folder, latents: List[torch.Tensor], config, fps: str = "8", sources: Optional[List[str]] = None
) -> Path:
    """Latents [1, C, T, h, w] as an ``encode-dataset`` folder: ``<source>.safetensors`` files
    (sources default to ``clip_NNNNN.mp4``) and a ``manifest.json`` with the same fields."""
    from ..latents import save_latent

    folder = Path(folder)
    items = []
    for i, z in enumerate(latents):
        source = f"clip_{i:05d}.mp4" if sources is None else sources[i]
        t, h, w = z.shape[2:]
        frames = 1 + (t - 1) * config.time_factor
        height, width = h * config.space_factor, w * config.space_factor
        video = {"fps": fps, "frames": frames, "height": height, "width": width}
        video.update(source_height=height, source_width=width, source=source)
        video["padding"] = {"frames": 0, "bottom": 0, "right": 0}
        save_latent(folder / (source + ".safetensors"), z, config, video)
        items.append(
            {
                "source": source,
                "latent": source + ".safetensors",
                "status": "ok",
                "latent_shape": list(z.shape),
                "frames": frames,
                "fps": fps,
                "height": height,
                "width": width,
            }
        )
    manifest = {
        "format_version": 1,
        "complete": True,
        "counts": {"ok": len(items), "error": 0, "pending": 0},
        "model": config.name,
        "architecture_hash": config.architecture_hash(),
        "latent_scale": config.latent_scale,
        "config": config.to_dict(),
        "items": items,
    }
    text = json.dumps(manifest, indent=1) + "\n"
    atomic_write(folder / "manifest.json", lambda tmp: Path(tmp).write_text(text))
    return folder


@torch.no_grad()
def encode_synthetic(count: int, seed: int, frames: int = 17, size: int = 64) -> List[torch.Tensor]:
    """The demo tokenizer's latents (posterior mode) of ``count`` synthetic clips."""
    from ..api import load
    from ..data import SyntheticVideos
    from ..train import demo_model_path

    model = load(demo_model_path()).eval()
    clips = SyntheticVideos(length=count, frames=frames, size=size, seed=seed)
    return [model.encode(clips.clip(i)[None]).float() for i in range(count)]


def build_demo(
    workdir,
    steps: int = 3000,
    train_clips: int = 512,
    held_out: int = 64,
    samples: int = 64,
    sample_steps: int = 25,
    install: bool = False,
    progress: bool = True,
) -> Dict[str, float]:
    from ..api import load
    from ..train import demo_model_path
    from ..train.distributed import Dist
    from .evaluation import latent_frechet_distance
    from .sampling import load_generator, sample_latents
    from .stats import latent_stats
    from .train import GEN_PRESETS, GenTrainer, LatentClips

    work = Path(workdir)
    config = load(demo_model_path()).config
    start = time.perf_counter()
    if not (work / "train" / "manifest.json").is_file():
        write_latent_folder(work / "train", encode_synthetic(train_clips, seed=1), config)
        write_latent_folder(work / "held_out", encode_synthetic(held_out, seed=2), config)
    encode_s = time.perf_counter() - start
    latent_stats(work / "train")
    dataset = LatentClips(work / "train", frames=5)
    held = LatentClips(work / "held_out", frames=5, normalizer=dataset.normalizer)
    reference = torch.stack([held.clip(i)[0] for i in range(len(held))])
    cfg = GEN_PRESETS["tiny"]().replace(steps=steps, ckpt_every=max(1, steps // 4))
    run = work / "run"
    trainer = GenTrainer(
        cfg,
        dataset,
        run,
        resume=(run / "checkpoints" / "latest").is_file(),
        progress=progress,
        dist_info=Dist(),
    )
    shape = (samples,) + tuple(reference.shape[1:])
    from .model import VideoDiT

    torch.manual_seed(cfg.seed)
    untrained = VideoDiT(trainer.config.model).eval()
    fd_untrained = latent_frechet_distance(
        sample_latents(untrained, shape, steps=sample_steps, seed=123), reference
    )
    train_start = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - train_start
    gen = load_generator(run)
    fd_trained = latent_frechet_distance(
        sample_latents(gen.model, shape, steps=sample_steps, seed=123), reference
    )
    fd_data = latent_frechet_distance(
        torch.stack([dataset.clip(i)[0] for i in range(min(samples, len(dataset)))]), reference
    )
    report = {
        "steps": steps,
        "train_clips": train_clips,
        "held_out": held_out,
        "samples": samples,
        "sample_steps": sample_steps,
        "fd_untrained": fd_untrained,
        "fd_trained_ema": fd_trained,
        "fd_train_data": fd_data,
        "encode_s": round(encode_s, 1),
        "train_s": round(train_s, 1),
        "normalizer": dataset.normalizer.source,
    }
    text = json.dumps(report, indent=1) + "\n"
    atomic_write(work / "demo_report.json", lambda tmp: Path(tmp).write_text(text))
    if install:
        from .sampling import DEMO_GENERATOR

        target = Path(__file__).resolve().parent.parent / "assets" / DEMO_GENERATOR
        atomic_write(target, lambda tmp: shutil.copyfile(run / "ema.safetensors", tmp))
    return report


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cdt_fast.generation.demo", description=__doc__)
    p.add_argument("workdir")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--train-clips", type=int, default=512)
    p.add_argument("--threads", type=int)
    p.add_argument("--install", action="store_true", help="copy the EMA weights into the package")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = build_demo(
        args.workdir,
        steps=args.steps,
        train_clips=args.train_clips,
        install=args.install,
        progress=not args.no_progress,
    )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
