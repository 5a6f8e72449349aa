"""Reconstruction quality of one or more models on held-out photographs moved as video.

``python -m cdt_fast.train.photo_eval MODEL [MODEL ...]`` prints, per model, PSNR / SSIM (the
``eval`` command's definitions) and the mean colour error per channel (reconstruction minus
original, in 8-bit levels: a colour cast shows as a channel far from 0) over the same clips: the
scikit-image photographs held out of the ``photos`` training source, plus any ``--images`` folder
(e.g. matplotlib's ``sample_data``). Models: ``demo`` (the bundled one), a ``.safetensors``, or
``bicubic:F``, a yardstick that is no model: every frame scaled down F times and back up
(antialiased bicubic), which keeps 3 values per FxF block and frame where a CDT latent keeps 16
per 8x8 block and 4 frames.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Sequence

import torch

from ..config import check_positive_ints

__all__ = ["photo_eval", "BicubicRoundTrip"]


class BicubicRoundTrip:
    """Frames scaled down ``factor`` times and back up: the reference a learned codec of the same
    rate should beat. Has the ``encode`` / ``decode`` calls :func:`photo_eval` makes; frame sides
    must be multiples of ``factor``."""

    def __init__(self, factor: int):
        self.factor = factor
        check_positive_ints(self, ("factor",))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"frame sides must be multiples of {self.factor}, got {h}x{w}")
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        small = torch.nn.functional.interpolate(
            frames, scale_factor=1 / self.factor, mode="bicubic", antialias=True
        )
        return small.reshape(b, t, c, *small.shape[-2:]).transpose(1, 2)

    def decode(self, z: torch.Tensor, **_) -> torch.Tensor:
        b, c, t, h, w = z.shape
        frames = z.transpose(1, 2).reshape(b * t, c, h, w)
        big = torch.nn.functional.interpolate(frames, scale_factor=self.factor, mode="bicubic")
        return big.clamp(-1, 1).reshape(b, t, c, *big.shape[-2:]).transpose(1, 2)


def photo_eval(
    models: Dict[str, torch.nn.Module],
    images: Sequence[torch.Tensor],
    frames: int = 17,
    size: int = 64,
    clips_per_image: int = 4,
    seed: int = 1000,
    steps: int = 1,
) -> Dict[str, Dict[str, object]]:
    """Per model: ``psnr``, ``ssim`` (per frame, averaged per clip, then over clips) and
    ``color_error`` (per-channel mean of reconstruction minus original, 8-bit levels, averaged
    over clips) and ``abs_color_error`` (the same with each clip's per-channel bias taken
    absolute). Every model sees the same clips and the same decoder noise."""
    from ..data import PhotoClips
    from ..metrics import VideoMetrics

    if clips_per_image < 1:
        raise ValueError(f"clips_per_image must be >= 1, got {clips_per_image}")
    data = PhotoClips(
        images, frames=frames, size=size, length=len(images) * clips_per_image, seed=seed
    )
    clips = [data.clip(i) for i in range(len(data))]
    out = {}
    for name, model in models.items():
        metrics = VideoMetrics()
        generator = torch.Generator().manual_seed(seed)
        biases: List[torch.Tensor] = []
        for x in clips:
            x = x.unsqueeze(0)
            with torch.no_grad():
                recon = model.decode(model.encode(x), steps=steps, generator=generator)
            metrics.update(x, recon.float())
            diff = (recon.float().clamp(-1, 1) - x) * 127.5
            biases.append(diff.mean(dim=(0, 2, 3, 4)))
        result = metrics.result()
        bias = torch.stack(biases)
        out[name] = {
            "psnr": result["psnr"],
            "ssim": result["ssim"],
            "clips": len(clips),
            "color_error": [round(float(v), 2) for v in bias.mean(0)],
            "abs_color_error": [round(float(v), 2) for v in bias.abs().mean(0)],
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cdt_fast.train.photo_eval", description=__doc__)
    p.add_argument(
        "models",
        nargs="+",
        help="demo | a .safetensors written by cdt_fast.save | bicubic:F (a yardstick)",
    )
    p.add_argument("--images", action="append", default=[], help="an extra folder of images")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--clips-per-image", type=int, default=4)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1, help="DDIM steps")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ..api import load
    from ..data import load_image_folder, load_skimage_photos
    from ..data.photos import SKIMAGE_HOLDOUT
    from . import demo_model_path

    yardsticks = {}  # checked first: a bad spec stops before any image or weight is read
    for spec in args.models:
        if spec.startswith("bicubic:"):
            factor = spec[len("bicubic:") :]
            if not factor.isdigit() or int(factor) < 1:
                p.error(f"models: bicubic:F needs a positive integer F, got {spec!r}")
            yardsticks[spec] = BicubicRoundTrip(int(factor))
    images = load_skimage_photos(SKIMAGE_HOLDOUT)
    for folder in args.images:
        images += load_image_folder(folder)
    models = {
        spec: yardsticks.get(spec)
        or load(str(demo_model_path()) if spec == "demo" else spec).eval()
        for spec in args.models
    }
    results = photo_eval(
        models, images, args.frames, args.size, args.clips_per_image, args.seed, args.steps
    )
    print(
        f"{len(images)} held-out images x {args.clips_per_image} clips, {args.frames} frames at "
        f"{args.size}x{args.size}, {args.steps} DDIM step(s), fp32"
    )
    print("| model | PSNR (dB) | SSIM | colour error R, G, B | mean abs colour error R, G, B |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
            f"{', '.join(f'{v:+.1f}' for v in r['color_error'])} | "
            f"{', '.join(f'{v:.1f}' for v in r['abs_color_error'])} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
