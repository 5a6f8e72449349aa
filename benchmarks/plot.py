"""The model benchmark's PNG: decode throughput by (model, setting) and implementation, and decode
peak memory against video length. matplotlib's object API (no pyplot global state)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Tuple

from benchmarks.report import compute_ratios, device_label, size_label

__all__ = ["write_plot"]


def _speed(ax, rows: List[Dict[str, Any]]) -> None:
    decode = [r for r in rows if r["op"] == "decode" and r.get("suite") in ("main", "peer")]
    groups = list(dict.fromkeys((r["model"], r["frames"], size_label(r)) for r in decode))
    impls = list(dict.fromkeys(r["impl"] for r in decode))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        values = {
            (r["model"], r["frames"], size_label(r)): r.get("frames_per_s") or 0.0
            for r in decode
            if r["impl"] == impl
        }
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [values.get(g, 0.0) for g in groups], width, label=impl)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{m}\n{f}x{s}" for m, f, s in groups], fontsize=8)
    ax.set_ylabel("decode frames / s (higher is better)")
    ax.set_title("decode throughput")
    if impls:
        ax.legend(fontsize=7)


def _memory(ax, report: Dict[str, Any]) -> None:
    # On CPU the total is the process's RSS (libraries, earlier models): plot the call's own part.
    own = report["header"].get("gpu_name") is None
    field = "peak_mem_delta_bytes" if own else "peak_mem_bytes"
    series: Dict[Tuple, List[Tuple[int, float]]] = defaultdict(list)
    for r in (report.get("ratios") or compute_ratios(report["rows"]))["memory_vs_length"]:
        mem = r[field] if r[field] is not None else 0
        series[(r["model"], r["impl"], size_label(r))].append((r["frames"], mem / 2**20))
    for (model, impl, size), points in series.items():
        points.sort()
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            label=f"{model} {impl} {size}",
        )
    ax.set_xlabel("video frames")
    ax.set_ylabel("decode peak memory, MiB" + (" (RSS above the call's baseline)" if own else ""))
    ax.set_title("peak memory vs video length")
    if series:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no length series", ha="center", va="center", transform=ax.transAxes)


def write_plot(report: Dict[str, Any], path) -> None:
    """frames/s of decode by (model, resolution) and impl; decode peak memory vs video length;
    written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cdt_fast.checkpoint import atomic_write

    fig = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_speed, ax_mem = fig.subplots(1, 2)
    _speed(ax_speed, report["rows"])
    _memory(ax_mem, report)
    fig.suptitle(f"CDT benchmark: {device_label(report['header'])}", fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
