"""Microbenchmark of the causal_conv3d_history family (``causal_conv3d_history``: the frames a
causal conv keeps for the next chunk, the last ``history`` frames of ``[past | x]``), every backend
of the engine that runs it here.

Two chunk lengths per shape: a chunk of at least ``history`` frames (the history is the chunk's
tail) and a 1-frame chunk (the history spans the held past and the chunk). CUDA: the ``torch``
and ``cuda`` backends (Triton has no kernel for this op) at the CDT-base U-Net's 720x720 decode
shapes. CPU: ``torch`` and ``cpp`` on one activation (``--size``). Rows: ms and GB/s of the
bytes the op must move (read and write the history once).

    python benchmarks/bench_causal_conv3d_history.py [--dtype bf16] [--out PATH]
    pytest benchmarks/bench_causal_conv3d_history.py --benchmark-only   # pytest-benchmark, CUDA
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
from benchmarks.cdt_shapes import CDT_BASE_720  # noqa: E402

OP = "causal_conv3d_history"
HISTORY = 2  # a 3-frame causal conv's
# (name, channels, frames, side) per --size: small; CDT-small's first U-Net level at 256x256
CPU_LEVELS = {"small": [("cpu", 32, 2, 32)], "cdt": [("cdt", 64, 4, 128)]}


def make_case(
    c: int, frames: int, side: int, device, dtype: torch.dtype
) -> Tuple[Dict[str, Callable], int]:
    """(backend -> call, bytes) of one chunk of ``frames`` frames with a full history held."""

    def act(t):
        return torch.randn(1, c, t, side, side, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last_3d
        )

    x, past = act(frames), act(HISTORY)
    nbytes = 2 * past.numel() * past.element_size()  # read the kept frames once, write them once
    impls = microbench.backend_functions(OP, device)
    return microbench.bind(impls, x, past, HISTORY), nbytes


def cases(levels, device, dtype: torch.dtype) -> Iterator[microbench.Case]:
    for name, c, t, side in levels:
        for frames in sorted({t, 1}, reverse=True):
            impls, nbytes = make_case(c, frames, side, device, dtype)
            yield microbench.Case(OP, f"{name} C={c} {frames}f {side}x{side}", impls, nbytes)


def _make_cases(args) -> Iterator[microbench.Case]:
    levels = microbench.cdt_levels(args.device, CPU_LEVELS, args.size)
    return cases(levels, args.device, args.dtype)


def run_summary() -> List[dict]:
    return microbench.summary_rows(_make_cases)


def main(argv=None) -> int:
    return microbench.bench_main(OP, __doc__.splitlines()[0], _make_cases, argv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "cuda"])
@pytest.mark.parametrize("frames", [8, 1])
def test_causal_conv3d_history(benchmark, frames, impl):
    _, c, _, side = CDT_BASE_720[0]
    impls, nbytes = make_case(c, frames, side, "cuda", torch.bfloat16)
    if impl not in impls:
        pytest.skip(f"the {impl} backend does not run here")
    microbench.run_benchmark(benchmark, impls[impl], nbytes)


if __name__ == "__main__":
    sys.exit(main())
