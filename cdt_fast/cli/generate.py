"""``cdt-fast generate RUN -o out.mp4``: sample a video from a trained generator and decode it
with the CDT engine."""

from __future__ import annotations

import argparse
import time


def _size(text):
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        h = w = 0
    if h < 1 or w < 1:
        raise ValueError(f"--size must be HxW, positive (e.g. 64x64), got {text!r}")
    return h, w


def _check_backend(name: str, device, dtype) -> None:
    """--backend, refused up front when it cannot run on this device and the generator's dtype
    (the sampler would raise at its first attention call)."""
    from ..generation.attention import attention_backends

    status = attention_backends(device, dtype).get(name)  # none for "auto"
    if status is not None and not status.available:
        raise ValueError(f"--backend {name} cannot run here: {status.reason}")


def _generate(args: argparse.Namespace) -> int:
    from .. import video_io
    from ..generation.sampling import load_generator, sample
    from . import _common

    size = _size(args.size)
    if args.output is None and args.save_latents is None:
        raise ValueError("give -o OUT.mp4 and/or --save-latents PATH")
    if args.output is not None:
        video_io.check_output_path(args.output)
    device = _common.resolve_device(args.device)
    gen = load_generator(None if args.run == "demo" else args.run, device)
    _check_backend(args.backend, device, next(gen.model.parameters()).dtype)
    tokenizer = None
    if args.output is not None:
        args.dtype, args.reference, args.chunk_frames = "fp32", args.reference, None
        tokenizer = _common.load_model(args).model if args.model is not None else None
    start = time.perf_counter()
    z = sample(
        gen,
        frames=args.frames,
        steps=args.steps,
        cfg=args.cfg,
        class_label=args.class_label,
        seed=args.seed,
        size=size,
        chunk=args.chunk,
        backend=args.backend,
        device=device,
        output=args.output,
        tokenizer=tokenizer,
        decode_steps=args.decode_steps,
        save_latents=args.save_latents,
        fps=args.fps,
        engine=not args.reference,
    )
    elapsed = time.perf_counter() - start
    what = " and ".join(str(p) for p in (args.output, args.save_latents) if p is not None)
    factor = gen.tokenizer.space_factor
    print(
        f"{args.run}: {args.frames} frames at {z.shape[3] * factor}x{z.shape[4] * factor} "
        f"(latent {list(z.shape[1:])}), {args.steps} steps, cfg {args.cfg} -> {what} in "
        f"{elapsed:.2f} s"
    )
    if size is None and len(gen.latent_sizes) > 1:
        trained = ", ".join(f"{h * factor}x{w * factor}" for (h, w), _ in gen.latent_sizes)
        print(f"size: the commonest of the training sizes ({trained}); --size HxW picks another")
    return 0


def register(sub) -> None:
    from fractions import Fraction

    p = sub.add_parser(
        "generate",
        help="sample a video from a gen-train run (or 'demo') and decode it",
        description="Sample latents from a generator trained by gen-train (RUN folder or weights "
        "file; 'demo' = the bundled tiny generator) by rectified-flow Euler steps, decode them "
        "with the CDT engine, streaming frames into the video, written atomically.",
    )
    p.add_argument("run", metavar="RUN", help="gen-train output folder, weights file, or 'demo'")
    p.add_argument("-o", "--output", metavar="OUT", help="output video (or a PNG directory)")
    p.add_argument("--frames", type=int, default=17, help="video frames, 1+4k (default 17)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    p.add_argument("--cfg", type=float, default=1.0, help="guidance scale (with --class)")
    p.add_argument("--class", dest="class_label", type=int, help="class label")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size",
        metavar="HxW",
        help="video size, multiples of 16 for the usual 8x tokenizer and 2x2 patches (default: "
        "the commonest size of the training clips)",
    )
    p.add_argument("--chunk", type=int, help="latent frames per chunk (causal generators)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "flash", "xformers", "triton", "sdpa", "torch", "math"],
        help="attention backend (default auto; math: the deprecated name of torch)",
    )
    p.add_argument("--save-latents", metavar="PATH", help="also write the latent file")
    p.add_argument("--fps", type=Fraction, help="video frame rate (default: the training data's)")
    p.add_argument("--decode-steps", type=int, help="the tokenizer's DDIM steps (default its own)")
    p.add_argument(
        "--model",
        metavar="PATH",
        help="the CDT tokenizer to decode with (default: the bundled demo model; must be the "
        "one the generator was trained on)",
    )
    p.add_argument("--preset", choices=["base", "small"], help="architecture of a --model PATH")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default auto)")
    p.add_argument("--reference", action="store_true", help="decode with the reference model")
    p.set_defaults(func=_generate)
