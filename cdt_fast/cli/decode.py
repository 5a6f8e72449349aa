"""``cdt-fast decode LATENT -o OUT.mp4``: a latent file back to video."""

from __future__ import annotations

import argparse

from .. import video_io
from . import _common, _console


def _decode(args: argparse.Namespace) -> int:
    from .. import latents
    from ..pipelines import decode_frames

    _common.check_args(args)
    chunk_frames = args.chunk_frames
    _common.check_video_output(args.output)
    info = latents.read_latent(args.input)
    loaded = _common.load_model(args)
    latents.check_compatible(info, loaded.config)
    video = info.video
    times: dict = {}
    with _console.progress(video["frames"], "decode", args.quiet) as bar:
        with _console.timed(times, "decode", loaded.device):
            frames = decode_frames(
                loaded.model,
                info.latent,
                video["frames"],
                video["height"],
                video["width"],
                args.steps,
                args.seed,
                chunk_frames,
                bar.update,
                tile=args.tile,
                tile_overlap=args.tile_overlap,
                config=loaded.config,
                device=loaded.device,
            )
            written = video_io.write_video(args.output, frames, info.fps, args.crf, args.pix_fmt)
    out_h, out_w = video_io.output_size(args.output, video["height"], video["width"], args.pix_fmt)
    print(
        f"{args.input}: latent {list(info.shape)} -> {args.output} ({written} frames of "
        f"{out_w}x{out_h} at {info.fps} fps) with {loaded.description} in "
        f"{times['decode']:.2f} s"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "decode",
        help="decode a latent file into a video",
        description="Decode a latent file written by 'cdt-fast encode' into a "
        "video with its original frame count, size and fps. Refuses a "
        "latent of another model architecture.",
    )
    p.add_argument("input", metavar="LATENT", help="latent .safetensors from cdt-fast encode")
    _common.add_video_output_args(p)
    _common.add_model_args(p)
    _common.add_tile_args(p)
    _common.add_quiet_arg(p)
    p.set_defaults(func=_decode)
