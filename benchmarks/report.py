"""Turn benchmark rows into ratios, markdown and the README's performance table (the plot is
``plot.py``'s)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "compute_ratios",
    "merge_results",
    "render_markdown",
    "readme_table",
    "fmt_bytes",
    "fmt_ratio",
    "ratio_spread",
    "engine_backend",
    "impl_label",
    "size_label",
    "device_label",
    "ENGINE_PREFIX",
]

ENGINE_PREFIX = "engine-"
Row = Dict[str, Any]


# -- formatting ----------------------------------------------------------------------------------


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _fmt(value: Optional[float], spec: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _psnr(row: Row) -> str:
    if row.get("psnr_vs_reference") is not None:
        return f"{row['psnr_vs_reference']:.1f}"
    if row.get("max_abs_err_vs_reference") == 0.0:
        return "exact"
    return "-"


def size_label(row: Row) -> str:
    return f"{row['height']}x{row['width']}"


def _mem(row: Row) -> str:
    peak, delta = row.get("peak_mem_bytes"), row.get("peak_mem_delta_bytes")
    if peak is None:
        return "-"
    return f"{fmt_bytes(peak)} (+{fmt_bytes(delta)})" if delta is not None else fmt_bytes(peak)


def engine_backend(impl: str) -> Optional[str]:
    """The backend an ``engine-<backend>`` implementation is named after, else None."""
    return impl[len(ENGINE_PREFIX) :] if impl.startswith(ENGINE_PREFIX) else None


def impl_label(row: Row) -> str:
    """The row's implementation with the other backends its ops ran on, e.g.
    ``engine-triton (+torch: causal_conv3d_history)``: an engine row is never labelled with a
    backend alone when some of its ops ran elsewhere (rows without ``ran_on``: the name)."""
    backend, ran_on = engine_backend(row["impl"]), row.get("ran_on")
    if backend is None or not ran_on:
        return row["impl"]
    others: Dict[str, List[str]] = defaultdict(list)
    for op, counts in ran_on.items():
        for other in counts:
            if other != backend:
                others[other].append(op)
    if not others:
        return row["impl"]
    mix = "; ".join(f"+{b}: {', '.join(ops)}" for b, ops in sorted(others.items()))
    return f"{row['impl']} ({mix})"


def _table(header: Sequence[str], lines: Iterable[Sequence[Any]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return out


# -- ratios --------------------------------------------------------------------------------------


def _key(row: Row, *drop: str) -> Tuple:
    fields = ("model", "impl", "op", "frames", "height", "width", "dtype")
    return tuple(row[f] for f in fields if f not in drop)


def _timed(rows: Iterable[Row]) -> List[Row]:
    return [r for r in rows if r.get("suite") in ("main", "length") and r.get("latency_ms_p50")]


def ratio_spread(base: Row, new: Row) -> Tuple[Optional[float], Optional[float], Optional[bool]]:
    """(low, high, significant) of the speedup base/new from the rows' min-max latency spreads:
    low = base min / new max, high = base max / new min; significant when the two ranges do not
    overlap. (None, None, None) for rows without spreads (results written before they were)."""
    keys = ("latency_ms_min", "latency_ms_max")
    if any(r.get(k) is None for r in (base, new) for k in keys):
        return None, None, None
    low = base["latency_ms_min"] / new["latency_ms_max"]
    high = base["latency_ms_max"] / new["latency_ms_min"]
    overlap = (
        base["latency_ms_min"] <= new["latency_ms_max"]
        and new["latency_ms_min"] <= base["latency_ms_max"]
    )
    return low, high, not overlap


def fmt_ratio(speedup: float, significant: Optional[bool]) -> str:
    """``1.82x``; a ratio whose spreads overlap reads ``~1.0x (n.s.)``: its digits are noise."""
    if significant is False:
        return f"~{speedup:.1f}x (n.s.)"
    return f"{speedup:.2f}x"


def _latency(row: Row) -> str:
    """Median and spread: ``p50 (min-max)``, or ``p50 (p20-p80)`` for older results."""
    if row.get("latency_ms_min") is not None and row.get("latency_ms_max") is not None:
        return (
            f"{row['latency_ms_p50']:.1f} ({row['latency_ms_min']:.1f}-{row['latency_ms_max']:.1f})"
        )
    return f"{row['latency_ms_p50']:.1f} ({row['latency_ms_p20']:.1f}-{row['latency_ms_p80']:.1f})"


def _mem_metric(row: Row) -> Optional[float]:
    """The memory figure ratios compare: CUDA, the peak allocated (weights included); CPU, the
    call's own RSS growth (the total RSS also holds libraries and every model built so far)."""
    key = (
        "peak_mem_delta_bytes" if str(row.get("device", "")).startswith("cpu") else "peak_mem_bytes"
    )
    return row.get(key) or None


