"""Microbenchmark of the causal_conv3d family: ``causal_conv3d`` (+ its cache) and the Block op
``causal_conv3d_norm``, on the conv shapes of a real CDT decode (:mod:`benchmarks.cdt_shapes`).

``causal_conv3d``: three arrangements of the same conv, per chunk, steady state (the cache
already full):

- ``upstream``: ``cat([cache, x])`` + ``F.pad`` + NCDHW cuDNN conv + ``clone`` of the new cache
  (the torch backend, :func:`cdt_fast.functional.causal_conv3d` + ``causal_conv3d_history``, on
  NCDHW tensors); CDT-small's transposed upsampling conv (``conv_transpose_up2x``, torch only)
  rides along as its own shapes;
- ``cudnn_cl``: the torch backend on ``channels_last_3d`` tensors, ``past`` a view of the held
  history and the history refreshed by copying the chunk's last frames into a second buffer
  (what the engine's stream state does);
- ``triton``: the Triton backend's implicit-GEMM kernel reading the same channels-last chunk and
  history.

Reported: ms, TFLOP/s, % of the device's dense bf16 peak (:mod:`benchmarks.hardware`), and bytes
moved (an analytic count of each arrangement's reads and writes, not a profiler reading).

``causal_conv3d_norm`` (a CDT Block: causal conv -> channel LayerNorm -> ReLU -> + residual; the
engine runs every Block as this one op): whether fusing the norm into the conv's epilogue pays,
and against what, on the Block convs (3x3x3 and 3x7x7) of CDT-base and CDT-small decodes at
256x256 and 720x720, all on ``channels_last_3d`` activations:

- ``cudnn+eager``: the torch backend (cuDNN conv, eager norm);
- ``cudnn+triton_norm``: the cuDNN conv, then the Triton norm block in place on its output;
- ``triton+triton_norm``: the Triton conv, then the Triton norm block;
- ``triton_fused``: the Triton backend's ``causal_conv3d_norm`` (the norm in the conv's epilogue
  up to 128 channels);
- ``torch.compile``: ``torch.compile`` of the functional composition.

Block rows: ms, TFLOP/s of the conv, GB/s of the minimal traffic (the chunk and its cached frames
once, the weights, the residual, the output).

    python benchmarks/bench_causal_conv3d.py --out results.json     # CUDA: both tables
    python benchmarks/bench_causal_conv3d.py                        # CPU: a tiny conv smoke run
    pytest benchmarks/bench_causal_conv3d.py --benchmark-only       # pytest-benchmark (CUDA)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import hardware, microbench  # noqa: E402
from benchmarks.cdt_shapes import ConvShape, block_shapes, decode_shapes  # noqa: E402
from benchmarks.dtypes import dtype_argument, dtype_name  # noqa: E402
from benchmarks.environment import cpu_model, package_version  # noqa: E402
from benchmarks.timing import kernel_ms  # noqa: E402
from cdt_fast import functional as CF  # noqa: E402

PATHS = ("upstream", "cudnn_cl", "triton")
BLOCK_IMPLS = ("cudnn+eager", "cudnn+triton_norm", "triton+triton_norm", "triton_fused")
BLOCK_CASES = (("base", 256), ("small", 256), ("base", 720), ("small", 720))
SHAPES_PER_CASE = 6  # the most expensive Block convs of each decode


def bf16_peak(device_name: str) -> Optional[float]:
    """The device's dense bf16 tensor-core peak, TFLOP/s (None when not in the table)."""
    _, peaks = hardware.peak_tflops(device_name)
    return peaks["bf16"] if peaks else None


# -- causal_conv3d: the three arrangements ------------------------------------------------------


