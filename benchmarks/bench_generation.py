"""Benchmark of the latent video generator: one training step and one sampling step per attention
backend.

A training step is forward + backward + AdamW + EMA of the rectified-flow loss on a batch of
latents; a sampling step is one Euler step (one forward pass without autograd). Timing is
:func:`benchmarks.timing.measure` (warm-up, then p20/p50/p80 of per-call latencies; CUDA events on
a GPU), as in the main benchmark; throughput is latent frames per second at the median.

Shapes: ``tiny`` on CDT latents of 17 frames at 64x64 (``[B, 8, 5, 8, 8]``, the demo) runs in
seconds on a CPU; ``S`` / ``B`` on 17 frames at 256x256 (``[B, 16, 5, 32, 32]``) need a GPU.

    python benchmarks/bench_generation.py [--preset tiny|S|B] [--batch 4] [--repeats 5]
        [--device cpu|cuda] [--out rows.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.dtypes import dtype_name  # noqa: E402
from cdt_fast.checkpoint import atomic_write  # noqa: E402

SHAPES = {"tiny": (8, 5, 8, 8), "S": (16, 5, 32, 32), "B": (16, 5, 32, 32)}
TRAIN_BACKENDS = ("flash", "xformers", "sdpa", "torch")
SAMPLE_BACKENDS = ("flash", "xformers", "triton", "sdpa", "torch")


def _available(names, device, dtype, only=None) -> List[str]:
    from cdt_fast.generation import attention_backends

    status = attention_backends(device, dtype)
    return [n for n in names if status[n].available and (only is None or n in only)]


def run(
    preset: str = "tiny",
    batch: int = 4,
    device: Optional[str] = None,
    repeats: int = 5,
    warmup: int = 2,
    max_time_s: float = 10.0,
    backends: Optional[List[str]] = None,
) -> List[Dict]:
    """Rows of p20/p50/p80 ms per (step kind, backend); ``backends`` limits which are timed."""
    from benchmarks.timing import measure
    from cdt_fast.generation.model import GenConfig, VideoDiT
    from cdt_fast.generation.train import FlowMatchingLoss
    from cdt_fast.train.ema import EMA

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32  # autocast dtype in training on CUDA
    c, t, h, w = SHAPES[preset]
    config = GenConfig.preset(preset, in_channels=c)
    torch.manual_seed(0)
    model = VideoDiT(config).to(device)
    z = torch.randn(batch, c, t, h, w, device=device)
    frames = batch * t
    rows = []

    def record(kind, backend, timing):
        rows.append(
            {
                "bench": "generation",
                "kind": kind,
                "preset": preset,
                "backend": backend,
                "shape": [batch, c, t, h, w],
                "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                "dtype": dtype_name(dtype),
                "threads": torch.get_num_threads(),
                "repeats": timing.repeats,
                "p20_ms": round(timing.p20, 3),
                "p50_ms": round(timing.p50, 3),
                "p80_ms": round(timing.p80, 3),
                "latent_frames_per_s": round(frames / timing.p50 * 1e3, 2),
                "peak_mem_bytes": timing.peak_mem_bytes,
            }
        )

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMA(model, 0.999)
    gen = torch.Generator(device=device).manual_seed(0)
    for backend in _available(TRAIN_BACKENDS, device, dtype, backends):
        loss_fn = FlowMatchingLoss(model, backend)

        def train_step(loss_fn=loss_fn):
            with torch.autocast("cuda", dtype=dtype, enabled=cuda):
                loss = loss_fn(z, None, gen)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update(model)

        model.train()
        timing = measure(train_step, device, warmup=warmup, repeats=repeats, max_time_s=max_time_s)
        record("train_step", backend, timing)
    model.eval()
    x, tt = z.to(dtype), torch.full((batch,), 0.5, device=device, dtype=dtype)
    model.to(dtype)
    for backend in _available(SAMPLE_BACKENDS, device, dtype, backends):

        @torch.no_grad()
        def sample_step(backend=backend):
            return x + (-0.1) * model(x, tt, backend=backend)

        timing = measure(sample_step, device, warmup=warmup, repeats=repeats, max_time_s=max_time_s)
        record("sample_step", backend, timing)
    return rows


def markdown(rows: List[Dict]) -> str:
    lines = [
        "| kind | preset | backend | shape | p20 ms | p50 ms | p80 ms | latent frames/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['preset']} | {r['backend']} | {r['shape']} | {r['p20_ms']} | "
            f"{r['p50_ms']} | {r['p80_ms']} | {r['latent_frames_per_s']} |"
        )
    return "\n".join(lines)


def run_summary() -> List[Dict]:
    """The default case for the benchmark collector: ``S`` on a GPU, ``tiny`` on a CPU."""
    return run("S" if torch.cuda.is_available() else "tiny", repeats=5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(SHAPES), default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", type=Path, metavar="PATH", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("S" if torch.cuda.is_available() else "tiny")
    rows = run(preset, args.batch, args.device, args.repeats, args.warmup)
    print(markdown(rows))
    if args.out:
        text = json.dumps(rows, indent=1)
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