def _vs(rows: List[Row], baseline: str) -> List[Row]:
    index = {_key(r): r for r in rows}
    out = []
    for r in rows:
        if not r["impl"].startswith(ENGINE_PREFIX):
            continue
        base = index.get(_key({**r, "impl": baseline}))
        if base is None:
            continue
        mem = _mem_metric(r) / _mem_metric(base) if _mem_metric(r) and _mem_metric(base) else None
        low, high, significant = ratio_spread(base, r)
        out.append(
            {
                "model": r["model"],
                "impl": r["impl"],
                "impl_label": impl_label(r),
                "baseline": baseline,
                "op": r["op"],
                "frames": r["frames"],
                "height": r["height"],
                "width": r["width"],
                "dtype": r["dtype"],
                "speedup": base["latency_ms_p50"] / r["latency_ms_p50"],
                "speedup_low": low,
                "speedup_high": high,
                "significant": significant,
                "memory_ratio": mem,
            }
        )
    return out


def compute_ratios(rows: List[Row]) -> Dict[str, List[Row]]:
    """engine/reference and engine/compiled speedups (baseline p50 / engine p50) and memory
    ratios, small/base speed ratios per impl, and decode peak memory against video length."""
    timed = _timed(rows)
    index = {_key(r): r for r in timed}
    small_vs_base = []
    for r in timed:
        if r["model"] != "small":
            continue
        base = index.get(_key({**r, "model": "base"}))
        if base is not None:
            low, high, significant = ratio_spread(base, r)
            small_vs_base.append(
                {
                    "impl": r["impl"],
                    "op": r["op"],
                    "frames": r["frames"],
                    "height": r["height"],
                    "width": r["width"],
                    "dtype": r["dtype"],
                    "base_ms": base["latency_ms_p50"],
                    "small_ms": r["latency_ms_p50"],
                    "speedup": base["latency_ms_p50"] / r["latency_ms_p50"],
                    "speedup_low": low,
                    "speedup_high": high,
                    "significant": significant,
                }
            )

    by_series: Dict[Tuple, List[Row]] = defaultdict(list)
    for r in timed:
        if r["op"] == "decode":
            by_series[(r["model"], r["impl"], r["height"], r["width"], r["dtype"])].append(r)
    lengths = {key for key, rs in by_series.items() if any(r["suite"] == "length" for r in rs)}
    memory_vs_length = []
    for key in sorted(lengths, key=str):
        series = sorted(by_series[key], key=lambda r: r["frames"])
        first = series[0]
        for r in series:
            memory_vs_length.append(
                {
                    "model": key[0],
                    "impl": key[1],
                    "height": key[2],
                    "width": key[3],
                    "dtype": key[4],
                    "frames": r["frames"],
                    "peak_mem_bytes": r.get("peak_mem_bytes"),
                    "peak_mem_delta_bytes": r.get("peak_mem_delta_bytes"),
                    "peak_vs_shortest": (
                        _mem_metric(r) / _mem_metric(first)
                        if _mem_metric(r) and _mem_metric(first)
                        else None
                    ),
                    "latency_ms_p50": r["latency_ms_p50"],
                }
            )
    return {
        "engine_vs_reference": _vs(timed, "reference"),
        "engine_vs_compiled": _vs(timed, "reference-compiled"),
        "small_vs_base": small_vs_base,
        "memory_vs_length": memory_vs_length,
    }


