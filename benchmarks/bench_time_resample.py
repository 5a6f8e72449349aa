"""Microbenchmark: Triton temporal down/upsampling vs the eager reference and torch.compile of it.

Shapes: CDT-base decoding 720x720 (a chunk of 2 latent frames = 8 video frames; encode chunks of
8 frames), bf16, channels-last, a later chunk (cached past frame). ``python
benchmarks/bench_time_resample.py`` prints a markdown table and writes
``benchmarks/results/time_resample-<gpu>.json`` (``--out PATH``: there instead); ``pytest
benchmarks/bench_time_resample.py --benchmark-only`` runs the pytest-benchmark version. Needs CUDA
(skips cleanly without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch

from cdt_fast import functional as CF

RESULTS = Path(__file__).resolve().parent / "results"
CUDA = torch.cuda.is_available()
DTYPE = torch.bfloat16

# (where, channels, input frames, height, width)
DOWN_CASES = [
    ("unet.downs.2", 192, 8, 180, 180),
    ("unet.downs.3", 256, 4, 90, 90),
    ("context.enc.2", 384, 8, 180, 180),
    ("context.enc.3", 512, 4, 90, 90),
]
UP_CASES = [
    ("unet.ups.1", 256, 2, 180, 180),
    ("unet.ups.2", 192, 4, 360, 360),
    ("context.dec.0", 384, 2, 180, 180),
    ("context.dec.1", 256, 4, 360, 360),
]


def _video(c, t, h, w):
    return torch.randn(1, c, t, h, w, device="cuda", dtype=DTYPE).to(
        memory_format=torch.channels_last_3d
    )


def down_impls(c, t, h, w) -> Tuple[Dict[str, Callable], int, int]:
    from cdt_fast.kernels.time_resample import time_downsample

    x, past = _video(c, t, h, w), _video(c, 1, h, w)
    weight = torch.randn(c, c, 3, device="cuda", dtype=DTYPE) / (3 * c) ** 0.5
    bias = torch.randn(c, device="cuda", dtype=DTYPE)
    out = time_downsample(x, weight, bias, past=past)
    ref = torch.compile(CF.time_downsample, dynamic=False)
    impls = {
        "triton": lambda: time_downsample(x, weight, bias, past=past, out=out),
        "eager": lambda: CF.time_downsample(x, weight, bias, past=past),
        "torch.compile": lambda: ref(x, weight, bias, past=past),
    }
    nbytes = (x.numel() + past.numel() + out.numel() + weight.numel()) * x.element_size()
    return impls, nbytes, 2 * out.numel() * 3 * c


def up_impls(c, t, h, w) -> Tuple[Dict[str, Callable], int, int]:
    from cdt_fast.kernels.time_resample import time_upsample

    x = _video(c, t, h, w)
    weight = torch.randn(2 * c, c, 1, device="cuda", dtype=DTYPE) / c**0.5
    bias = torch.randn(2 * c, device="cuda", dtype=DTYPE)
    out = time_upsample(x, weight, bias, drop_first=False)
    ref = torch.compile(CF.time_upsample, dynamic=False)
    impls = {
        "triton": lambda: time_upsample(x, weight, bias, drop_first=False, out=out),
        "eager": lambda: CF.time_upsample(x, weight, bias, drop_first=False),
        "torch.compile": lambda: ref(x, weight, bias, drop_first=False),
    }
    nbytes = (x.numel() + out.numel() + weight.numel()) * x.element_size()
    return impls, nbytes, 2 * out.numel() * c


def run_summary() -> List[dict]:
    if not CUDA:
        return [{"skipped": "needs CUDA"}]
    from cdt_fast.kernels._bench_support import measure

    rows = []
    for op, cases, setup in (
        ("time_downsample", DOWN_CASES, down_impls),
        ("time_upsample", UP_CASES, up_impls),
    ):
        for where, c, t, h, w in cases:
            impls, nbytes, flops = setup(c, t, h, w)
            rows += measure(op, f"{where} C={c} T={t} {h}x{w}", impls, nbytes, flops)
    return rows


def main(argv=None) -> int:
    from cdt_fast.kernels._bench_support import bench_main

    return bench_main("time_resample", __doc__.splitlines()[0], run_summary, RESULTS, argv)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "eager", "torch.compile"])
@pytest.mark.parametrize("op", ["down", "up"])
def test_time_resample(benchmark, op, impl):
    setup, case = (down_impls, DOWN_CASES[0]) if op == "down" else (up_impls, UP_CASES[1])
    fn = setup(*case[1:])[0][impl]
    from cdt_fast.kernels._bench_support import run_benchmark

    run_benchmark(benchmark, fn)


if __name__ == "__main__":
    raise SystemExit(main())
