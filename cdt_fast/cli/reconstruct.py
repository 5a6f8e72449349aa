"""``cdt-fast reconstruct IN -o OUT``: encode and decode a video, write the result, report quality
(PSNR/SSIM against the input) and time."""

from __future__ import annotations

import argparse
from typing import Iterator

import numpy as np

from .. import video_io
from . import _common, _metrics


def _reconstruct(args: argparse.Namespace) -> int:
    chunk_frames = _common.check_chunk_frames(args.chunk_frames)
    video_io.check_output_path(args.output)
    loaded = _common.load_model(args)
    times: dict = {}
    with _common.progress(0, "encode", args.quiet) as bar:
        clip, info, (height, width) = _common.open_clip(args.input, loaded.config, args.size, args.fps,
                                                        bar.update)
        bar.reset(total=info.frames)
        with _common.timed(times, "encode", loaded.device):
            z = _common.encode_clip(loaded.model, clip, chunk_frames)

    # The input is read a second time, in step with the decoded chunks, so that quality is
    # measured without holding either video whole.
    resize = None if (height, width) == (info.height, info.width) else (height, width)
    originals = video_io.iter_frames(args.input, resize, expected=info.frames)
    psnr, ssim = [], []

    def scored(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for out in chunks:
            ref = np.stack([next(originals) for _ in range(out.shape[0])])
            psnr.extend(_metrics.psnr_per_frame(ref, out))
            ssim.extend(_metrics.ssim_per_frame(ref, out))
            yield out

    with _common.progress(info.frames, "decode", args.quiet) as bar:
        with _common.timed(times, "decode", loaded.device):
            frames = _common.decode_frames(loaded, z, info.frames, height, width,
                                           args.steps, args.seed, chunk_frames, bar.update)
            written = video_io.write_video(args.output, scored(frames), info.fps, args.crf)
    total = times["encode"] + times["decode"]
    print(f"{args.input}: {info.describe()} -> {args.output} ({written} frames of "
          f"{width}x{height}, latent {list(z.shape)}) with {loaded.description}")
    print(f"PSNR {np.mean(psnr):.2f} dB  SSIM {np.mean(ssim):.4f}  (per frame, averaged)")
    print(f"time: encode {times['encode']:.2f} s (incl. reading), decode {times['decode']:.2f} s "
          f"(incl. writing), {written / total:.1f} frames/s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode a video; print PSNR/SSIM and time",
                       description="Encode a video to latents and decode it back; writes the "
                                   "reconstruction and prints PSNR/SSIM against the input and the "
                                   "time taken. Frame count, size and fps are kept.")
    p.add_argument("input", metavar="IN", help="video file, image directory or glob")
    _common.add_video_args(p)
    _common.add_video_output_args(p)
    _common.add_model_args(p)
    _common.add_quiet_arg(p)
    p.set_defaults(func=_reconstruct)
