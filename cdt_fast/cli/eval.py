"""``cdt-fast eval``: reconstruction PSNR / SSIM / LPIPS over a folder of videos, as upstream's
``rec_video_eval.py`` measures them (first 17 frames, resized to cover and centre-cropped), or with
``--images`` over a folder of images, as upstream's ``rec_image_eval.py`` (full resolution cropped
at the top left to a multiple of 8, one frame)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from ..dtypes import dtype_from_name
from . import _common

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _load_model(args, device: str, dtype):
    from .. import load

    spec, location = args.model, _common.release_location(args)
    if spec not in ("base", "small") and location:
        raise ValueError("--hub-* go with --model base|small")
    if spec == "demo":
        from ..train import demo_model_path

        spec = str(demo_model_path())
    # --model base|small without --ckpt: the released weights from the Hugging Face Hub
    return load(spec, args.ckpt, device=device, dtype=dtype, **location)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _reconstruct(model, x, args, generator):
    """decode(encode(x)) and its wall time (synchronised), with the CLI's steps and tiling."""
    _sync(x.device)
    start = time.perf_counter()
    z = model.encode(x, tile=args.tile, tile_overlap=args.tile_overlap)
    recon = model.decode(
        z, steps=args.steps, generator=generator, tile=args.tile, tile_overlap=args.tile_overlap
    )
    _sync(x.device)
    return recon, time.perf_counter() - start


def list_images(folder) -> List[Path]:
    """The PNG / JPEG / WebP files of ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--images must be a folder of images, got {str(folder)!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--images {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: Path, space_factor: int = 8):
    """Upstream's image input: RGB at full resolution, cropped at the top left to multiples of
    ``space_factor``, in [-1, 1] as [1, 3, 1, H8, W8]; also the original (height, width)."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
    width, height = img.size
    h8, w8 = height // space_factor * space_factor, width // space_factor * space_factor
    if h8 == 0 or w8 == 0:
        raise ValueError(f"{path}: {width}x{height} is smaller than {space_factor}x{space_factor}")
    pixels = np.asarray(img.crop((0, 0, w8, h8)), dtype=np.uint8)
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    return x[None, :, None], (height, width)


