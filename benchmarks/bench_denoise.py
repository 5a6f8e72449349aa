"""Microbenchmark of the denoise family (``ddim_update``: the DDIM step on an x-prediction, in
fp32; ``to_uint8_frames``: video in [-1, 1] to uint8 frames), every backend of the engine that
runs them here, and ``torch.compile`` of the torch ops.

Shapes: a decoded video of 17 frames at 256x256 and at 720x720 on CUDA (the ``torch``,
``triton`` and ``cuda`` backends and ``torch.compile``); on CPU (``torch`` and ``cpp``) 5 frames
at 64x64, or with ``--size cdt`` 17 at 256x256. ``x_t`` is fp32 as the sampler holds it, the
x-prediction in the benchmark's dtype. Rows: ms, GB/s of the bytes each op must move (inputs read once, output written once).

    python benchmarks/bench_denoise.py [--dtype bf16] [--out PATH]
    pytest benchmarks/bench_denoise.py --benchmark-only     # pytest-benchmark, CUDA only
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

CUDA_VIDEOS = [(17, 256, 256), (17, 720, 720)]  # (frames, height, width), batch 1, RGB
CPU_VIDEOS = {"small": [(5, 64, 64)], "cdt": [(17, 256, 256)]}  # per --size
# A mid-schedule DDIM step's (a, b, c, d) (cdt_fast.functional.ddim_update's coefficients).
COEFFICIENTS = (1.0000305, 0.0078125, 0.9999, 0.0141)


def make_cases(
    video: Tuple[int, int, int], device, dtype: torch.dtype, with_compile: bool
) -> Dict[str, Tuple[Dict[str, Callable], int]]:
    """op -> (impl -> call, bytes) on one decoded video."""
    t, h, w = video

    def rgb(dt):
        return torch.randn(1, 3, t, h, w, device=device, dtype=dt).contiguous(
            memory_format=torch.channels_last_3d
        )

    x_t, x0 = rgb(torch.float32), rgb(dtype)
    coefficients = torch.tensor(COEFFICIENTS, device=device)  # on the device, as the engine's
    numel = x_t.numel()
    ddim = microbench.implementations("ddim_update", device, with_compile)
    frames = microbench.implementations("to_uint8_frames", device, with_compile)
    return {
        "ddim_update": (
            microbench.bind(ddim, x_t, x0, coefficients, clamp=True),
            numel * (x_t.element_size() + x0.element_size() + 4),  # x_t, x0 in; fp32 out
        ),
        "to_uint8_frames": (microbench.bind(frames, x_t), numel * (x_t.element_size() + 1)),
    }


def cases(
    device, dtype: torch.dtype, with_compile: bool, size: str = "small"
) -> Iterator[microbench.Case]:
    cuda = torch.device(device).type == "cuda"
    for video in CUDA_VIDEOS if cuda else CPU_VIDEOS[size]:
        label = "{}x{}x{}".format(*video)
        for op, (impls, nbytes) in make_cases(video, device, dtype, with_compile).items():
            yield microbench.Case(op, label, impls, nbytes)


def _make_cases(args) -> Iterator[microbench.Case]:
    return cases(args.device, args.dtype, args.compile, args.size)


def run_summary() -> List[dict]:
    return microbench.summary_rows(_make_cases)


def main(argv=None) -> int:
    return microbench.bench_main("denoise", __doc__.splitlines()[0], _make_cases, argv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "triton", "cuda", "torch.compile"])
@pytest.mark.parametrize("op", ["ddim_update", "to_uint8_frames"])
def test_denoise(benchmark, op, impl):
    impls, nbytes = make_cases(CUDA_VIDEOS[1], "cuda", torch.bfloat16, impl == "torch.compile")[op]
    if impl not in impls:
        pytest.skip(f"the {impl} backend does not run here")
    microbench.run_benchmark(benchmark, impls[impl], nbytes)


if __name__ == "__main__":
    sys.exit(main())
