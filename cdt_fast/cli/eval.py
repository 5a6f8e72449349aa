"""``cdt-fast eval``: reconstruction PSNR / SSIM / LPIPS over a folder of videos, as upstream's
``rec_video_eval.py`` measures them (first 17 frames, resized to cover and centre-cropped)."""

from __future__ import annotations

import argparse

from . import _common


def _load_model(spec: str, ckpt, device: str, dtype):
    from .. import load

    if spec in ("base", "small") and ckpt is None:
        raise ValueError(f"--model {spec} needs its upstream weights: pass --ckpt cdt_{spec}.ckpt")
    if spec == "demo":
        from ..train import demo_model_path

        spec = str(demo_model_path())
    return load(spec, ckpt, device=device, dtype=dtype)


def _eval(args: argparse.Namespace) -> int:
    import sys

    import torch
    from tqdm.auto import tqdm

    from ..data import SyntheticVideos, VideoFolder
    from ..metrics import LPIPS, VideoMetrics

    _common.check_args(args)
    for name in ("frames", "stride", "steps", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if args.size < 8:
        raise ValueError(f"--size must be >= 8, got {args.size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lpips = None
    if args.lpips_backbone:
        lpips = LPIPS.from_pretrained(args.lpips_backbone, args.lpips_heads, net=args.lpips_net)
        lpips = lpips.to(device)
    model = _load_model(args.model, args.ckpt, device, dtype)
    if args.video_dir == "synthetic":  # held-out clips: the demo trains on seed 0
        data = SyntheticVideos(
            length=args.limit or 16, frames=args.frames, size=args.size, seed=args.synthetic_seed
        )
    else:
        data = VideoFolder(args.video_dir, frames=args.frames, size=args.size, stride=args.stride)
    count = len(data) if args.limit is None else min(args.limit, len(data))
    metrics = VideoMetrics(lpips)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for i in tqdm(range(count), desc="eval", disable=args.quiet or not sys.stderr.isatty()):
        x = data.clip(i).unsqueeze(0).to(device)  # first frames, centre crop
        with torch.no_grad():
            recon = model.decode(model.encode(x.to(dtype)), steps=args.steps, generator=generator)
        metrics.update(x.float().cpu(), recon.float().cpu())
    result = metrics.result()
    lpips_name = f"LPIPS-{args.lpips_net}" if lpips is not None else "LPIPS"
    lpips_value = f"{result['lpips']:.4f}" if lpips is not None else "n/a (--lpips-backbone)"
    print(
        f"model {args.model}, {int(result['videos'])} videos, {args.frames} frames at "
        f"{args.size}x{args.size}, {args.dtype}"
    )
    print(f"| {'PSNR':>8} | {'SSIM':>8} | {lpips_name:>10} |")
    print(f"| {result['psnr']:8.3f} | {result['ssim']:8.4f} | {lpips_value:>10} |")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="PSNR / SSIM / LPIPS of reconstructions of a video folder",
        description="Reconstruct the first --frames frames of every video in VIDEO_DIR (resized "
        "to cover --size and centre-cropped, as upstream's evaluation) and print "
        "PSNR, SSIM and LPIPS (frames in [0, 1], per frame, averaged).",
    )
    p.add_argument(
        "video_dir",
        metavar="VIDEO_DIR",
        help="a folder of videos, or 'synthetic' for held-out synthetic clips",
    )
    p.add_argument(
        "--model",
        default="demo",
        help="demo (bundled) | base | small (with --ckpt) | a .safetensors from cdt_fast.save",
    )
    p.add_argument("--ckpt", help="upstream checkpoint for --model base/small")
    p.add_argument("--size", type=int, default=256, help="crop side: 256 or 720 as upstream")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--stride", type=int, default=1, help="frame sampling stride")
    p.add_argument("--steps", type=int, default=1, help="DDIM steps")
    p.add_argument("--limit", type=int, help="evaluate only the first N videos (synthetic: 16)")
    p.add_argument(
        "--synthetic-seed",
        type=int,
        default=1000,
        help="seed of the synthetic clips (training uses seed 0)",
    )
    _common.add_dtype_arg(p, default="fp32")
    p.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the decoder's noise")
    p.add_argument(
        "--lpips-backbone", help="torchvision alexnet/vgg16 state dict; LPIPS is skipped without it"
    )
    p.add_argument(
        "--lpips-heads", help="LPIPS v0.1 head file (default: the installed lpips package's)"
    )
    p.add_argument(
        "--lpips-net",
        choices=["alex", "vgg"],
        default="alex",
        help="alex as upstream's evaluation (default), or vgg",
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    _common.add_quiet_arg(p)
    p.set_defaults(func=_eval)
