"""``cdt-fast encode IN -o LATENT.safetensors``: a video to a latent file."""

from __future__ import annotations

import argparse

from . import _common


def _encode(args: argparse.Namespace) -> int:
    from .. import latents
    from ..pipelines import video_metadata

    _common.check_args(args)
    _common.check_file_output(args.output, ".safetensors")
    loaded = _common.load_model(args)
    times: dict = {}
    z, clip, info, _ = _common.encode_input(args, loaded, times)
    metadata = video_metadata(info, clip, args.start)
    latents.save_latent(args.output, z, loaded.config, metadata)
    print(
        f"{args.input}: {info.describe()} -> {args.output} latent {list(z.shape)} "
        f"with {loaded.description} in {times['encode']:.2f} s"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "encode",
        help="encode a video into a latent .safetensors file",
        description="Encode a video into a latent .safetensors file holding the "
        "model config and its hash, latent_scale, fps, the original "
        "frame count and size, and the padding applied.",
    )
    p.add_argument("input", metavar="IN", help="video file, image directory or glob")
    p.add_argument("-o", "--output", required=True, metavar="LATENT.safetensors")
    _common.add_video_args(p)
    _common.add_model_args(p)
    _common.add_tile_args(p)
    _common.add_quiet_arg(p)
    p.set_defaults(func=_encode)
