"""Spatial tiling on CPU: how far tiled output is from untiled, and peak memory against resolution.

quality: a synthetic clip is encoded and decoded whole and tiled (same decoder noise); PSNR of the
tiled result against the untiled one, for tiled encode, tiled decode and both, per tile/overlap.
memory: one decode of one latent frame per fresh subprocess; peak resident memory (ru_maxrss) of
the process, its resident memory just before the decode, and the decode's wall time.

    python benchmarks/bench_tiling.py quality --model demo --size 256x384 --frames 5
    python benchmarks/bench_tiling.py memory --width 4 --resolutions 720p,1080p,4k --tile 256
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import timing  # noqa: E402

RESOLUTIONS = {"360p": (360, 640), "720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}


def _model(spec: str, width: int):
    import cdt_fast

    if spec == "demo":
        from cdt_fast.train import demo_model_path

        return cdt_fast.load(str(demo_model_path()))
    config = cdt_fast.CDTConfig.preset(
        "small", context_dim=width, unet_dim=width, latent_dim=16, out_channels=3
    )
    return cdt_fast.randomize_(cdt_fast.CDT(config).eval())


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def quality(args) -> dict:
    from cdt_fast.data import SyntheticVideos

    model = _model(args.model, args.width).to(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    x = SyntheticVideos(length=1, frames=args.frames, size=(h, w), seed=1000).clip(0)[None]
    x = x.to(args.device)
    z = model.encode(x)
    noise = model.initial_noise(z, torch.Generator().manual_seed(0))
    ref = model.decode(z, noise=noise)
    rows = []
    for tile in args.tiles:
        default = sorted({0, tile // 4 // 8 * 8, tile // 2 // 8 * 8})
        for overlap in args.overlaps or default:
            kw = dict(tile=tile, tile_overlap=overlap)
            z_t = model.encode(x, **kw)
            row = {
                "tile": tile,
                "overlap": overlap,
                "latent_psnr_db": _psnr(z_t / z.abs().max(), z / z.abs().max()),
                "encode_tiled_db": _psnr(model.decode(z_t, noise=noise), ref),
                "decode_tiled_db": _psnr(model.decode(z, noise=noise, **kw), ref),
                "both_tiled_db": _psnr(model.decode(z_t, noise=noise, **kw), ref),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {
        "model": args.model,
        "size": [h, w],
        "frames": args.frames,
        "untiled_vs_input_db": _psnr(ref, x),
        "rows": rows,
    }


def _child(args) -> None:
    """One decode in this (fresh) process; prints a JSON line."""
    from cdt_fast import tiling

    torch.set_num_threads(args.threads)
    model = _model(args.model, args.width)
    h, w = RESOLUTIONS[args.resolution]
    s = model.config.space_factor
    z = torch.randn(1, model.config.latent_dim, 1, math.ceil(h / s), math.ceil(w / s))
    noise = model.initial_noise(z, torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # One timed call, no warm-up: the process's peak resident memory is the decode's own.
    timed = timing.measure(
        lambda: model.decode(z, noise=noise, tile=args.tile or None, tile_overlap=args.overlap),
        torch.device("cpu"),
        warmup=0,
        repeats=1,
        keep_output=True,
        memory=False,
    )
    out, seconds = timed.output, timed.p50 / 1e3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "resolution": args.resolution,
                "tile": args.tile or None,
                "overlap": tiling.resolve(args.tile, args.overlap).overlap[0]
                if args.tile
                else None,
                "output_mib": out.numel() * out.element_size() / 2**20,
                "rss_before_mib": before / 1024,
                "peak_rss_mib": peak / 1024,
                "seconds": seconds,
            }
        )
    )


def memory(args) -> dict:
    rows = []
    for res in args.resolutions:
        for tile in ([args.tile] if args.tile else []) + ([0] if res in args.untiled else []):
            cmd = [sys.executable, __file__, "_child", "--resolution", res, "--tile", str(tile)]
            cmd += ["--model", args.model, "--width", str(args.width)]
            cmd += ["--threads", str(args.threads)]
            if args.overlap is not None:
                cmd += ["--overlap", str(args.overlap)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"model": args.model, "width": args.width, "threads": args.threads, "rows": rows}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["quality", "memory", "_child"])
    p.add_argument("--model", default="width", help="demo (bundled, trained) | width (random)")
    p.add_argument("--width", type=int, default=4, help="network width of the random model")
    p.add_argument("--size", default="256x384", help="quality: HxW of the clip")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--tiles", default="64,128", help="quality: tile sides to try")
    p.add_argument(
        "--overlaps", help="quality: overlaps to try per tile (default 0, tile/4, tile/2)"
    )
    p.add_argument("--resolutions", default="720p,1080p,4k")
    p.add_argument("--untiled", default="720p", help="memory: resolutions also run untiled")
    p.add_argument("--resolution", default="720p")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="quality: device of the model")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    args.tiles = [int(t) for t in str(args.tiles).split(",")]
    args.overlaps = [int(o) for o in args.overlaps.split(",")] if args.overlaps else None
    return args


def run_summary() -> list:
    """A short case for ``run.py --kernels``: tiled vs untiled PSNR of a random width-4 model on
    a 64x96 frame with 32-pixel tiles overlapping by 8, on CUDA (the other microbenchmarks' rule;
    on CPU it would only slow the suite that runs them)."""
    if not torch.cuda.is_available():
        return [{"skipped": "needs CUDA (on CPU: python benchmarks/bench_tiling.py quality)"}]
    args = _parse(
        ["quality", "--size", "64x96", "--frames", "1", "--tiles", "32", "--overlaps", "8"]
        + ["--device", "cuda"]
    )
    return quality(args)["rows"]


def main(argv=None) -> int:
    args = _parse(argv)
    args.resolutions = [r for r in args.resolutions.split(",") if r]
    args.untiled = [r for r in args.untiled.split(",") if r]
    if args.what == "_child":
        _child(args)
        return 0
    torch.set_num_threads(args.threads)
    result = quality(args) if args.what == "quality" else memory(args)
    if args.out:
        from cdt_fast.checkpoint import atomic_write

        text = json.dumps(result, indent=1) + "\n"
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
