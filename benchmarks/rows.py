"""One row of the model benchmark's results: its fields (:data:`ROW_FIELDS`), how a timing becomes
one (:func:`make_row`), what it carries of an engine's execution record (:func:`attach_record`),
its accuracy against the fp32 reference (:func:`psnr_against`) and its place in the tables
(:func:`row_order`)."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from benchmarks import flops, hardware, report
from benchmarks.plan import Plan, Setting
from benchmarks.timing import Timing

__all__ = [
    "ROW_FIELDS",
    "make_row",
    "attach_record",
    "pct_of_peak",
    "psnr_against",
    "row_order",
]

ROW_FIELDS = (
    "model",
    "impl",
    "op",
    "device",
    "dtype",
    "frames",
    "height",
    "width",
    "batch",
    "suite",
    "widths",
    "reduced",
    "latency_ms_p20",
    "latency_ms_p50",
    "latency_ms_p80",
    "latency_ms_min",
    "latency_ms_max",
    "samples_ms",
    "repeats",
    "warmup",
    "frames_per_s",
    "peak_mem_bytes",
    "peak_mem_delta_bytes",
    "mem_method",
    "flops",
    "tflops",
    "pct_peak",
    "pct_peak_note",
    "psnr_vs_reference",
    "max_abs_err_vs_reference",
    "psnr_note",
    "ran_on",
    "backends_used",
    "cuda_graphs",
)


def psnr_against(out: torch.Tensor, ref: torch.Tensor, op: str) -> Tuple[Optional[float], float]:
    """(PSNR in dB or None when equal, max abs error). The peak is 2 for videos (range [-1, 1])
    and the reference latent's range for encode."""
    out = out.detach().float().cpu()
    ref = ref.float()
    if out.shape != ref.shape:
        raise ValueError(
            f"output shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}"
        )
    diff = out - ref
    max_abs = float(diff.abs().max())
    mse = float(diff.pow(2).mean())
    if mse == 0.0:
        return None, max_abs
    peak = 2.0 if op != "encode" else float(ref.max() - ref.min())
    return 10.0 * math.log10(peak * peak / mse), max_abs


def pct_of_peak(
    tflops: Optional[float], header: Dict[str, Any], dtype_name: str
) -> Tuple[Optional[float], str]:
    """(% of the GPU's dense peak for the dtype, what it was taken against)."""
    if header.get("gpu_name") is None:
        return None, "no peak FLOP/s for CPUs: pct_peak is reported for CUDA devices only"
    label, peaks = hardware.peak_tflops(header["gpu_name"])
    if peaks is None:
        return None, f"no peak table entry for {header['gpu_name']!r} (see benchmarks/hardware.py)"
    key = dtype_name
    if dtype_name == "fp32" and header["torch_settings"]["cudnn_allow_tf32"]:
        key = "tf32"  # cuDNN runs fp32 convs on TF32 tensor cores when allowed (torch's default)
    if tflops is None:
        return None, "no FLOP count"
    return 100.0 * tflops / peaks[key], f"{label} dense {key} peak {peaks[key]} TFLOP/s"


def make_row(
    plan: Plan,
    header: Dict[str, Any],
    model: str,
    impl: str,
    op: str,
    s: Setting,
    t: Timing,
    flop_count: Optional[int],
    suite: Optional[str] = None,
) -> Dict[str, Any]:
    """The row of one timing; accuracy and the engine's record are filled in afterwards."""
    seconds = t.p50 / 1e3
    tflops = flop_count / seconds / 1e12 if flop_count is not None else None
    pct, pct_note = pct_of_peak(tflops, header, plan.dtype_name)
    return {
        "model": model,
        "impl": impl,
        "op": op,
        "device": str(plan.device),
        "dtype": plan.dtype_name,
        "frames": s.frames,
        "height": s.height,
        "width": s.width,
        "batch": 1,
        "suite": suite or s.suite,
        "widths": "tiny" if plan.tiny else "preset",
        "reduced": plan.reduced(s),
        "latency_ms_p20": t.p20,
        "latency_ms_p50": t.p50,
        "latency_ms_p80": t.p80,
        "latency_ms_min": t.min,
        "latency_ms_max": t.max,
        "samples_ms": [round(v, 4) for v in t.samples_ms],
        "repeats": t.repeats,
        "warmup": t.warmup,
        "frames_per_s": s.frames / seconds,
        "peak_mem_bytes": t.peak_mem_bytes,
        "peak_mem_delta_bytes": t.peak_mem_delta_bytes,
        "mem_method": t.mem_method,
        "flops": flop_count,
        "tflops": tflops,
        "pct_peak": pct,
        "pct_peak_note": pct_note,
        "psnr_vs_reference": None,
        "max_abs_err_vs_reference": None,
        "psnr_note": None,
        "ran_on": None,
        "backends_used": None,
        "cuda_graphs": None,
    }


def attach_record(row: Dict[str, Any], record: Dict[str, Any]) -> Optional[str]:
    """Put an engine's execution record of the row's timed calls on ``row``: ``ran_on`` ({op:
    {backend: calls}}), ``backends_used`` (sorted) and ``cuda_graphs``. Returns why the row is
    not a result when the backend in its name ran none of its ops, else None."""
    ran_on = record["ops"]
    used = sorted({backend for counts in ran_on.values() for backend in counts})
    row["ran_on"], row["backends_used"] = ran_on, used
    row["cuda_graphs"] = record["cuda_graphs"]
    backend = report.engine_backend(row["impl"])
    if backend is not None and backend not in used:
        return (
            f"not a result: backend {backend} ran none of the timed calls' ops "
            f"(they ran on {', '.join(used) or 'nothing'})"
        )
    return None


def row_order(plan: Plan, row: Dict[str, Any]) -> Tuple:
    """Rows as the tables read best: model, suite, implementation, setting, op (measurement
    interleaves the implementations, so rows arrive setting by setting)."""

    def position(seq: Sequence[Any], value: Any) -> int:
        return seq.index(value) if value in seq else len(seq)

    setting = Setting(row["frames"], row["height"], row["width"], row["suite"])
    return (
        position(plan.models, row["model"]),
        position(["main", "length", "peer"], row["suite"]),
        position(plan.impls, row["impl"]),
        position(plan.settings, setting),
        position(list(flops.OPS), row["op"]),
    )