# -- markdown ------------------------------------------------------------------------------------


def device_label(header: Dict[str, Any]) -> str:
    if header.get("gpu_name"):
        return header["gpu_name"]
    return f"CPU {header.get('cpu_model', '?')} ({header.get('torch_settings', {}).get('num_threads', '?')} threads)"


def _header_lines(header: Dict[str, Any]) -> List[str]:
    git = header.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
    s = header.get("torch_settings", {})
    return [
        f"- device: {device_label(header)}",
        f"- torch {header.get('torch')}, CUDA {header.get('cuda')}, cuDNN {header.get('cudnn')}, "
        f"Triton {header.get('triton')}, Python {header.get('python')}",
        f"- torch settings: cudnn.benchmark={s.get('cudnn_benchmark')}, "
        f"cudnn.allow_tf32={s.get('cudnn_allow_tf32')}, matmul.allow_tf32={s.get('matmul_allow_tf32')}, "
        f"threads={s.get('num_threads')}",
        f"- git {commit}, {header.get('timestamp_utc')}, command: `{header.get('command', '')}`",
        f"- load average (1/5/15 min) at start {header.get('load_average_at_start')}, at end "
        f"{header.get('load_average_at_end')}",
    ]


_RESULTS_NOTE = (
    "Latency is the median over interleaved rounds (min-max in brackets; older results: "
    "p20-p80); frames/s = video frames / median; peak memory is the total with the call's own "
    "part in brackets; TFLOP/s from the FLOP model in benchmarks/flops.py; PSNR (dB) against the "
    "fp32 reference output on the same inputs and noise (`exact` = bitwise equal)."
)
_RATIO_NOTE = (
    "(speedup = baseline median / engine median, with the range baseline min / engine max to "
    "baseline max / engine min; `(n.s.)` = the two latency spreads overlap: not significant; "
    "memory ratio of peak memory, on CPU of the calls' own RSS growth)"
)


def _results_lines(rows: List[Row]) -> List[str]:
    header = ["model", "impl", "op", "frames", "size", "dtype", "latency ms", "rounds"]
    header += ["frames/s", "peak mem", "TFLOP/s", "% peak", "PSNR"]
    lines = ["", "## Results", "", _RESULTS_NOTE, ""]
    return lines + _table(
        header,
        (
            [
                r["model"],
                impl_label(r),
                r["op"],
                r["frames"],
                size_label(r),
                r["dtype"],
                _latency(r),
                r.get("repeats", "-"),
                _fmt(r.get("frames_per_s")),
                _mem(r),
                _fmt(r.get("tflops"), ".3f"),
                _fmt(r.get("pct_peak"), ".1f"),
                _psnr(r),
            ]
            for r in rows
        ),
    )


def _engine_ratio_lines(ratios: Dict[str, List[Row]]) -> List[str]:
    lines = ["", "## Ratios", ""]
    for key, title in (
        ("engine_vs_reference", "engine / reference"),
        ("engine_vs_compiled", "engine / reference-compiled"),
    ):
        lines += [f"### {title} {_RATIO_NOTE}", ""]
        if ratios[key]:
            lines += _table(
                ["model", "impl", "op", "frames", "size", "speedup", "range", "memory ratio"],
                (
                    [
                        r["model"],
                        r.get("impl_label", r["impl"]),
                        r["op"],
                        r["frames"],
                        size_label(r),
                        fmt_ratio(r["speedup"], r.get("significant")),
                        _range(r),
                        _fmt(r["memory_ratio"]),
                    ]
                    for r in ratios[key]
                ),
            )
        else:
            lines.append("(no pairs measured)")
        lines.append("")
    return lines


