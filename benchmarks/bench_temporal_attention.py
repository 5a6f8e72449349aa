"""Microbenchmark of the temporal_attention family (``temporal_attention``: causal softmax
attention along time): the Triton kernel, SDPA (and flash-attn / xformers when installed), the
eager reference and torch.compile of it.

Shapes: a latent video model on CDT-base latents of 720x720 video (90x90 latent pixels, one
sequence per pixel) and on a 180x180 feature level; 8 heads of 64, bf16; T = 5 (17 video frames)
and 16 frames, plus 128 frames for the flash loop. Needs CUDA (on a CPU only the eager
reference and SDPA would run, which says nothing about this op's kernels): without it, it says
so and measures nothing.

    python benchmarks/bench_temporal_attention.py [--out PATH]
    pytest benchmarks/bench_temporal_attention.py --benchmark-only     # pytest-benchmark, CUDA
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from benchmarks import microbench  # noqa: E402

OP = "temporal_attention"
# (where, sequences, heads, frames, head dim)
CASES = [
    ("latent 90x90", 8100, 8, 5, 64),
    ("latent 90x90", 8100, 8, 16, 64),
    ("features 180x180", 32400, 4, 16, 64),
    ("latent 90x90 long", 8100, 8, 128, 64),
]


def attention_impls(
    s, heads, t, d, dtype: torch.dtype = torch.bfloat16, with_compile: bool = True
) -> Tuple[Dict[str, Callable], int, int]:
    """(impl -> call, bytes: q, k, v read and the output written, causal FLOPs). Each backend's
    function is called directly (as the engine's table resolved it), so that no table is built
    inside the timed calls."""
    from cdt_fast.availability import backend_status
    from cdt_fast.engine.registry import resolve
    from cdt_fast.functional import temporal_attention as spec

    q, k, v = (torch.randn(s, heads, t, d, device="cuda", dtype=dtype) for _ in range(3))
    impls = {}
    for name in ("triton", "sdpa", "flash", "xformers"):
        fn, _ = resolve(name, "temporal_attention", q.device)
        if fn is not None and backend_status(name, q.device, dtype=q.dtype).available:
            impls[name] = lambda fn=fn: fn(q, k, v)
    impls["torch"] = lambda: spec(q, k, v)
    if with_compile:
        ref = torch.compile(spec, dynamic=False, fullgraph=True)  # a graph break is an error row
        impls["torch.compile"] = lambda: ref(q, k, v)
    nbytes = 4 * q.numel() * q.element_size()
    flops = 2 * 2 * s * heads * t * (t + 1) // 2 * d  # causal: QK^T and PV over the lower triangle
    return impls, nbytes, flops


def cases(dtype: torch.dtype, with_compile: bool) -> Iterator[microbench.Case]:
    for where, s, heads, t, d in CASES:
        impls, nbytes, flops = attention_impls(s, heads, t, d, dtype, with_compile)
        yield microbench.Case(OP, f"{where} S={s} h={heads} T={t} d={d}", impls, nbytes, flops)


def run_summary() -> List[dict]:
    if not torch.cuda.is_available():
        return [{"skipped": "needs CUDA"}]
    return microbench.run_cases(cases(torch.bfloat16, True), torch.device("cuda"))


def main(argv=None) -> int:
    def make_cases(args):
        return cases(args.dtype, args.compile)

    return microbench.bench_main(OP, __doc__.splitlines()[0], make_cases, argv, cpu=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "sdpa", "torch", "torch.compile"])
def test_temporal_attention(benchmark, impl):
    impls, nbytes, _ = attention_impls(*CASES[1][1:], with_compile=impl == "torch.compile")
    microbench.run_benchmark(benchmark, impls[impl], nbytes)


if __name__ == "__main__":
    sys.exit(main())
