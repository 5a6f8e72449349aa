"""Latency and peak-memory measurement for one benchmarked call.

How a call is timed:

- ``warmup`` untimed calls first (kernel selection, cuDNN benchmark search, compilation, allocator
  growth all happen there), then ``repeats`` timed calls; we report percentiles (p20/p50/p80) of
  the per-call latencies, never a single run or a mean that one outlier drags.
- CUDA: each call is bracketed by CUDA events recorded on the current stream, after a
  ``torch.cuda.synchronize()`` so that earlier work is not charged to it; the events are read
  after synchronising again. This measures device time of the call including host launch gaps
  inside it, which is what a user waits for.
- CPU: ``time.perf_counter()`` around the call (CPU ops are synchronous).

Peak memory:

- CUDA: ``torch.cuda.max_memory_allocated`` over the timed calls (peak stats are reset after the
  warm-up): bytes held by live tensors at the worst moment, weights and inputs included
  (``peak_mem_bytes``), and the same minus what was allocated before the timed calls
  (``peak_mem_delta_bytes``: the call's own working memory).
- CPU, best effort: ``tracemalloc`` cannot see torch's C++ allocations, so we sample the process's
  resident set size (psutil RSS) from a background thread every ``rss_interval_s`` during the timed
  calls. ``peak_mem_bytes`` is the highest RSS seen (the whole process: Python, libraries,
  weights), ``peak_mem_delta_bytes`` that minus the RSS just before the timed calls. Before the
  baseline we ask glibc to hand freed heap back to the OS (``malloc_trim``) so the warm-up's
  freed-but-kept memory does not hide the call's own peak. Sampling can miss a peak shorter than
  the interval, and the allocator may reuse memory the baseline already holds, so CPU figures are
  a lower bound on the call's working memory; compare them only with each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import torch

__all__ = ["Timing", "measure", "percentile", "RssSampler", "CUDA_MEM_METHOD", "CPU_MEM_METHOD"]

CUDA_MEM_METHOD = "torch.cuda.max_memory_allocated over the timed calls"
CPU_MEM_METHOD = (
    "psutil RSS sampled every 2 ms during the timed calls (best effort: a lower "
    "bound on working memory; delta is over the RSS after malloc_trim)"
)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default method), without needing numpy."""
    if not samples:
        raise ValueError("percentile needs at least one sample")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    ordered = sorted(float(s) for s in samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Timing:
    """Per-call latencies (ms) of the timed calls and the peak memory seen during them."""

    samples_ms: List[float]
    peak_mem_bytes: Optional[int]
    peak_mem_delta_bytes: Optional[int]
    mem_method: str
    warmup: int
    output: Any = field(default=None, repr=False, compare=False)

    @property
    def repeats(self) -> int:
        return len(self.samples_ms)

    @property
    def p20(self) -> float:
        return percentile(self.samples_ms, 20)

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p80(self) -> float:
        return percentile(self.samples_ms, 80)


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc only; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssSampler:
    """Context manager that samples this process's RSS in a thread; ``peak`` and ``baseline``
    are bytes. Torch ops release the GIL, so the thread keeps sampling while they run."""

    def __init__(self, interval_s: float = 0.002):
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.baseline = 0
        self.peak = 0

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "RssSampler":
        _release_free_heap()
        self.baseline = self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._rss())


def _check_counts(warmup: int, repeats: int, min_repeats: int) -> None:
    for name, value, low in (
        ("warmup", warmup, 0),
        ("repeats", repeats, 1),
        ("min_repeats", min_repeats, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def measure(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    warmup: int = 1,
    repeats: int = 5,
    min_repeats: int = 1,
    max_time_s: Optional[float] = None,
    keep_output: bool = False,
) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then up to ``repeats`` timed ones.

    ``max_time_s`` caps the timed phase: once ``min_repeats`` calls are done and the timed calls
    have taken longer than this, no more are started (slow CPU settings get fewer repeats instead
    of blowing the run's time budget). ``keep_output`` keeps the last call's return value.
    """
    _check_counts(warmup, repeats, min_repeats)
    device = torch.device(device)
    output = None
    for _ in range(warmup):
        output = fn()
    if device.type == "cuda":
        return _measure_cuda(fn, device, warmup, repeats, min_repeats, max_time_s, keep_output)
    samples: List[float] = []
    started = time.perf_counter()
    try:
        rss: Optional[RssSampler] = RssSampler()
    except ImportError:
        rss = None
    with rss if rss is not None else contextlib.nullcontext():
        for i in range(repeats):
            t0 = time.perf_counter()
            output = fn()
            samples.append((time.perf_counter() - t0) * 1e3)
            if _budget_spent(i + 1, min_repeats, started, max_time_s):
                break
    output = output if keep_output else None
    if rss is None:
        return Timing(samples, None, None, "not measured: psutil is not installed", warmup, output)
    return Timing(
        samples, rss.peak, max(0, rss.peak - rss.baseline), CPU_MEM_METHOD, warmup, output
    )


def _budget_spent(done: int, min_repeats: int, started: float, max_time_s: Optional[float]) -> bool:
    return (
        max_time_s is not None
        and done >= min_repeats
        and time.perf_counter() - started > max_time_s
    )


def _measure_cuda(fn, device, warmup, repeats, min_repeats, max_time_s, keep_output) -> Timing:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    samples: List[float] = []
    output = None
    started = time.perf_counter()
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        output = fn()
        end.record()
        torch.cuda.synchronize(device)
        samples.append(float(start.elapsed_time(end)))
        if _budget_spent(i + 1, min_repeats, started, max_time_s):
            break
    peak = int(torch.cuda.max_memory_allocated(device))
    return Timing(
        samples,
        peak,
        max(0, peak - before),
        CUDA_MEM_METHOD,
        warmup,
        output if keep_output else None,
    )