def save_image(recon, path: Path, size) -> None:
    """Write a reconstruction [3, H, W] in [-1, 1] as upstream saves it (resized back to the
    original ``size`` = (height, width)), atomically, in the format of ``path``'s suffix."""
    import numpy as np
    from PIL import Image

    from ..checkpoint import atomic_write

    pixels = ((recon.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
    img = Image.fromarray((pixels.numpy() * 255).round().astype(np.uint8), mode="RGB")
    img = img.resize((size[1], size[0]), Image.BILINEAR)
    fmt = Image.registered_extensions()[path.suffix.lower()]
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


def _check_save_dir(save_recon: Optional[str], source: Path) -> Optional[Path]:
    if save_recon is None:
        return None
    out = Path(save_recon)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--save-recon must be a folder, got the file {str(out)!r}")
    if source.is_dir() and out.resolve() == source.resolve():
        raise ValueError("--save-recon must not be the input folder (it would overwrite it)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _eval_images(args, model, lpips, device, dtype, generator) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..metrics import VideoMetrics

    files = list_images(args.images)
    files = files if args.limit is None else files[: args.limit]
    save_dir = _check_save_dir(args.save_recon, Path(args.images))
    metrics = VideoMetrics(lpips)
    times = []
    for path in tqdm(files, desc="eval", disable=args.quiet or not sys.stderr.isatty()):
        x, size = load_image(path)
        x = x.to(device)
        with torch.no_grad():
            recon, seconds = _reconstruct(model, x.to(dtype), args, generator)
        times.append(seconds)
        metrics.update(x.float().cpu(), recon.float().cpu())
        if save_dir is not None:
            save_image(recon[0, :, 0], save_dir / path.name, size)
    _report(args, metrics.result(), f"{len(files)} images at full resolution (crop to /8), T=1")
    _report_time(times, "image")
    return 0


def _report(args, result, what: str) -> None:
    lpips_name = f"LPIPS-{args.lpips_net}"
    has_lpips = "lpips" in result
    lpips_value = f"{result['lpips']:.4f}" if has_lpips else "n/a (--lpips-backbone)"
    print(f"model {args.model}, {what}, {args.dtype}")
    print(f"| {'PSNR':>8} | {'SSIM':>8} | {lpips_name:>10} |")
    print(f"| {result['psnr']:8.3f} | {result['ssim']:8.4f} | {lpips_value:>10} |")


def _report_time(times: List[float], item: str) -> None:
    if times:
        mean = sum(times) / len(times)
        print(
            f"time per {item}: {mean:.3f} s (encode + decode, mean of {len(times)}; "
            f"min {min(times):.3f} s, max {max(times):.3f} s)"
        )


def _eval(args: argparse.Namespace) -> int:
    import sys

    import torch
    from tqdm.auto import tqdm

    from ..data import SyntheticVideos, VideoFolder
    from ..metrics import LPIPS, VideoMetrics

    if (args.images is None) == (args.video_dir is None):
        raise ValueError("give either VIDEO_DIR or --images DIR")

    _common.check_args(args)
    for name in ("frames", "stride", "steps", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if args.size < 8:
        raise ValueError(f"--size must be >= 8, got {args.size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = dtype_from_name(args.dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lpips = None
    if args.lpips_backbone:
        lpips = LPIPS.from_pretrained(args.lpips_backbone, args.lpips_heads, net=args.lpips_net)
        lpips = lpips.to(device)
    model = _load_model(args, device, dtype)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    if args.images is not None:
        return _eval_images(args, model, lpips, device, dtype, generator)
    if args.video_dir == "synthetic":  # held-out clips: the demo trains on seed 0
        data = SyntheticVideos(
            length=args.limit or 16, frames=args.frames, size=args.size, seed=args.synthetic_seed
        )
    else:
        data = VideoFolder(args.video_dir, frames=args.frames, size=args.size, stride=args.stride)
    count = len(data) if args.limit is None else min(args.limit, len(data))
    save_dir = _check_save_dir(args.save_recon, Path(args.video_dir))
    metrics = VideoMetrics(lpips)
    times = []
    for i in tqdm(range(count), desc="eval", disable=args.quiet or not sys.stderr.isatty()):
        x = data.clip(i).unsqueeze(0).to(device)  # first frames, centre crop
        with torch.no_grad():
            recon, seconds = _reconstruct(model, x.to(dtype), args, generator)
        times.append(seconds)
        metrics.update(x.float().cpu(), recon.float().cpu())
        if save_dir is not None:
            _save_video(recon, save_dir, data, i)
    result = metrics.result()
    what = f"{int(result['videos'])} videos, {args.frames} frames at {args.size}x{args.size}"
    _report(args, result, what)
    _report_time(times, "video")
    return 0


def _save_video(recon, save_dir: Path, data, index: int) -> None:
    """Write a reconstructed clip as NAME.mp4 at the source's frame rate over the sampling
    stride (synthetic clips: 8 fps)."""
    from fractions import Fraction

    from .. import video_io

    videos = getattr(data, "videos", None)
    if videos:
        source = videos[index][0]
        stem, fps = source.stem, video_io.probe(source).fps / data.stride
    else:
        stem, fps = f"synthetic_{index:04d}", Fraction(8)
    _, _, _, height, width = recon.shape
    frames = video_io.tensor_to_frames(recon, height, width)
    video_io.write_video(save_dir / f"{stem}.mp4", [frames], fps)


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
        nargs="?",
        help="a folder of videos, or 'synthetic' for held-out synthetic clips",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help="evaluate a folder of PNG/JPEG/WebP images instead, as upstream's image protocol: "
        "full resolution cropped at the top left to multiples of 8, T=1",
    )
    p.add_argument(
        "--save-recon",
        metavar="DIR",
        help="write each reconstruction there (images: same name, resized back to the "
        "original size as upstream; videos: NAME.mp4)",
    )
    p.add_argument(
        "--tile",
        type=int,
        help="encode/decode in overlapping spatial tiles of this many pixels (bounds memory)",
    )
    p.add_argument(
        "--tile-overlap", type=int, help="pixels shared by neighbouring tiles (default tile/4)"
    )
    p.add_argument(
        "--model",
        default="demo",
        help="demo (bundled) | base | small (the released weights: --ckpt, else the Hugging "
        "Face Hub) | a .safetensors from cdt_fast.save",
    )
    _common.add_release_args(p)
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
