"""Benchmark: the fused norm block (kernels/channel_norm.py) against the eager reference
(:func:`cdt_fast.functional.channel_norm`) and ``torch.compile`` of the same function, at the
CDT-base U-Net's 720x720 decode shapes (a chunk of 8 video frames), in GB/s and % of the device's
memory bandwidth.

    python benchmarks/bench_channel_norm.py [--dtype bf16] [--out benchmarks/results/x.json]
    python -m pytest benchmarks/bench_channel_norm.py            # pytest-benchmark, CUDA only
    python benchmarks/bench_channel_norm.py --smoke              # CPU: checks the harness only

The harness half of this file (peak bandwidths, timing, the table) is shared with
``bench_linear_attention.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import pytest
import torch

from cdt_fast import functional as CF

# ---- harness ----------------------------------------------------------------------------------

# Peak DRAM bandwidth in bytes/s by a substring of torch.cuda.get_device_name() (first match wins,
# so specific names precede general ones). Vendor datasheet figures.
PEAK_BANDWIDTH = {
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "H100": 3.35e12,  # SXM5 ("NVIDIA H100 80GB HBM3")
    "H200": 4.8e12,
    "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12,
    "A100": 1.555e12,  # 40GB SXM4 and PCIe
}

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# CDT-base U-Net levels while decoding a 720x720 chunk of 8 video frames (2 latent frames):
# (name, channels, frames, side). Levels 1-2 halve space, levels 2-3 halve time (upstream's
# space_down (0,1,1,1) + one extra U-Net level, time_down (0,0,1,1)).
CDT_BASE_720 = [
    ("L0", 64, 8, 720),
    ("L1", 128, 8, 720),
    ("L2", 192, 8, 360),
    ("L3", 256, 4, 180),
    ("L4", 320, 2, 90),
    ("L5", 384, 2, 45),
]


def peak_bandwidth(device_name: str) -> Optional[float]:
    for key, value in PEAK_BANDWIDTH.items():
        if key in device_name:
            return value
    return None


@dataclass
class Measurement:
    case: str
    impl: str
    ms: float
    gbytes: float

    @property
    def gb_per_s(self) -> float:
        return self.gbytes / (self.ms * 1e-3)


def time_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` (CUDA events, L2 flushed between runs)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False, fullgraph=True)


def report(rows: Sequence[Measurement], device_name: str, file=sys.stdout) -> List[Dict]:
    """Prints the table; returns its rows as dicts (with % of peak where the device is known)."""
    peak = peak_bandwidth(device_name)
    print(
        f"device: {device_name}; peak bandwidth: "
        f"{'%.2f TB/s' % (peak / 1e12) if peak else 'unknown (add it to PEAK_BANDWIDTH)'}",
        file=file,
    )
    print(f"{'case':<34} {'impl':<16} {'ms':>9} {'GB/s':>9} {'% peak':>7}", file=file)
    out = []
    for r in rows:
        pct = 100 * r.gb_per_s / peak if peak else None
        print(
            f"{r.case:<34} {r.impl:<16} {r.ms:>9.3f} {r.gb_per_s / 1e9:>9.1f} "
            f"{'%.1f' % pct if pct is not None else '-':>7}",
            file=file,
        )
        out.append(dict(asdict(r), gb_per_s=r.gb_per_s / 1e9, pct_peak=pct))
    return out


def write_json(path: str, device_name: str, dtype: str, rows: List[Dict], op: str) -> None:
    from cdt_fast.checkpoint import atomic_write

    payload = dict(op=op, device=device_name, dtype=dtype, torch=torch.__version__, rows=rows)
    atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(payload, indent=2) + "\n"))


def main_arguments(doc: str, argv=None):
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--levels", nargs="*", help="level names to run (default: all)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--out",
        "--json",
        dest="out",
        metavar="PATH",
        help="also write the table here as JSON, atomically (--json: the old name)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU: tiny shapes, eager reference only (checks the harness)",
    )
    return parser.parse_args(argv)


def cpu_timer(fn) -> float:
    """Wall milliseconds of one call: only for the CPU smoke run, which claims no speed."""
    import time

    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def run_main(doc: str, argv, measure: Callable, op: str) -> int:
    """The command line of a benchmark module whose ``measure(levels, dtype, device,
    with_compile, timer)`` returns :class:`Measurement` rows."""
    args = main_arguments(doc, argv)
    if args.smoke:
        rows = measure(
            [("tiny", 12, 2, 9)], torch.float32, "cpu", with_compile=False, timer=cpu_timer
        )
        report(rows, "cpu (smoke: harness check, not a measurement)")
        return 0
    if not torch.cuda.is_available():
        print(f"{op}: CUDA is not available; nothing measured (--smoke checks the harness)")
        return 0
    levels = [lv for lv in CDT_BASE_720 if not args.levels or lv[0] in args.levels]
    name = torch.cuda.get_device_name()
    rows = report(measure(levels, DTYPES[args.dtype], with_compile=not args.no_compile), name)
    if args.out:
        write_json(args.out, name, args.dtype, rows, op)
    return 0


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need CUDA")


def run_benchmark(benchmark, fn: Callable[[], object], gbytes: float) -> None:
    """pytest-benchmark one CUDA call (after a first, untimed one: compile, autotune) and record
    its bandwidth."""
    fn()

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["GB/s"] = gbytes / seconds / 1e9
    peak = peak_bandwidth(torch.cuda.get_device_name())
    if peak:
        benchmark.extra_info["% peak bandwidth"] = 100 * gbytes / seconds / peak


# ---- channel norm -----------------------------------------------------------------------------

VARIANTS = {  # what each CDT call site fuses: name -> (relu, time bias, residual)
    "norm": (False, False, False),  # PreNorm / final norm
    "block+tbias": (True, True, False),  # Block 1 of a ResnetBlock (+ time bias)
    "block+residual": (True, False, True),  # Block 2 of a ResnetBlock (+ shortcut)
}


def make_inputs(
    c: int, t: int, side: int, dtype: torch.dtype, device: str, variant: str, batch: int = 1
):
    relu, with_tb, with_res = VARIANTS[variant]
    shape = (batch, c, t, side, side)

    def act():
        return torch.randn(shape, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last_3d
        )

    x = act()
    kwargs = dict(relu=relu)
    if with_tb:
        kwargs["time_bias"] = torch.randn(batch, c, device=device, dtype=dtype)
    if with_res:
        kwargs["residual"] = act()
    g = torch.randn(c, device=device, dtype=dtype)
    b = torch.randn(c, device=device, dtype=dtype)
    # Compulsory traffic: read x (and the residual), write y.
    gbytes = x.numel() * x.element_size() * (3 if with_res else 2)
    return x, g, b, kwargs, gbytes


def implementations(device: str, with_compile: bool) -> Dict[str, Callable]:
    impls = {"eager": CF.channel_norm}
    if device == "cuda":
        from cdt_fast.kernels.channel_norm import channel_norm

        impls["triton"] = channel_norm
        if with_compile:
            impls["torch.compile"] = compiled(CF.channel_norm)
    return impls


def measure(
    levels=CDT_BASE_720, dtype=torch.bfloat16, device="cuda", with_compile=True, timer=time_ms
) -> List[Measurement]:
    rows = []
    impls = implementations(device, with_compile)
    for name, c, t, side in levels:
        for variant in VARIANTS:
            x, g, b, kwargs, gbytes = make_inputs(c, t, side, dtype, device, variant)
            case = f"{name} C={c} {t}x{side}x{side} {variant}"
            for impl, fn in impls.items():
                rows.append(
                    Measurement(case, impl, timer(functools.partial(fn, x, g, b, **kwargs)), gbytes)
                )
            del x, kwargs
    return rows


def main(argv=None) -> int:
    return run_main(__doc__, argv, measure, "channel_norm")


# ---- pytest-benchmark -------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("impl", ["triton", "eager", "torch.compile"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("level", CDT_BASE_720, ids=[lv[0] for lv in CDT_BASE_720])
def test_channel_norm_720p(benchmark, level, variant, impl):
    _, c, t, side = level
    x, g, b, kwargs, gbytes = make_inputs(c, t, side, torch.bfloat16, "cuda", variant)
    fn = implementations("cuda", with_compile=impl == "torch.compile")[impl]
    run_benchmark(benchmark, lambda: fn(x, g, b, **kwargs), gbytes)


def test_harness_smoke_cpu():
    """Runs the table code on CPU with a tiny shape (no timing claim)."""
    rows = measure(
        [("tiny", 12, 1, 5)],
        torch.float32,
        "cpu",
        with_compile=False,
        timer=lambda fn: (fn(), 1.0)[1],
    )
    assert [r.impl for r in rows[:1]] == ["eager"] and rows[0].gbytes == 12 * 25 * 4 * 2
    import io

    table = report(rows, "NVIDIA H100 80GB HBM3", file=io.StringIO())
    assert table[0]["pct_peak"] == pytest.approx(100 * rows[0].gb_per_s / 3.35e12)


if __name__ == "__main__":
    sys.exit(main())