class ConvBench:
    """Inputs, weights and per-path callables for one shape (steady state: the cache is full).

    Every path computes the same conv as ``upstream`` on every call (the refreshed history goes to
    a second buffer, as in the engine, so the inputs never change)."""

    def __init__(self, shape: ConvShape, dtype: torch.dtype, device: str):
        self.shape = s = shape
        g = torch.Generator(device="cpu").manual_seed(0)

        def rnd(*size):
            return torch.randn(*size, generator=g).to(device=device, dtype=dtype)

        cl = torch.channels_last_3d
        if s.transposed:
            self.weight = rnd(s.cin, s.cout, *s.kernel) * 0.05
            self.bias = rnd(s.cout)
            x_nc = rnd(s.batch, s.cin, s.frames, s.h, s.w)
            x_cl = x_nc.contiguous(memory_format=cl)
            self.runs = {
                "upstream": lambda: CF.conv_transpose_up2x(x_nc, self.weight, self.bias),
                "cudnn_cl": lambda: CF.conv_transpose_up2x(x_cl, self.weight, self.bias),
            }
            return
        self.weight = (
            rnd(s.cout, s.cin, *s.kernel) * (1.0 / (s.cin * s.kernel[1] * s.kernel[2])) ** 0.5
        )
        self.bias = rnd(s.cout)
        x_nc = rnd(s.batch, s.cin, s.frames, s.h, s.w)
        past_nc = rnd(s.batch, s.cin, s.past, s.h, s.w) if s.past else None
        self.kwargs = dict(
            history=s.history,
            space_padding=s.space_padding,
            stride=s.stride,
            pad_mode=s.pad_mode,
            upsample2x=s.upsample2x,
        )

        def upstream():
            y = CF.causal_conv3d(x_nc, self.weight, self.bias, past=past_nc, **self.kwargs)
            if s.history:
                CF.causal_conv3d_history(x_nc, past_nc, s.history)
            return y

        self.runs = {"upstream": upstream}
        self._channels_last_runs(x_nc.contiguous(memory_format=cl), past_nc)

    def _channels_last_runs(self, x_cl: torch.Tensor, past_nc: Optional[torch.Tensor]) -> None:
        s, kw = self.shape, self.kwargs
        weight_cl = self.weight.contiguous(memory_format=torch.channels_last_3d)
        past_cl = past_nc.contiguous(memory_format=torch.channels_last_3d) if s.past else None
        # The engine's steady state: `past` is the held history, and the next chunk's history
        # (the last frames of [past | x]) is copied into a second buffer of the same shape.
        nxt = torch.empty_like(past_cl) if s.past else None
        keep = min(s.past, s.frames) if s.past else 0

        def refresh():
            if nxt is None:
                return
            if keep < s.past:
                nxt[:, :, : s.past - keep].copy_(past_cl[:, :, keep:])
            nxt[:, :, s.past - keep :].copy_(x_cl[:, :, s.frames - keep :])

        def cudnn_cl():
            y = CF.causal_conv3d(x_cl, weight_cl, self.bias, past=past_cl, **kw)
            refresh()
            return y

        self.runs["cudnn_cl"] = cudnn_cl
        try:
            from cdt_fast.kernels.causal_conv3d import causal_conv3d as triton_conv
        except ImportError:  # no triton here: the cuDNN arrangements still compare
            return

        def triton():
            y = triton_conv(x_cl, weight_cl, self.bias, past=past_cl, **kw)
            refresh()
            return y

        self.runs["triton"] = triton


def _path_result(shape: ConvShape, path: str, fn: Callable, device: str, peak, itemsize) -> dict:
    try:
        ms = kernel_ms(fn, device, repeats=3)
    except Exception as exc:  # report, keep going
        return {"error": f"{type(exc).__name__}: {exc}"}
    tflops = shape.flops() / ms / 1e9
    return {
        "ms": ms,
        "tflops": tflops,
        "pct_bf16_peak": 100 * tflops / peak if peak else None,
        "bytes": shape.bytes_moved(path, itemsize),
    }