def _small_vs_base_lines(ratios: Dict[str, List[Row]]) -> List[str]:
    lines = ["### small / base (the paper reports CDT-small about 3x faster than CDT-base)", ""]
    if not ratios["small_vs_base"]:
        return lines + ["(needs both presets)"]
    return lines + _table(
        ["impl", "op", "frames", "size", "base ms", "small ms", "small speedup", "range"],
        (
            [
                r["impl"],
                r["op"],
                r["frames"],
                size_label(r),
                f"{r['base_ms']:.1f}",
                f"{r['small_ms']:.1f}",
                fmt_ratio(r["speedup"], r.get("significant")),
                _range(r),
            ]
            for r in ratios["small_vs_base"]
        ),
    )


def _memory_lines(ratios: Dict[str, List[Row]]) -> List[str]:
    lines = [
        "",
        "### decode peak memory vs video length (vs shortest: peak memory, on CPU the "
        "call's own RSS growth, relative to the shortest clip)",
        "",
    ]
    if not ratios["memory_vs_length"]:
        return lines + ["(no length series measured)"]
    header = ["model", "impl", "size", "frames", "peak mem", "own part", "vs shortest"]
    return lines + _table(
        header + ["latency ms"],
        (
            [
                r["model"],
                r["impl"],
                size_label(r),
                r["frames"],
                fmt_bytes(r["peak_mem_bytes"]),
                fmt_bytes(r["peak_mem_delta_bytes"]),
                _fmt(r["peak_vs_shortest"]),
                f"{r['latency_ms_p50']:.1f}",
            ]
            for r in ratios["memory_vs_length"]
        ),
    )


def _skipped_lines(skipped: List[Dict[str, Any]]) -> List[str]:
    if not skipped:
        return []
    where = ("model", "impl", "op", "setting")
    return ["", "## Not measured", ""] + [
        f"- {' '.join(str(s[k]) for k in where if s.get(k))}: {s['reason']}" for s in skipped
    ]


def render_markdown(report: Dict[str, Any]) -> str:
    """The results file's markdown: header, every row, the ratios, what was not measured and the
    kernel microbenchmarks' summaries."""
    header, rows = report["header"], report["rows"]
    lines = [f"# CDT benchmark: {device_label(header)}", ""]
    lines += _header_lines(header)
    lines += [f"- {note}" for note in report.get("notes", [])]
    lines += _results_lines(rows)
    ratios = report.get("ratios") or compute_ratios(rows)
    lines += _engine_ratio_lines(ratios)
    lines += _small_vs_base_lines(ratios)
    lines += _memory_lines(ratios)
    lines += _skipped_lines(report.get("skipped"))
    if report.get("kernels") is not None:
        lines += ["", "## Kernel microbenchmarks", ""] + _kernel_lines(report["kernels"])
    return "\n".join(lines) + "\n"


def _range(ratio: Row) -> str:
    if ratio.get("speedup_low") is None:
        return "-"
    return f"{ratio['speedup_low']:.2f}-{ratio['speedup_high']:.2f}x"


def _kernel_lines(kernels: List[Dict[str, Any]]) -> List[str]:
    if not kernels:
        return ["(no benchmarks/bench_*.py defining run_summary() or main(argv) found)"]
    lines = _table(
        ["module", "entry", "status", "seconds", "summary"],
        (
            [
                k["module"],
                k.get("entry") or "-",
                k["status"],
                _fmt(k.get("seconds"), ".1f"),
                _one_line(k.get("summary") if k.get("summary") is not None else k.get("error")),
            ]
            for k in kernels
        ),
    )
    for k in kernels:
        summary = k.get("summary")
        if isinstance(summary, list) and summary and all(isinstance(s, dict) for s in summary):
            cols = list(dict.fromkeys(c for s in summary for c in s))
            lines += ["", f"#### {k['module']}", ""]
            lines += _table(cols, ([s.get(c, "") for c in cols] for s in summary))
    return lines


