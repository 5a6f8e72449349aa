"""Microbenchmark of the channel_norm family (``channel_norm``: LayerNorm over channels, fused with
what each CDT call site adds), every backend of the engine that runs it here, and
``torch.compile`` of the torch op, in GB/s and % of the device's memory bandwidth.

CUDA: the ``torch``, ``triton`` and ``cuda`` backends and ``torch.compile``, at the CDT-base
U-Net's 720x720 decode shapes (:data:`benchmarks.cdt_shapes.CDT_BASE_720`, a chunk of 8 video
frames). CPU: the ``torch`` and ``cpp`` backends on one activation (``--size``).

    python benchmarks/bench_channel_norm.py [--dtype bf16] [--levels L0 L3] [--out PATH]
    pytest benchmarks/bench_channel_norm.py --benchmark-only     # pytest-benchmark, CUDA only
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from benchmarks import microbench  # noqa: E402
from benchmarks.cdt_shapes import CDT_BASE_720  # noqa: E402

OP = "channel_norm"
# (name, channels, frames, side) per --size: seconds on 2 cores; CDT-small's first U-Net level
# at 256x256 (a 4-frame chunk)
CPU_LEVELS = {"small": [("cpu", 32, 2, 32)], "cdt": [("cdt", 64, 4, 128)]}
VARIANTS = {  # what each CDT call site fuses: name -> (relu, time bias, residual)
    "norm": (False, False, False),  # PreNorm / final norm
    "block+tbias": (True, True, False),  # Block 1 of a ResnetBlock (+ time bias)
    "block+residual": (True, False, True),  # Block 2 of a ResnetBlock (+ shortcut)
}


def make_inputs(
    c: int, t: int, side: int, dtype: torch.dtype, device, variant: str, batch: int = 1
) -> Tuple[tuple, dict, int]:
    """(positional args, keyword args, compulsory bytes: read x and the residual, write y)."""
    relu, with_tb, with_res = VARIANTS[variant]
    shape = (batch, c, t, side, side)

    def rand(*size):
        return torch.randn(*size, device=device, dtype=dtype)

    def act():
        return rand(*shape).contiguous(memory_format=torch.channels_last_3d)

    x = act()
    kwargs = dict(relu=relu)
    if with_tb:
        kwargs["time_bias"] = rand(batch, c)
    if with_res:
        kwargs["residual"] = act()
    nbytes = x.numel() * x.element_size() * (3 if with_res else 2)
    return (x, rand(c), rand(c)), kwargs, nbytes


def cases(
    levels: Sequence[tuple], dtype: torch.dtype, device, with_compile: bool
) -> Iterator[microbench.Case]:
    impls = microbench.implementations(OP, device, with_compile)
    for name, c, t, side in levels:
        for variant in VARIANTS:
            args, kwargs, nbytes = make_inputs(c, t, side, dtype, device, variant)
            label = f"{name} C={c} {t}x{side}x{side} {variant}"
            yield microbench.Case(OP, label, microbench.bind(impls, *args, **kwargs), nbytes)


def _make_cases(args) -> Iterator[microbench.Case]:
    levels = microbench.cdt_levels(args.device, CPU_LEVELS, args.size, args.levels)
    return cases(levels, args.dtype, args.device, args.compile)


def run_summary() -> List[dict]:
    return microbench.summary_rows(_make_cases, microbench.add_levels_argument)


def main(argv=None) -> int:
    doc = __doc__.splitlines()[0]
    return microbench.bench_main(
        OP, doc, _make_cases, argv, add_arguments=microbench.add_levels_argument
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "triton", "cuda", "torch.compile"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("level", CDT_BASE_720, ids=[lv[0] for lv in CDT_BASE_720])
def test_channel_norm_720p(benchmark, level, variant, impl):
    _, c, t, side = level
    args, kwargs, nbytes = make_inputs(c, t, side, torch.bfloat16, "cuda", variant)
    impls = microbench.implementations(OP, torch.device("cuda"), impl == "torch.compile")
    if impl not in impls:
        pytest.skip(f"the {impl} backend does not run here")
    microbench.run_benchmark(benchmark, lambda: impls[impl](*args, **kwargs), nbytes)


if __name__ == "__main__":
    sys.exit(main())
