"""Microbenchmark of the time_resample family (``time_downsample``, ``time_upsample``): every backend
of the engine that runs them here, and ``torch.compile`` of the torch ops.

CUDA: the ``torch``, ``triton`` and ``cuda`` backends and ``torch.compile`` at CDT-base's shapes
decoding 720x720 (a chunk of 2 latent frames = 8 video frames; encode chunks of 8 frames), bf16,
channels-last, a later chunk (cached past frame). CPU: the ``torch`` and ``cpp`` backends on one
activation (``--size``). Rows: ms, GB/s of the bytes each op must move, % of the device's peak
bandwidth, TFLOP/s.

    python benchmarks/bench_time_resample.py [--dtype bf16] [--out PATH]
    pytest benchmarks/bench_time_resample.py --benchmark-only     # pytest-benchmark, CUDA only
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
# per --size: small; CDT-small's first U-Net level at 256x256
CPU_CASES = {"small": [("cpu", 32, 2, 32, 32)], "cdt": [("cdt", 64, 4, 128, 128)]}


def _video(c, t, h, w, device, dtype):
    return torch.randn(1, c, t, h, w, device=device, dtype=dtype).to(
        memory_format=torch.channels_last_3d
    )


def down_case(c, t, h, w, device, dtype, with_compile) -> Tuple[Dict[str, Callable], int, int]:
    """(impl -> call, bytes, FLOPs) of a later chunk's time_downsample."""
    x, past = _video(c, t, h, w, device, dtype), _video(c, 1, h, w, device, dtype)
    weight = torch.randn(c, c, 3, device=device, dtype=dtype) / (3 * c) ** 0.5
    bias = torch.randn(c, device=device, dtype=dtype)
    impls = microbench.implementations("time_downsample", device, with_compile)
    out_numel = x.numel() // 2
    nbytes = (x.numel() + past.numel() + out_numel + weight.numel()) * x.element_size()
    return microbench.bind(impls, x, weight, bias, past=past), nbytes, 2 * out_numel * 3 * c


def up_case(c, t, h, w, device, dtype, with_compile) -> Tuple[Dict[str, Callable], int, int]:
    """(impl -> call, bytes, FLOPs) of a later chunk's time_upsample."""
    x = _video(c, t, h, w, device, dtype)
    weight = torch.randn(2 * c, c, 1, device=device, dtype=dtype) / c**0.5
    bias = torch.randn(2 * c, device=device, dtype=dtype)
    impls = microbench.implementations("time_upsample", device, with_compile)
    out_numel = 2 * x.numel()
    nbytes = (x.numel() + out_numel + weight.numel()) * x.element_size()
    return microbench.bind(impls, x, weight, bias, drop_first=False), nbytes, 2 * out_numel * c


def cases(
    device, dtype: torch.dtype, with_compile: bool, size: str = "small"
) -> Iterator[microbench.Case]:
    cuda = torch.device(device).type == "cuda"
    for op, shapes, make in (
        ("time_downsample", DOWN_CASES if cuda else CPU_CASES[size], down_case),
        ("time_upsample", UP_CASES if cuda else CPU_CASES[size], up_case),
    ):
        for where, c, t, h, w in shapes:
            impls, nbytes, flops = make(c, t, h, w, device, dtype, with_compile)
            yield microbench.Case(op, f"{where} C={c} T={t} {h}x{w}", impls, nbytes, flops)


def _make_cases(args) -> Iterator[microbench.Case]:
    return cases(args.device, args.dtype, args.compile, args.size)


def run_summary() -> List[dict]:
    return microbench.summary_rows(_make_cases)


def main(argv=None) -> int:
    return microbench.bench_main("time_resample", __doc__.splitlines()[0], _make_cases, argv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "triton", "cuda", "torch.compile"])
@pytest.mark.parametrize("op", ["down", "up"])
def test_time_resample(benchmark, op, impl):
    make, case = (down_case, DOWN_CASES[0]) if op == "down" else (up_case, UP_CASES[1])
    impls, nbytes, _ = make(*case[1:], "cuda", torch.bfloat16, impl == "torch.compile")
    if impl not in impls:
        pytest.skip(f"the {impl} backend does not run here")
    microbench.run_benchmark(benchmark, impls[impl], nbytes)


if __name__ == "__main__":
    sys.exit(main())
