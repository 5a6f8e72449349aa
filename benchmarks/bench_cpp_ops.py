"""Microbenchmark of the compiled stages (cdt_fast._cpp_lib) against their torch contract.

CPU: the ``cpp`` extension vs :mod:`cdt_fast.functional` on channels-last inputs (the engine's
layout), same threads. CUDA (when a GPU and a CUDA build exist): the ``cuda`` extension vs the
Triton twin in ``cdt_fast.kernels.<module>`` when one with the contract's signature is installed,
and vs torch. Times are medians of ``--repeat`` runs after warm-up; GB/s counts the bytes a stage
must move at least (inputs read once, outputs written once).

    python benchmarks/bench_cpp_ops.py [--threads 2] [--size small|cdt] [--out out.json]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from cdt_fast import _cpp_lib as L
from cdt_fast import cpp_ops
from cdt_fast import functional as CF
from cdt_fast.checkpoint import atomic_write

CL = torch.channels_last_3d
# Activation shapes [B, C, T, H, W] of CDT's decoder stages: "cdt" is CDT-small at 256x256 (a
# 4-frame chunk at the U-Net's first level and at its attention level), "small" runs in seconds.
SIZES = {
    "small": {"act": (1, 32, 2, 32, 32), "attn": (1, 64, 2, 8, 8), "rgb": (1, 3, 5, 64, 64)},
    "cdt": {"act": (1, 64, 4, 128, 128), "attn": (1, 256, 4, 16, 16), "rgb": (1, 3, 17, 256, 256)},
}
# The Triton twin of each op: (module under cdt_fast.kernels, function name).
TRITON_TWINS = {
    "channel_norm": ("channel_norm", "channel_norm"),
    "linear_attention": ("linear_attention", "linear_attention"),
    "time_downsample": ("time_resample", "time_downsample"),
    "time_upsample": ("time_resample", "time_upsample"),
    "ddim_update": ("denoise", "ddim_update"),
    "to_uint8_frames": ("denoise", "to_uint8_frames"),
}


def median_ms(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def nbytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def cases(size: str, device: str, dtype: torch.dtype) -> List[dict]:
    """Each case: op name, shape, kwargs-bound callables taking the implementation's module."""
    s = SIZES[size]
    g = torch.Generator().manual_seed(0)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    b, c, t, h, w = s["act"]
    x = rand(b, c, t, h, w).contiguous(memory_format=CL)
    res = rand(b, c, t, h, w).contiguous(memory_format=CL)
    gamma, beta, tb = rand(c), rand(c), rand(b, c)
    ab, ac, at, ah, aw = s["attn"]
    xa = rand(ab, ac, at, ah, aw).contiguous(memory_format=CL)
    w_qkv, w_out, b_out = rand(3 * ac, ac, 1, 1, 1) * ac**-0.5, rand(ac, ac, 1, 1, 1), rand(ac)
    w_down, b_down = rand(c, c, 3) * (3 * c) ** -0.5, rand(c)
    past1 = rand(b, c, 1, h, w).contiguous(memory_format=CL)
    w_up, b_up = rand(2 * c, c, 1) * c**-0.5, rand(2 * c)
    past2 = rand(b, c, 2, h, w).contiguous(memory_format=CL)
    rb, rc, rt, rh, rw = s["rgb"]
    x_t = rand(rb, rc, rt, rh, rw, dt=torch.float32).contiguous(memory_format=CL)
    x0 = rand(rb, rc, rt, rh, rw).contiguous(memory_format=CL)
    coeffs = tuple(torch.tensor(v) for v in (1.0000305, 0.0078125, 0.9999, 0.0141))
    x0f = x0.float()
    act_bytes = nbytes(x)
    return [
        dict(
            op="channel_norm",
            shape=s["act"],
            bytes=3 * act_bytes,
            run=lambda m: m.channel_norm(x, gamma, beta, relu=True, time_bias=tb, residual=res),
        ),
        dict(
            op="linear_attention",
            shape=s["attn"],
            bytes=2 * nbytes(xa) + 3 * nbytes(xa),
            run=lambda m: m.linear_attention(xa, w_qkv, w_out, b_out),
        ),
        dict(
            op="time_downsample",
            shape=s["act"],
            bytes=act_bytes + act_bytes // 2,
            run=lambda m: m.time_downsample(x, w_down, b_down, past=past1),
        ),
        dict(
            op="time_upsample",
            shape=s["act"],
            bytes=3 * act_bytes,
            run=lambda m: m.time_upsample(x, w_up, b_up, drop_first=False),
        ),
        dict(
            op="causal_conv3d_history",
            shape=s["act"],
            bytes=2 * nbytes(past2),
            run=lambda m: m.causal_conv3d_history(x, past2, 2),
        ),
        dict(
            op="ddim_update",
            shape=s["rgb"],
            bytes=nbytes(x_t, x0) + x_t.numel() * 4,
            run=lambda m: m.ddim_update(x_t, x0f if m is CF else x0, coeffs, clamp=True),
        ),
        dict(
            op="to_uint8_frames",
            shape=s["rgb"],
            bytes=nbytes(x_t) + x_t.numel(),
            run=lambda m: m.to_uint8_frames(x_t),
        ),
    ]


