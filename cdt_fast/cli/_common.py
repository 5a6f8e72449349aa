"""What the commands share: their options, the checks those get before any work starts, and what
the options name (the model, the input video, read and encoded).

The pipelines themselves (reading, encoding, decoding, scoring) are the library's
:mod:`cdt_fast.pipelines`; progress bars and timings are :mod:`cdt_fast.cli._console`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .. import video_io
from ..dtypes import DTYPE_NAMES, dtype_from_name, dtype_name
from ._console import progress, timed

if TYPE_CHECKING:  # torch is imported where a command runs, so that --help answers at once
    import torch


# -- options ---------------------------------------------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="base|small|PATH",
        help="'base'/'small': upstream's released weights, from --ckpt, else "
        "./pretrained/cdt_{base,small}.ckpt, else the Hugging Face Hub (cached); PATH is a "
        ".safetensors saved by cdt_fast.save, or an upstream .ckpt/.safetensors state dict with "
        "--preset. Default: the bundled demo model",
    )
    group.add_argument(
        "--preset",
        choices=["base", "small"],
        help="architecture of a --model PATH that holds no config",
    )
    add_release_args(group)
    group.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N; auto = cuda when available (default)"
    )
    add_dtype_arg(group)
    group.add_argument(
        "--chunk-frames",
        type=int,
        metavar="N",
        help="video frames per chunk, a multiple of 4 (latent chunks are N/4); "
        "default: upstream's resolution-based choice, at most 32 on CPU",
    )
    group.add_argument(
        "--reference",
        action="store_true",
        help="run the reference model even when the accelerated engine exists",
    )


def add_release_args(parser) -> None:
    """``--ckpt`` and where ``--model base|small`` fetches its released weights from."""
    parser.add_argument(
        "--ckpt",
        metavar="PATH",
        help="checkpoint of --model base|small (upstream's .ckpt or a .safetensors state dict); "
        "default: the released weights (see --model)",
    )
    parser.add_argument(
        "--hub-repo",
        metavar="ID",
        help="Hugging Face repository of the released weights (default yangnianzu/CDT)",
    )
    parser.add_argument(
        "--hub-filename", metavar="NAME", help="file in it (default cdt_{base,small}.ckpt)"
    )
    parser.add_argument(
        "--hub-revision", metavar="REV", help="branch, tag or commit (default: main)"
    )


def release_location(args: argparse.Namespace) -> dict:
    """The ``repo_id`` / ``filename`` / ``revision`` keywords of :func:`cdt_fast.load` that the
    --hub-* options give (only those given)."""
    location = {
        "repo_id": getattr(args, "hub_repo", None),
        "filename": getattr(args, "hub_filename", None),
        "revision": getattr(args, "hub_revision", None),
    }
    return {k: v for k, v in location.items() if v is not None}


def add_dtype_arg(parser, default: str = "auto") -> None:
    """``--dtype auto|bf16|fp16|fp32`` (float32/float16/bfloat16 accepted too)."""
    parser.add_argument(
        "--dtype",
        default=default,
        type=dtype_name,
        choices=(["auto"] if default == "auto" else []) + list(DTYPE_NAMES),
        help="weights' dtype"
        + ("; auto = bf16 on CUDA, fp32 on CPU (default)" if default == "auto" else "")
        + f" (default {default})" * (default != "auto"),
    )


def _fraction(text: str) -> Fraction:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or ratio: {text!r}") from None


def add_size_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        metavar="S|HxW",
        help="resize frames first: S scales the shorter side to S (both sides even), HxW is exact",
    )


def add_tile_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("spatial tiling")
    group.add_argument(
        "--tile",
        type=int,
        metavar="PX",
        help="encode/decode in overlapping spatial tiles of PX pixels (a multiple of 8): memory "
        "bounded by the tile at any resolution; default: whole frames",
    )
    group.add_argument(
        "--tile-overlap",
        type=int,
        metavar="PX",
        help="pixels shared by neighbouring tiles, blended (a multiple of 8; default tile/4)",
    )


def add_video_args(parser: argparse.ArgumentParser) -> None:
    """The options of everything that reads a video."""
    add_size_arg(parser)
    parser.add_argument(
        "--fps",
        type=_fraction,
        metavar="FPS",
        help="frame rate of an image-sequence input (default 24)",
    )
    add_allow_truncated_arg(parser)
    parser.add_argument(
        "--start", type=int, default=0, metavar="N", help="skip the first N frames (default 0)"
    )
    parser.add_argument(
        "--frames", type=int, metavar="N", help="take at most N frames (default: to the end)"
    )


def add_allow_truncated_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-truncated",
        action="store_true",
        help="use the frames that decode from a truncated video (refused by default)",
    )


def add_video_output_args(parser: argparse.ArgumentParser) -> None:
    """OUT and the options of everything that decodes to video."""
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output video ("
        + ", ".join(sorted(video_io.VIDEO_SUFFIXES))
        + ") or a directory for PNG frames",
    )
    parser.add_argument(
        "--steps", type=int, metavar="N", help="DDIM sampling steps (default: the model's, 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the decoder's starting noise (default 0)"
    )
    parser.add_argument(
        "--crf",
        type=int,
        help="video quality, lower is better: H.264 0-51 (default 17), VP9 0-63 (default 30), "
        "MPEG-4/MPEG-2 quantiser 1-31",
    )
    parser.add_argument(
        "--pix-fmt",
        default="yuv420p",
        choices=video_io.PIXEL_FORMATS,
        help="colour sampling of mp4/mov/mkv/webm output: yuv420p plays everywhere and makes the "
        "sides even (an odd side loses one row or column); yuv444p keeps any size (default "
        "yuv420p)",
    )


def add_quiet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # eval's own spelling, accepted by every command and left out of --help
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


# -- up-front checks -------------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    """Every option a command has, checked before any model is loaded or frame decoded; a
    ValueError names the option."""
    steps = getattr(args, "steps", None)
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if getattr(args, "size", None) is not None:
        video_io.check_size(args.size)
    # validation imports torch, which --help does without
    from ..validation import check_chunk_frames

    check_chunk_frames(getattr(args, "chunk_frames", None), 4, "--chunk-frames")
    if getattr(args, "start", 0) < 0:
        raise ValueError(f"--start must be >= 0, got {args.start}")
    frames = getattr(args, "frames", None)
    if frames is not None and frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    fps = getattr(args, "fps", None)
    if fps is not None and fps <= 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    crf = getattr(args, "crf", None)
    if crf is not None and not 0 <= crf <= 63:
        raise ValueError(f"--crf must be in 0..63, got {crf}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")


def check_video_output(path) -> None:
    """``-o`` of a command that writes video: format by suffix, location writable."""
    try:
        video_io.check_output_path(path)
    except video_io.VideoError as err:
        raise ValueError(f"-o: {err}") from None


def check_file_output(path, suffix: str) -> None:
    """``-o`` of a command that writes one ``suffix`` file."""
    if not str(path).endswith(suffix):
        raise ValueError(f"-o must end in {suffix}, got {path}")
    if Path(path).is_dir():
        raise ValueError(f"-o: {path} is a directory")
    try:
        video_io.check_writable(path)
    except video_io.VideoError as err:
        raise ValueError(f"-o: {err}") from None


# -- model -----------------------------------------------------------------------------------------
def default_model_path(root: Optional[Path] = None) -> Path:
    """The model the commands run without --model: the bundled demo model
    (:func:`cdt_fast.train.demo_model_path`, of the package folder ``root``); one clear error if
    it is absent."""
    from ..train import demo_model_path

    try:
        return demo_model_path(root)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no --model given and {err}; pass --model base|small|PATH"
        ) from None


def resolve_device(text: str) -> "torch.device":
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine")
    return device


def resolve_dtype(text: str, device: "torch.device") -> "torch.dtype":
    import torch

    if text == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtype_from_name(text)


def _load_weights(args: argparse.Namespace, device: "torch.device", dtype: "torch.dtype"):
    import cdt_fast

    from ..config import config_from_file
    from ..latents import is_latent_file

    spec = args.model
    ckpt, location = getattr(args, "ckpt", None), release_location(args)
    if spec in ("base", "small"):
        if args.preset not in (None, spec):
            raise ValueError(f"--model {spec} and --preset {args.preset} disagree")
        if ckpt is not None and location:
            raise ValueError("--ckpt is a local checkpoint; drop the --hub-* options")
        # load_cdt's order: --ckpt, else upstream's ./pretrained/, else the Hub
        return cdt_fast.load_cdt(spec, dtype=dtype, device=device, ckpt=ckpt, **location)
    if ckpt is not None or location:
        raise ValueError("--ckpt and --hub-* go with --model base|small; pass a file as --model")
    path = default_model_path() if spec is None else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path} (--model takes base, small or a file)")
    if is_latent_file(path):
        raise ValueError(f"{path} is a latent file, not a model")
    if config_from_file(path) is not None:
        if args.preset is not None:
            raise ValueError(f"{path} holds its own config; drop --preset")
        return cdt_fast.load(path, device=device, dtype=dtype)
    if args.preset is None:
        raise ValueError(f"{path} holds no model config; pass --preset base|small")
    return cdt_fast.load(args.preset, ckpt=path, device=device, dtype=dtype)


@dataclasses.dataclass
class Loaded:
    """A model ready to run: ``model`` (the engine or the reference), the :class:`CDTConfig` of its
    weights, the device, and a one-line description for reports."""

    model: object
    config: object
    device: torch.device
    description: str


def load_model(args: argparse.Namespace) -> Loaded:
    """The model the options name, accelerated when the engine exists (unless --reference)."""
    import cdt_fast

    from ..checkpoint import CheckpointMismatchError

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    try:
        model = _load_weights(args, device, dtype)
    except CheckpointMismatchError as err:
        raise ValueError(
            f"{str(err).splitlines()[0]} ({len(err.missing)} missing, "
            f"{len(err.unexpected)} unexpected, {len(err.mismatched)} mis-shaped "
            "keys; wrong --preset?)"
        ) from None
    config, engine = model.config, "reference"
    if hasattr(cdt_fast, "accelerate") and not args.reference:
        model, engine = cdt_fast.accelerate(model), "engine"
    dtype_label = str(dtype).replace("torch.", "")
    return Loaded(model, config, device, f"CDT {config.name} ({engine}, {device} {dtype_label})")


# -- the input video -------------------------------------------------------------------------------
def encode_input(args: argparse.Namespace, loaded: Loaded, times: dict):
    """The command's input video (``args.input`` with its size, fps, truncation and frame-range
    options) read and encoded with a progress bar; the encode time lands in ``times``. Returns
    ``(latent, clip, info, (height, width))``, the last being the frame size the latent codes."""
    from ..pipelines import encode_chunk_frames, encode_clip, open_clip

    with progress(0, "encode", args.quiet) as bar:
        clip, info, size = open_clip(
            args.input,
            loaded.config,
            args.size,
            args.fps,
            bar.update,
            args.allow_truncated,
            args.start,
            args.frames,
        )
        bar.reset(total=clip.frames)
        chunk = encode_chunk_frames(loaded.config, clip, loaded.device, args.chunk_frames)
        with timed(times, "encode", loaded.device):
            z = encode_clip(
                loaded.model, clip, chunk, tile=args.tile, tile_overlap=args.tile_overlap
            )
    return z, clip, info, size