def _decode_table(preset, res, dtype, device, frames, paths, max_shapes, peak, log) -> dict:
    """One (preset, resolution): a row per conv shape, most expensive first, and per-path totals
    of the decode (each shape's time times its number of calls)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    items = sorted(
        decode_shapes(preset, res, res, frames).items(), key=lambda kv: -kv[0].flops() * kv[1]
    )[:max_shapes]
    rows, totals = [], {p: 0.0 for p in paths}
    for shape, count in items:
        runs = ConvBench(shape, dtype, device).runs
        row = {"shape": asdict(shape), "count": count, "gflop": shape.flops() / 1e9}
        for path in (p for p in paths if p in runs):
            row[path] = _path_result(shape, path, runs[path], device, peak, itemsize)
            if "ms" in row[path]:
                totals[path] += count * row[path]["ms"]
        timed = {p: row[p]["ms"] for p in paths if "ms" in row.get(p, {})}
        row["fastest"] = min(timed, key=timed.get) if timed else None
        rows.append(row)
        log(_format_row(preset, res, row, paths))
    flops = sum(s.flops() * c for s, c in items)
    summary = {
        p: {"ms": ms, "tflops": flops / ms / 1e9 if ms else None} for p, ms in totals.items()
    }
    log(
        f"{preset} {res}x{res} total: "
        + ", ".join(f"{p} {v['ms']:.3f} ms" for p, v in summary.items())
    )
    return {"preset": preset, "resolution": res, "rows": rows, "totals": summary}


def run_table(
    presets, resolutions, dtype, device, frames=17, paths=PATHS, max_shapes=None, log=print
) -> dict:
    name = torch.cuda.get_device_name() if device == "cuda" else cpu_model()
    peak = bf16_peak(name) if device == "cuda" else None
    return {
        "device": name,
        "bf16_peak_tflops": peak,
        "dtype": dtype_name(dtype),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "triton": package_version("triton"),
        "frames": frames,
        "runs": [
            _decode_table(preset, res, dtype, device, frames, paths, max_shapes, peak, log)
            for preset in presets
            for res in resolutions
        ],
    }


def _format_row(preset, res, row, paths) -> str:
    s = row["shape"]
    desc = (
        f"{preset} {res} {s['cin']}->{s['cout']} k{tuple(s['kernel'])} s{tuple(s['stride'])} "
        f"{s['frames']}f+{s['past']}p {s['h']}x{s['w']}{' up2x' if s['upsample2x'] else ''}"
        f"{' T' if s['transposed'] else ''} x{row['count']}"
    )
    parts = []
    for p in paths:
        v = row.get(p)
        if v and "ms" in v:
            pct = f" {v['pct_bf16_peak']:.0f}%" if v["pct_bf16_peak"] is not None else ""
            parts.append(f"{p} {v['ms']:.3f}ms {v['tflops']:.1f}TF{pct}")
        elif v:
            parts.append(f"{p} ERR")
    return desc + " | " + " | ".join(parts)


# -- causal_conv3d_norm: the Block, fused or not ------------------------------------------------


def block_impls(
    shape: tuple,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    with_triton: bool = True,
    with_compile: bool = True,
) -> Tuple[Dict[str, Callable[[], torch.Tensor]], int, int]:
    """The implementations of one Block call, its minimal bytes and its conv FLOPs."""
    cin, cout, kernel, pad_mode, frames, h, w = shape
    g = torch.Generator(device="cpu").manual_seed(0)

    def act(c, t):
        return (
            torch.randn(1, c, t, h, w, generator=g)
            .to(device, dtype)
            .contiguous(memory_format=torch.channels_last_3d)
        )

    history = kernel[0] - 1
    x, past, residual = act(cin, frames), act(cin, history), act(cout, frames)
    fan_in = cin * kernel[0] * kernel[1] * kernel[2]
    weight = (torch.randn(cout, cin, *kernel, generator=g) / fan_in**0.5).to(device, dtype)
    weight = weight.contiguous(memory_format=torch.channels_last_3d)
    bias, norm_g, norm_b = (torch.randn(cout, generator=g).to(device, dtype) for _ in range(3))
    conv = dict(
        past=past,
        history=history,
        space_padding=(kernel[1] // 2, kernel[2] // 2),
        pad_mode=pad_mode,
    )
    adds = dict(relu=True, residual=residual)
    args = (x, weight, bias, norm_g, norm_b)
    impls = {"cudnn+eager": lambda: CF.causal_conv3d_norm(*args, **conv, **adds)}
    if with_triton:
        from cdt_fast.kernels.causal_conv3d import causal_conv3d, causal_conv3d_norm
        from cdt_fast.kernels.channel_norm import channel_norm

        def then_norm(y):
            return channel_norm(y, norm_g, norm_b, **adds, out=y)

        impls["cudnn+triton_norm"] = lambda: then_norm(CF.causal_conv3d(x, weight, bias, **conv))
        impls["triton+triton_norm"] = lambda: then_norm(causal_conv3d(x, weight, bias, **conv))
        impls["triton_fused"] = lambda: causal_conv3d_norm(*args, **conv, **adds)
    if with_compile:
        fused_graph = torch.compile(CF.causal_conv3d_norm, dynamic=False)
        impls["torch.compile"] = lambda: fused_graph(*args, **conv, **adds)
    nbytes = (x.numel() + past.numel() + 2 * residual.numel() + weight.numel()) * x.element_size()
    return impls, nbytes, 2 * residual.numel() * fan_in


def block_cases(dtype: torch.dtype = torch.bfloat16, with_compile: bool = True):
    """The Block rows' cases (CUDA): the most expensive Block convs of each decode."""
    for preset, resolution in BLOCK_CASES:
        for shape, count in block_shapes(preset, resolution)[:SHAPES_PER_CASE]:
            cin, cout, kernel, pad_mode, frames, h, w = shape
            label = (
                f"{preset}{resolution} {cin}->{cout} k{kernel[1]} {frames}f {h}x{w} "
                f"{pad_mode} x{count}"
            )
            impls, nbytes, flops = block_impls(shape, "cuda", dtype, with_compile=with_compile)
            yield microbench.Case("causal_conv3d_norm", label, impls, nbytes, flops)