def _one_line(value: Any, limit: int = 120) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        text = f"{len(value)} rows"
    else:
        text = " ".join(str(value).split())
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def merge_results(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Several results files of one device (e.g. one per ``--models`` run) as one: the first
    header, all rows, notes and skips (deduplicated), ratios recomputed over all rows."""
    if not parts:
        raise ValueError("merge_results needs at least one results dict")
    if len(parts) == 1:
        return parts[0]
    rows = [r for p in parts for r in p["rows"]]
    notes = list(dict.fromkeys(n for p in parts for n in p.get("notes", [])))
    skipped = list(
        {json.dumps(s, sort_keys=True): s for p in parts for s in p.get("skipped", [])}.values()
    )
    return {
        **parts[0],
        "rows": rows,
        "notes": notes,
        "skipped": skipped,
        "ratios": compute_ratios(rows),
    }


# -- README table --------------------------------------------------------------------------------


def readme_table(report: Dict[str, Any]) -> str:
    """The README's performance table, rendered from a results JSON: one line per measured
    (model, op, resolution, impl) of the main suite, plus the peer rows, with the speedup over
    the eager reference and the PSNR against the fp32 reference."""
    header, rows = report["header"], report["rows"]
    index = {_key(r): r for r in _timed(rows)}
    git = (header.get("git") or {}).get("commit") or "unknown"
    dtypes = sorted({r["dtype"] for r in rows})
    lines = [
        f"Measured with `python benchmarks/run.py` on {device_label(header)}, torch "
        f"{header.get('torch')}, {'/'.join(dtypes)}, commit {git[:12]}, "
        f"{header.get('timestamp_utc', '')[:10]}. Random seeded weights; batch 1."
    ]
    lines += [
        f"{note}"
        for note in report.get("notes", [])
        if "reduced" in note.lower() or note.startswith("INTERRUPTED")
    ]
    cpu = not header.get("gpu_name")
    if cpu:
        lines.append(
            f"Load average (1/5/15 min) at start {header.get('load_average_at_start')} on "
            f"{header.get('cpu_count')} cores: other jobs on the machine slow CPU timings. "
            "CPU peak memory is the process RSS, the call's own part in brackets."
        )
    lines.append("")
    table_rows = []
    for r in rows:
        if r.get("suite") not in ("main", "peer"):
            continue
        ref = index.get(_key({**r, "impl": "reference"}))
        speedup = "-"
        if ref is not None and r.get("suite") == "main":
            significant = None if ref is r else ratio_spread(ref, r)[2]
            speedup = fmt_ratio(ref["latency_ms_p50"] / r["latency_ms_p50"], significant)
        table_rows.append(
            [
                f"CDT-{r['model']}" if r.get("suite") != "peer" else r["model"],
                r["op"],
                f"{r['frames']}x{size_label(r)}",
                impl_label(r),
                _readme_latency(r),
                _fmt(r.get("frames_per_s"), ".1f"),
                speedup,
                _mem(r) if cpu else fmt_bytes(r.get("peak_mem_bytes")),
                _fmt(r.get("pct_peak"), ".1f"),
                _psnr(r),
            ]
        )
    lines += _table(
        [
            "model",
            "op",
            "video (TxHxW)",
            "implementation",
            "latency (p50)",
            "frames/s",
            "vs reference",
            "peak memory",
            "% of peak",
            "PSNR vs fp32 (dB)",
        ],
        table_rows,
    )
    return "\n".join(lines) + "\n"


def _readme_latency(row: Row) -> str:
    if row.get("latency_ms_min") is None or row.get("latency_ms_max") is None:
        return f"{row['latency_ms_p50']:.1f} ms"
    return (
        f"{row['latency_ms_p50']:.1f} ms ({row['latency_ms_min']:.0f}-"
        f"{row['latency_ms_max']:.0f}, {row.get('repeats', '?')} rounds)"
    )
