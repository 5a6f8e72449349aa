"""Microbenchmark: the single-step denoise pieces -- the fused last stage (LayerNorm + causal
(3,7,7) conv to RGB + DDIM update + uint8 frames) and the in-kernel initial noise -- vs the eager
reference and torch.compile of it.

Shapes: CDT-base decoding 720x720, a later chunk of 8 video frames (2 cached frames), bf16 model,
fp32 sample. ``python benchmarks/bench_denoise.py`` prints a markdown table and writes
``benchmarks/results/denoise-<gpu>.json`` (``--out PATH``: there instead); ``pytest
benchmarks/bench_denoise.py --benchmark-only`` runs the pytest-benchmark version. Needs CUDA (skips
cleanly without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch

RESULTS = Path(__file__).resolve().parent / "results"
CUDA = torch.cuda.is_available()
DTYPE = torch.bfloat16
UNET_DIM, FRAMES, HEIGHT, WIDTH = 64, 8, 720, 720


def final_stage_impls(
    c=UNET_DIM, t=FRAMES, h=HEIGHT, w=WIDTH
) -> Tuple[Dict[str, Callable], int, int]:
    from cdt_fast.kernels.denoise import denoise_final, denoise_final_reference
    from cdt_fast.reference.diffusion import DDIMSchedule

    dev = "cuda"
    hidden = torch.randn(1, c, t, h, w, device=dev, dtype=DTYPE).to(
        memory_format=torch.channels_last_3d
    )
    past = torch.randn(1, c, 2, h, w, device=dev, dtype=DTYPE).to(
        memory_format=torch.channels_last_3d
    )
    g, b = (
        torch.ones(1, c, 1, 1, 1, device=dev, dtype=DTYPE),
        torch.zeros(1, c, 1, 1, 1, device=dev, dtype=DTYPE),
    )
    weight = torch.randn(3, c, 3, 7, 7, device=dev, dtype=DTYPE) / (c * 147) ** 0.5
    bias = torch.zeros(3, device=dev, dtype=DTYPE)
    x_t = 0.8 * torch.randn(1, 3, t, h, w, device=dev)
    coef = DDIMSchedule.create(8192, 1).coefficients(0)
    kw = dict(past=past, uint8=True)
    ref = torch.compile(denoise_final_reference, dynamic=False)
    impls = {
        "triton": lambda: denoise_final(hidden, g, b, weight, bias, x_t, coef, **kw),
        "eager": lambda: denoise_final_reference(hidden, g, b, weight, bias, x_t, coef, **kw),
        "torch.compile": lambda: ref(hidden, g, b, weight, bias, x_t, coef, **kw),
    }
    pixels = t * h * w
    nbytes = (hidden.numel() + past.numel() + 2 * c * h * w) * 2 + pixels * 3 * (4 + 4 + 1)
    return impls, nbytes, 2 * 3 * c * 3 * 7 * 7 * pixels


def noise_impls(t=FRAMES, h=HEIGHT, w=WIDTH) -> Tuple[Dict[str, Callable], int]:
    from cdt_fast.kernels.denoise import initial_noise

    shape = (1, 3, t, h, w)
    out = torch.empty(shape, device="cuda")
    draw = lambda: 0.8 * torch.randn(shape, device="cuda")  # noqa: E731  (torch's own stream)
    impls = {
        "triton": lambda: initial_noise(shape, 1234, 16, out=out, device="cuda"),
        "eager": draw,
        "torch.compile": torch.compile(draw),
    }
    return impls, out.numel() * out.element_size()


def run_summary() -> List[dict]:
    if not CUDA:
        return [{"skipped": "needs CUDA"}]
    from cdt_fast.kernels._bench_support import measure

    impls, nbytes, flops = final_stage_impls()
    case = f"C={UNET_DIM} T={FRAMES} {HEIGHT}x{WIDTH} bf16, uint8 frames"
    rows = measure("denoise_final", case, impls, nbytes, flops)
    impls, nbytes = noise_impls()
    rows += measure("initial_noise", f"[1,3,{FRAMES},{HEIGHT},{WIDTH}] fp32", impls, nbytes)
    return rows


def main(argv=None) -> int:
    from cdt_fast.kernels._bench_support import bench_main

    return bench_main("denoise", __doc__.splitlines()[0], run_summary, RESULTS, argv)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "eager", "torch.compile"])
@pytest.mark.parametrize("op", ["denoise_final", "initial_noise"])
def test_denoise(benchmark, op, impl):
    fn = (final_stage_impls() if op == "denoise_final" else noise_impls())[0][impl]
    from cdt_fast.kernels._bench_support import run_benchmark

    run_benchmark(benchmark, fn)


if __name__ == "__main__":
    raise SystemExit(main())