# -- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--op",
        choices=["causal_conv3d", "causal_conv3d_norm", "all"],
        default="all",
        help="which op's table (default both; causal_conv3d_norm needs CUDA)",
    )
    parser.add_argument("--presets", nargs="+", default=["base", "small"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[256, 720])
    parser.add_argument("--dtype", type=dtype_argument, default=torch.bfloat16)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument(
        "--max-shapes",
        type=int,
        default=None,
        help="only the N most expensive shapes per preset and resolution",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--out", help="write the results as JSON (atomically)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if torch.cuda.is_available():
        result: dict = {}
        if args.op in ("causal_conv3d", "all"):
            result = run_table(
                args.presets,
                args.resolutions,
                args.dtype,
                "cuda",
                args.frames,
                max_shapes=args.max_shapes,
            )
        if args.op in ("causal_conv3d_norm", "all"):
            cases = block_cases(args.dtype, with_compile=not args.no_compile)
            result["causal_conv3d_norm"] = microbench.run_cases(cases, torch.device("cuda"))
            print(microbench.markdown(result["causal_conv3d_norm"]))
    else:
        print("no CUDA device: tiny CPU smoke run (torch paths only, numbers are not GPU claims)")
        result = run_table(
            ["small"],
            [32],
            torch.float32,
            "cpu",
            frames=5,
            paths=("upstream", "cudnn_cl"),
            max_shapes=3,
        )
        result["smoke"] = True
    if args.out:
        from cdt_fast.checkpoint import atomic_write

        atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return 0


# -- pytest-benchmark ---------------------------------------------------------------------------


def _pytest_cases():
    base = dict(batch=1, transposed=False)
    return {
        "base256-333-64": ConvShape(
            64, 64, (3, 3, 3), (1, 1, 1), (1, 1), 2, "zeros", False, 17, 0, 256, 256, **base
        ),
        "base256-377-out": ConvShape(
            64, 3, (3, 7, 7), (1, 1, 1), (3, 3), 2, "zeros", False, 17, 0, 256, 256, **base
        ),
        "base256-155-up2x": ConvShape(
            128, 128, (1, 5, 5), (1, 1, 1), (2, 2), 0, "zeros", True, 5, 0, 64, 64, **base
        ),
        "small720-333-128": ConvShape(
            128, 128, (3, 3, 3), (1, 1, 1), (1, 1), 2, "replicate", False, 8, 2, 360, 360, **base
        ),
        "small720-133-s2": ConvShape(
            64, 64, (1, 3, 3), (1, 2, 2), (1, 1), 0, "replicate", False, 8, 0, 720, 720, **base
        ),
    }


try:
    import pytest

    needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

    @pytest.mark.gpu
    @needs_cuda
    @pytest.mark.parametrize("path", PATHS)
    @pytest.mark.parametrize("case", sorted(_pytest_cases()))
    def test_causal_conv3d(benchmark, case, path):
        bench = ConvBench(_pytest_cases()[case], torch.bfloat16, "cuda")
        microbench.run_benchmark(benchmark, bench.runs[path])

    @pytest.mark.gpu
    @needs_cuda
    @pytest.mark.parametrize("impl", BLOCK_IMPLS + ("torch.compile",))
    def test_causal_conv3d_norm(benchmark, impl):
        shape, _ = block_shapes("base", 256)[0]
        impls, nbytes, _ = block_impls(shape, with_compile=impl == "torch.compile")
        microbench.run_benchmark(benchmark, impls[impl], nbytes)
except ImportError:  # running main() without pytest installed
    pass


if __name__ == "__main__":
    sys.exit(main())