def triton_twin(op: str):
    module, name = TRITON_TWINS.get(op, (None, None))
    if module is None:
        return None
    try:
        return getattr(importlib.import_module(f"cdt_fast.kernels.{module}"), name)
    except (ImportError, AttributeError):
        return None


class _Only:
    """Presents one function as a module with the op's name (for a Triton twin)."""

    def __init__(self, op: str, fn: Callable):
        setattr(self, op, fn)


def run(size: str, device: str, dtype: torch.dtype, repeat: int) -> List[Dict]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for case in cases(size, device, dtype):
        impls = {"torch": CF, "cpp" if device == "cpu" else "cuda": cpp_ops}
        twin = triton_twin(case["op"]) if device == "cuda" else None
        if twin is not None:
            impls["triton"] = _Only(case["op"], twin)
        row = {
            "op": case["op"],
            "shape": list(case["shape"]),
            "device": device,
            "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(),
        }
        for name, impl in impls.items():
            try:
                ms = median_ms(functools.partial(case["run"], impl), repeat, sync)
            except Exception as exc:  # a twin with another signature: report, do not stop
                row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            row[f"{name}_ms"] = round(ms, 4)
            row[f"{name}_GBps"] = round(case["bytes"] / ms / 1e6, 2)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="default: float32 on CPU, bfloat16 on CUDA",
    )
    parser.add_argument(
        "--out",
        "--json",
        dest="out",
        metavar="PATH",
        help="write the rows here as JSON, atomically (--json: the old name)",
    )
    args = parser.parse_args(argv)
    if not L.is_available():
        raise SystemExit(f"cdt_fast._C unavailable: {L.unavailable_reason()}")
    torch.set_num_threads(args.threads)
    rows = run(args.size, "cpu", getattr(torch, args.dtype or "float32"), args.repeat)
    if L.cuda_available():
        rows += run(args.size, "cuda", getattr(torch, args.dtype or "bfloat16"), args.repeat)
    else:
        print("(CUDA part skipped: no GPU or no CUDA build of cdt_fast._C)")
    for r in rows:
        times = "  ".join(f"{k[:-3]} {r[k]:9.3f} ms" for k in r if k.endswith("_ms"))
        base = r.get("torch_ms")
        fast = r.get("cpp_ms") or r.get("cuda_ms")
        speed = f"  x{base / fast:5.2f} vs torch" if base and fast else ""
        errors = "  ".join(f"{k}: {r[k]}" for k in r if k.endswith("_error"))
        print(
            f"{r['device']:4s} {r['op']:22s} {str(tuple(r['shape'])):22s} {times}{speed} {errors}"
        )
    if args.out:
        atomic_write(args.out, lambda tmp: open(tmp, "w").write(json.dumps(rows, indent=1)))


if __name__ == "__main__":
    main()
