"""Microbenchmark of the conv_transpose_up2x family (``conv_transpose_up2x``: CDT-small's 2x
spatial upsample, a ConvTranspose3d (1, 5, 5) with stride (1, 2, 2)), every backend of the engine
that runs it here.

Only torch implements it (cuDNN on a GPU): the rows show what that op costs in a decode beside the
other families, and, on CUDA, what ``torch.compile`` of it gives. CUDA: CDT-small's transposed
convs of a 17x720x720 decode; CPU: one small activation (``--size``). Rows: ms, GB/s of the bytes
the op must move (input and weight read once, output written once) and TFLOP/s.

    python benchmarks/bench_conv_transpose_up2x.py [--dtype bf16] [--out PATH]
    pytest benchmarks/bench_conv_transpose_up2x.py --benchmark-only   # pytest-benchmark, CUDA
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

OP = "conv_transpose_up2x"
KERNEL = (1, 5, 5)
# (name, channels in, channels out, frames, side) per --size on a CPU
CPU_SHAPES = {"small": [("cpu", 32, 32, 2, 16)], "cdt": [("cdt", 64, 64, 4, 64)]}


def cuda_shapes() -> List[tuple]:
    """CDT-small's transposed convs of one 17-frame decode at 720x720, one row per shape."""
    from benchmarks.cdt_shapes import decode_shapes

    shapes = sorted(
        {(s.cin, s.cout, s.frames, s.h) for s in decode_shapes("small", 720, 720) if s.transposed}
    )
    return [("small-720", cin, cout, frames, side) for cin, cout, frames, side in shapes]


def make_case(
    cin: int, cout: int, frames: int, side: int, device, dtype, with_compile: bool
) -> Tuple[Dict[str, Callable], int, int]:
    """(impl -> call, bytes, FLOPs) of one upsample of a ``frames`` x ``side`` x ``side`` chunk."""
    x = torch.randn(1, cin, frames, side, side, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last_3d
    )
    weight = torch.randn(cin, cout, *KERNEL, device=device, dtype=dtype) * 0.05
    bias = torch.zeros(cout, device=device, dtype=dtype)
    out_numel = cout * frames * (2 * side) ** 2
    nbytes = (x.numel() + weight.numel() + out_numel) * x.element_size()
    flops = 2 * out_numel * cin * KERNEL[1] * KERNEL[2] // 4  # a quarter of the taps hit per output
    impls = microbench.implementations(OP, device, with_compile)
    return microbench.bind(impls, x, weight, bias), nbytes, flops


def cases(shapes, device, dtype, with_compile: bool) -> Iterator[microbench.Case]:
    for name, cin, cout, frames, side in shapes:
        impls, nbytes, flops = make_case(cin, cout, frames, side, device, dtype, with_compile)
        label = f"{name} {cin}->{cout} {frames}f {side}x{side}"
        yield microbench.Case(OP, label, impls, nbytes, flops)


def _shapes(device, size: str = "small") -> List[tuple]:
    return cuda_shapes() if torch.device(device).type == "cuda" else CPU_SHAPES[size]


def _make_cases(args) -> Iterator[microbench.Case]:
    return cases(_shapes(args.device, args.size), args.device, args.dtype, args.compile)


def run_summary() -> List[dict]:
    return microbench.summary_rows(_make_cases)


def main(argv=None) -> int:
    return microbench.bench_main(OP, __doc__.splitlines()[0], _make_cases, argv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "torch.compile"])
def test_conv_transpose_up2x(benchmark, impl):
    _, cin, cout, frames, side = cuda_shapes()[0]
    impls, nbytes, _ = make_case(cin, cout, frames, side, "cuda", torch.bfloat16, True)
    microbench.run_benchmark(benchmark, impls[impl], nbytes)


if __name__ == "__main__":
    sys.exit(main())
