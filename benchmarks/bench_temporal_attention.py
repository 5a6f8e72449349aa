"""Microbenchmark: causal temporal softmax attention -- Triton kernel, SDPA (and flash-attn /
xformers when installed) vs the eager reference and torch.compile of it.

Shapes: a latent video model on CDT-base latents of 720x720 video (90x90 latent pixels, one
sequence per pixel) and on a 180x180 feature level; 8 heads of 64, bf16; T = 5 (17 video frames)
and 16 frames, plus 128 frames for the flash loop. ``python benchmarks/bench_temporal_attention.py``
prints a markdown table and writes ``benchmarks/results/temporal_attention-<gpu>.json``
(``--out PATH``: there instead); ``pytest benchmarks/bench_temporal_attention.py --benchmark-only``
runs the pytest-benchmark version. Needs CUDA (skips cleanly without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch

RESULTS = Path(__file__).resolve().parent / "results"
CUDA = torch.cuda.is_available()
DTYPE = torch.bfloat16

# (where, sequences, heads, frames, head dim)
CASES = [
    ("latent 90x90", 8100, 8, 5, 64),
    ("latent 90x90", 8100, 8, 16, 64),
    ("features 180x180", 32400, 4, 16, 64),
    ("latent 90x90 long", 8100, 8, 128, 64),
]


def attention_impls(s, heads, t, d) -> Tuple[Dict[str, Callable], int, int]:
    from cdt_fast.availability import backend_status
    from cdt_fast.engine.registry import resolve
    from cdt_fast.functional import temporal_attention as spec

    q, k, v = (torch.randn(s, heads, t, d, device="cuda", dtype=DTYPE) for _ in range(3))
    ref = torch.compile(spec, dynamic=False)
    impls = {}
    for name in ("triton", "sdpa", "flash", "xformers"):
        fn, _ = resolve(name, "temporal_attention", q.device)
        if fn is not None and backend_status(name, q.device, dtype=q.dtype).available:
            impls[name] = lambda fn=fn: fn(q, k, v)
    impls["eager"] = lambda: spec(q, k, v)
    impls["torch.compile"] = lambda: ref(q, k, v)
    nbytes = 4 * q.numel() * q.element_size()
    flops = 2 * 2 * s * heads * t * (t + 1) // 2 * d  # causal: QK^T and PV over the lower triangle
    return impls, nbytes, flops


def run_summary() -> List[dict]:
    if not CUDA:
        return [{"skipped": "needs CUDA"}]
    from cdt_fast.kernels._bench_support import measure

    rows = []
    for where, s, heads, t, d in CASES:
        impls, nbytes, flops = attention_impls(s, heads, t, d)
        rows += measure(
            "temporal_attention", f"{where} S={s} h={heads} T={t} d={d}", impls, nbytes, flops
        )
    return rows


def main(argv=None) -> int:
    from cdt_fast.kernels._bench_support import bench_main

    return bench_main("temporal_attention", __doc__.splitlines()[0], run_summary, RESULTS, argv)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "sdpa", "eager", "torch.compile"])
def test_temporal_attention(benchmark, impl):
    fn = attention_impls(*CASES[1][1:])[0][impl]
    from cdt_fast.kernels._bench_support import run_benchmark

    run_benchmark(benchmark, fn)


if __name__ == "__main__":
    raise SystemExit(main())
