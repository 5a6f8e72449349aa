"""``cdt-fast reconstruct IN -o OUT``: encode and decode a video, write the result, report quality
(PSNR/SSIM against the input) and time."""

from __future__ import annotations

import argparse
from typing import Iterator

import numpy as np
import torch

from .. import video_io
from ..metrics.quality import frame_psnr, frame_ssim
from . import _common


def _score(metric, reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Per-frame metric of uint8 [N, H, W, 3] frames, in [0, 1] as upstream evaluates; NaN where
    a frame is too small for the metric (SSIM's 11x11 window)."""

    def unit(a):
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).double() / 255.0

    if metric is frame_ssim and min(frames.shape[1:3]) < 11:
        return np.full(frames.shape[0], np.nan)
    return metric(unit(reference), unit(frames)).numpy()


def _reconstruct(args: argparse.Namespace) -> int:
    chunk_frames = _common.check_chunk_frames(args.chunk_frames)
    video_io.check_output_path(args.output)
    loaded = _common.load_model(args)
    times: dict = {}
    with _common.progress(0, "encode", args.quiet) as bar:
        clip, info, (height, width) = _common.open_clip(
            args.input, loaded.config, args.size, args.fps, bar.update
        )
        bar.reset(total=info.frames)
        with _common.timed(times, "encode", loaded.device):
            z = _common.encode_clip(
                loaded.model, clip, chunk_frames, tile=args.tile, tile_overlap=args.tile_overlap
            )

    # The input is read a second time, in step with the decoded chunks, so that quality is
    # measured without holding either video whole.
    resize = None if (height, width) == (info.height, info.width) else (height, width)
    originals = video_io.iter_frames(args.input, resize, expected=info.frames)
    psnr, ssim = [], []

    def scored(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for out in chunks:
            ref = np.stack([next(originals) for _ in range(out.shape[0])])
            psnr.extend(_score(frame_psnr, ref, out))
            ssim.extend(_score(frame_ssim, ref, out))
            yield out

    with _common.progress(info.frames, "decode", args.quiet) as bar:
        with _common.timed(times, "decode", loaded.device):
            frames = _common.decode_frames(
                loaded,
                z,
                info.frames,
                height,
                width,
                args.steps,
                args.seed,
                chunk_frames,
                bar.update,
                tile=args.tile,
                tile_overlap=args.tile_overlap,
            )
            written = video_io.write_video(args.output, scored(frames), info.fps, args.crf)
    total = times["encode"] + times["decode"]
    print(
        f"{args.input}: {info.describe()} -> {args.output} ({written} frames of "
        f"{width}x{height}, latent {list(z.shape)}) with {loaded.description}"
    )
    print(
        f"PSNR {np.mean(psnr):.2f} dB  SSIM {np.mean(ssim):.4f}  (per frame, averaged; SSIM nan below 11x11)"
    )
    print(
        f"time: encode {times['encode']:.2f} s (incl. reading), decode {times['decode']:.2f} s "
        f"(incl. writing), {written / total:.1f} frames/s"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="encode and decode a video; print PSNR/SSIM and time",
        description="Encode a video to latents and decode it back; writes the "
        "reconstruction and prints PSNR/SSIM against the input and the "
        "time taken. Frame count, size and fps are kept.",
    )
    p.add_argument("input", metavar="IN", help="video file, image directory or glob")
    _common.add_video_args(p)
    _common.add_video_output_args(p)
    _common.add_model_args(p)
    _common.add_tile_args(p)
    _common.add_quiet_arg(p)
    p.set_defaults(func=_reconstruct)
