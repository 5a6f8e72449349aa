"""``cdt-fast reconstruct IN -o OUT``: encode and decode a video, write the result, report quality
(PSNR/SSIM against the input) and time."""

from __future__ import annotations

import argparse

from .. import video_io
from . import _common, _console


def _reconstruct(args: argparse.Namespace) -> int:
    from ..pipelines import ReconstructionScores, decode_frames

    _common.check_args(args)
    _common.check_video_output(args.output)
    loaded = _common.load_model(args)
    times: dict = {}
    z, clip, info, (height, width) = _common.encode_input(args, loaded, times)
    out_size = video_io.output_size(args.output, height, width, args.pix_fmt)
    frame_range = {"start": args.start, "frames": args.frames}
    scores = ReconstructionScores(args.input, info, (height, width), out_size, **frame_range)
    with _console.progress(clip.frames, "decode", args.quiet) as bar:
        with _console.timed(times, "decode", loaded.device):
            frames = decode_frames(
                loaded.model,
                z,
                clip.frames,
                height,
                width,
                args.steps,
                args.seed,
                args.chunk_frames,
                bar.update,
                tile=args.tile,
                tile_overlap=args.tile_overlap,
                config=loaded.config,
                device=loaded.device,
            )
            written = video_io.write_video(
                args.output, scores.scored(frames), info.fps, args.crf, args.pix_fmt
            )
    total = times["encode"] + times["decode"]
    out_h, out_w = out_size
    part = "" if (args.start, args.frames) == (0, None) else f" (frames {args.start}+)"
    print(
        f"{args.input}: {info.describe()}{part} -> {args.output} ({written} frames of "
        f"{out_w}x{out_h}, latent {list(z.shape)}) with {loaded.description}"
    )
    video_file = video_io.is_video_path(args.output)
    measured = "the decoded frames before " + ("video encoding" if video_file else "saving")
    print(
        f"{scores.text()} vs the input, measured on {measured} (per frame, averaged; "
        "SSIM nan below 11x11)"
    )
    if args.score_written:
        written_scores = ReconstructionScores(
            args.input, info, (height, width), out_size, **frame_range
        )
        for _ in written_scores.scored(
            f[None] for f in video_io.iter_frames(args.output, expected=written)
        ):
            pass
        print(f"{written_scores.text()} vs the input, measured on the written file {args.output}")
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
        "time taken. Frame count, size and fps are kept (4:2:0 video output makes the sides "
        "even). Memory stays flat in the clip's length: frames are read, encoded, decoded and "
        "written chunk by chunk.",
    )
    p.add_argument("input", metavar="IN", help="video file, image directory or glob")
    _common.add_video_args(p)
    _common.add_video_output_args(p)
    p.add_argument(
        "--score-written",
        action="store_true",
        help="also measure PSNR/SSIM of the file written, after its video encoding (--crf)",
    )
    _common.add_model_args(p)
    _common.add_tile_args(p)
    _common.add_quiet_arg(p)
    p.set_defaults(func=_reconstruct)
