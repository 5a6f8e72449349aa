"""Causal conv3d + cache microbenchmark on the conv shapes of a real CDT decode.

Three arrangements of the same conv, per chunk, steady state (the cache already full):

- ``upstream``: ``cat([cache, x])`` + ``F.pad`` + NCDHW cuDNN conv + ``clone`` of the new cache
  (:func:`cdt_fast.functional.causal_conv3d` + ``causal_conv3d_history`` on NCDHW tensors);
- ``cudnn_cl``: cuDNN on ``channels_last_3d`` tensors, ``past`` a view of the held history and the
  history refreshed by copying the chunk's last frames into a second buffer (what the engine's
  stream state does);
- ``triton``: the implicit-GEMM kernel reading the same channels-last chunk and history.

The layer shapes are read off the reference model itself: a decode at 16x16 with the preset's real
channel widths and the chunk plan of the target resolution, hooks recording every conv's input,
then spatial sizes scaled to the target. Reported: ms, TFLOP/s, % of the device's dense bf16 peak,
and bytes moved (an analytic count of each arrangement's reads and writes, not a profiler reading).

    python benchmarks/bench_causal_conv3d.py --out results.json     # CUDA: full table
    python benchmarks/bench_causal_conv3d.py                        # CPU: a tiny smoke run
    pytest benchmarks/bench_causal_conv3d.py --benchmark-only       # pytest-benchmark (CUDA)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch

from cdt_fast import functional as CF

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets. Matched as
# substrings of torch.cuda.get_device_name(), most specific first.
BF16_PEAK_TFLOPS: Dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}

PATHS = ("upstream", "cudnn_cl", "triton")


def bf16_peak(device_name: str) -> Optional[float]:
    for key, peak in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return peak
    return None


@dataclass(frozen=True)
class ConvShape:
    """One causal conv call of a decode (``h``/``w``: the conv's source frame size)."""

    cin: int
    cout: int
    kernel: tuple
    stride: tuple
    space_padding: tuple
    history: int
    pad_mode: str
    upsample2x: bool
    frames: int
    past: int
    h: int
    w: int
    batch: int = 1
    transposed: bool = False

    def out_size(self):
        if self.transposed:
            return self.frames, 2 * self.h, 2 * self.w
        s = 2 if self.upsample2x else 1
        kt, kh, kw = self.kernel
        ph, pw = self.space_padding
        t = (self.history + self.frames - kt) // self.stride[0] + 1
        return (
            t,
            (s * self.h + 2 * ph - kh) // self.stride[1] + 1,
            (s * self.w + 2 * pw - kw) // self.stride[2] + 1,
        )

    def flops(self) -> float:
        t, h, w = self.out_size()
        taps = self.kernel[0] * self.kernel[1] * self.kernel[2]
        return 2.0 * self.batch * t * h * w * self.cout * self.cin * taps

    def bytes_moved(self, path: str, itemsize: int) -> float:
        """Bytes read + written by the arrangement, each tensor pass counted once; weights included.
        An analytic count (caches are not modelled), for comparing arrangements."""
        t, h, w = self.out_size()
        frame = self.batch * self.cin * self.h * self.w * itemsize
        weight = self.cout * self.cin * self.kernel[0] * self.kernel[1] * self.kernel[2] * itemsize
        out = self.batch * self.cout * t * h * w * itemsize
        window = self.history + self.frames
        if self.transposed or path == "triton":
            # One read of [history | chunk] (upsampling folded into the loads), the output, and
            # the refresh of the cached frames. cuDNN's arrangements concatenate and pad first.
            return window * frame + weight + out + 2 * self.past * frame
        scale = 2 if self.upsample2x else 1
        big = frame * scale * scale  # a frame at the conv's resolution
        ph, pw = self.space_padding
        padded = (
            big
            * (self.h * scale + 2 * ph)
            * (self.w * scale + 2 * pw)
            / (self.h * self.w * scale * scale)
        )
        total = weight + out
        if self.upsample2x:
            total += self.frames * (frame + big)
        if self.past:
            total += 2 * (self.past + self.frames) * big  # cat
        if self.history > self.past or ph or pw:
            total += window * (big + padded)  # F.pad
            total += window * padded  # the conv reads the padded copy
        else:
            total += window * big
        if self.history:
            total += 2 * min(self.history, self.past + self.frames) * frame  # clone of the cache
        return total


# -- shapes from the reference model -----------------------------------------------------------


def decode_shapes(
    preset: str, height: int, width: int, frames: int = 17, probe: int = 16
) -> Counter:
    """Counter of :class:`ConvShape` over one decode of ``frames`` video frames at
    ``height`` x ``width`` (batch 1), chunked as the decoder runs at that resolution."""
    from cdt_fast import CDT, CDTConfig, chunking
    from cdt_fast.reference.layers import CausalConv3d, Upsample

    cfg = CDTConfig.preset(preset)
    model = CDT(cfg).eval()
    factor = cfg.space_factor
    chunk = cfg.decode_chunk_frames(height // factor, width // factor)
    shapes: Counter = Counter()
    upsample_convs = {m.conv for m in model.modules() if isinstance(m, Upsample)}

    def scaled(n, full):
        return max(1, round(n * full / probe))

    def record_conv(module, args):
        x = args[0]
        cache = args[1] if len(args) > 1 else None
        past = 0
        if module.history and cache is not None and cache.started(module):
            past = cache.get(module).shape[2]
        up = module in upsample_convs
        h, w = x.shape[3], x.shape[4]
        if up:  # Upsample(new_upsample) feeds the conv an upsampled frame: fold it into the conv
            h, w = h // 2, w // 2
        shapes[
            ConvShape(
                module.in_channels,
                module.out_channels,
                tuple(module.kernel_size),
                tuple(module.stride),
                tuple(module.space_padding),
                module.history,
                module.pad_mode,
                up,
                x.shape[2],
                past,
                scaled(h, height),
                scaled(w, width),
            )
        ] += 1

    def record_transposed(module, args):
        x = args[0]
        shapes[
            ConvShape(
                module.in_channels,
                module.out_channels,
                tuple(module.kernel_size),
                tuple(module.stride),
                (2, 2),
                0,
                "zeros",
                False,
                x.shape[2],
                0,
                scaled(x.shape[3], height),
                scaled(x.shape[4], width),
                transposed=True,
            )
        ] += 1

    hooks = []
    for m in model.modules():
        if isinstance(m, CausalConv3d):
            hooks.append(m.register_forward_pre_hook(record_conv))
        # ConvTranspose3d runs through the functional op: hook its Upsample module instead.
        elif isinstance(m, Upsample) and not m.new_upsample:
            hooks.append(
                m.register_forward_pre_hook(lambda mod, args: record_transposed(mod.conv, args))
            )
    latent = torch.zeros(
        1,
        cfg.latent_dim,
        chunking.latent_frames(frames, cfg.time_factor),
        probe // factor,
        probe // factor,
    )
    with torch.no_grad():
        model.decode(latent, chunk_frames=chunk)
    for h in hooks:
        h.remove()
    return shapes


# -- the three arrangements --------------------------------------------------------------------


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
        kw = dict(
            history=s.history,
            space_padding=s.space_padding,
            stride=s.stride,
            pad_mode=s.pad_mode,
            upsample2x=s.upsample2x,
        )

        def upstream():
            y = CF.causal_conv3d(x_nc, self.weight, self.bias, past=past_nc, **kw)
            if s.history:
                CF.causal_conv3d_history(x_nc, past_nc, s.history)
            return y

        self.runs = {"upstream": upstream}
        x_cl = x_nc.contiguous(memory_format=cl)
        weight_cl = self.weight.contiguous(memory_format=cl)
        past_cl = past_nc.contiguous(memory_format=cl) if s.past else None
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


def measure(fn, device: str) -> float:
    """Median ms per call."""
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def run_table(
    presets, resolutions, dtype, device, frames=17, paths=PATHS, max_shapes=None, log=print
) -> dict:
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    peak = bf16_peak(name) if device == "cuda" else None
    itemsize = torch.empty(0, dtype=dtype).element_size()
    result = {
        "device": name,
        "bf16_peak_tflops": peak,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "triton": _triton_version(),
        "frames": frames,
        "runs": [],
    }
    for preset in presets:
        for res in resolutions:
            shapes = decode_shapes(preset, res, res, frames)
            rows, totals = [], {p: 0.0 for p in paths}
            items = sorted(shapes.items(), key=lambda kv: -kv[0].flops() * kv[1])
            for shape, count in items[:max_shapes]:
                bench = ConvBench(shape, dtype, device)
                row = {"shape": asdict(shape), "count": count, "gflop": shape.flops() / 1e9}
                for path in paths:
                    if path not in bench.runs:
                        continue
                    try:
                        ms = measure(bench.runs[path], device)
                    except Exception as exc:  # report, keep going
                        row[path] = {"error": f"{type(exc).__name__}: {exc}"}
                        continue
                    tflops = shape.flops() / ms / 1e9
                    row[path] = {
                        "ms": ms,
                        "tflops": tflops,
                        "pct_bf16_peak": 100 * tflops / peak if peak else None,
                        "bytes": shape.bytes_moved(path, itemsize),
                    }
                    totals[path] += count * ms
                timed = {p: row[p]["ms"] for p in paths if "ms" in row.get(p, {})}
                row["fastest"] = min(timed, key=timed.get) if timed else None
                rows.append(row)
                log(_format_row(preset, res, row, paths))
            flops = sum(s.flops() * c for s, c in items[:max_shapes])
            summary = {
                p: {"ms": ms, "tflops": flops / ms / 1e9 if ms else None}
                for p, ms in totals.items()
            }
            log(
                f"{preset} {res}x{res} total: "
                + ", ".join(f"{p} {v['ms']:.3f} ms" for p, v in summary.items())
            )
            result["runs"].append(
                {"preset": preset, "resolution": res, "rows": rows, "totals": summary}
            )
    return result


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


def _triton_version() -> Optional[str]:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["base", "small"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[256, 720])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument(
        "--max-shapes",
        type=int,
        default=None,
        help="only the N most expensive shapes per preset and resolution",
    )
    parser.add_argument("--out", help="write the results as JSON (atomically)")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        result = run_table(
            args.presets,
            args.resolutions,
            getattr(torch, args.dtype),
            "cuda",
            args.frames,
            max_shapes=args.max_shapes,
        )
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

        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)

        atomic_write(args.out, write)
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

    @pytest.mark.gpu
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    @pytest.mark.parametrize("path", PATHS)
    @pytest.mark.parametrize("case", sorted(_pytest_cases()))
    def test_causal_conv3d(benchmark, case, path):
        bench = ConvBench(_pytest_cases()[case], torch.bfloat16, "cuda")
        fn = bench.runs[path]

        def synced():
            fn()
            torch.cuda.synchronize()

        benchmark(synced)
except ImportError:  # running main() without pytest installed
    pass


if __name__ == "__main__":
    sys.exit(main())
