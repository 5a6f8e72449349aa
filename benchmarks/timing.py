"""Latency and peak-memory measurement: the one timer of every benchmark in this folder.

The model benchmark (``run.py``) and the generator's (``bench_generation.py``) time whole calls
with :func:`measure_interleaved` / :func:`measure`; the op microbenchmarks (``bench_<op
family>.py``) time one op with :func:`kernel_ms`, which on CUDA hands the calls to Triton's
``do_bench`` and on CPU is :func:`measure`.

How calls are timed:

- Implementations are compared by interleaving them (:func:`measure_interleaved`): after
  ``warmup`` untimed calls of each (kernel selection, cuDNN benchmark search, compilation,
  allocator growth all happen there), every round times one call of every implementation, the
  order rotated by one each round (ABC, BCA, CAB, ...), so that a slow spell of a shared machine
  hits all of them alike instead of whichever happened to run then. We report the median over
  rounds and the spread (min-max, and p20/p80); a ratio of two implementations whose min-max
  ranges overlap is not significant (``report.py`` marks it so). :func:`measure` is the same for
  one callable.
- CUDA: each call is bracketed by CUDA events recorded on the current stream, after a
  ``torch.cuda.synchronize()`` so that earlier work is not charged to it; the events are read
  after synchronising again. This measures device time of the call including host launch gaps
  inside it, which is what a user waits for.
- CPU: ``time.perf_counter()`` around the call (CPU ops are synchronous).

Peak memory:

- CUDA: ``torch.cuda.max_memory_allocated`` during each timed call (peak stats are reset before
  it) minus what was allocated just before it: the call's own working memory
  (``peak_mem_delta_bytes``, the largest over the calls); ``peak_mem_bytes`` adds the bytes the
  caller says the implementation holds (``resident_bytes``: its weights and inputs), i.e. the
  peak of a process holding that implementation alone, although the interleaved implementations
  are all resident at once.
- CPU, best effort: ``tracemalloc`` cannot see torch's C++ allocations, so we sample the process's
  resident set size (psutil RSS) from a background thread every ``rss_interval_s`` during the timed
  call. ``peak_mem_bytes`` is the highest RSS seen (the whole process: Python, libraries,
  every implementation's weights), ``peak_mem_delta_bytes`` the largest growth of the RSS over
  its value just before a call. Before each baseline we ask glibc to hand freed heap back to the
  OS (``malloc_trim``) so the warm-up's freed-but-kept memory does not hide the call's own peak.
  Sampling can miss a peak shorter than the interval, and the allocator may reuse memory the
  baseline already holds, so CPU figures are a lower bound on the call's working memory; compare
  them only with each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "Timing",
    "measure",
    "measure_interleaved",
    "kernel_ms",
    "percentile",
    "RssSampler",
    "CUDA_MEM_METHOD",
    "CPU_MEM_METHOD",
]

CUDA_MEM_METHOD = (
    "torch.cuda.max_memory_allocated during each timed call minus the allocation before it "
    "(delta), plus the implementation's own weights and inputs (peak)"
)
CPU_MEM_METHOD = (
    "psutil RSS sampled every 2 ms during each timed call (best effort: a lower "
    "bound on working memory; delta is over the RSS after malloc_trim before the call)"
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

    @property
    def min(self) -> float:
        return min(self.samples_ms)

    @property
    def max(self) -> float:
        return max(self.samples_ms)


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
    resident_bytes: int = 0,
    memory: bool = True,
) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then up to ``repeats`` timed ones.

    ``max_time_s`` caps the timed phase: once ``min_repeats`` calls are done and the timed calls
    have taken longer than this, no more are started (slow CPU settings get fewer repeats instead
    of blowing the run's time budget). ``keep_output`` keeps the last call's return value.
    ``memory=False`` leaves a CPU call's memory unsampled (see :func:`measure_interleaved`).
    """
    timings, errors = measure_interleaved(
        {"fn": fn},
        device,
        warmup=warmup,
        rounds=repeats,
        min_rounds=min_repeats,
        max_time_s=max_time_s,
        keep_output=keep_output,
        resident_bytes={"fn": resident_bytes},
        memory=memory,
    )
    if errors:
        raise errors["fn"]
    return timings["fn"]


def measure_interleaved(
    fns: Dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    warmup: Union[int, Dict[str, int]] = 1,
    rounds: int = 5,
    min_rounds: int = 1,
    max_time_s: Optional[float] = None,
    deadline: Optional[float] = None,
    keep_output: bool = False,
    resident_bytes: Optional[Dict[str, int]] = None,
    after_warmup: Optional[Callable[[str], None]] = None,
    memory: bool = True,
) -> Tuple[Dict[str, Timing], Dict[str, BaseException]]:
    """Time several callables against each other: ``warmup`` untimed calls of each (an int, or
    per name), then up to ``rounds`` rounds, each timing one call of every callable, the order
    rotated by one per round. Rounds stop early once ``min_rounds`` are done and the timed
    phase has taken longer than ``max_time_s``, or, after at least one round, once
    ``time.perf_counter()`` passes ``deadline``. ``after_warmup(name)`` runs once per callable
    between its warm-up and the first timed round (e.g. to reset what the timed calls record).

    Returns ``(timings, errors)``: a callable that raises (e.g. out of memory) is dropped from
    the later rounds and its exception is returned under its name instead of a timing; the
    others go on. ``keep_output`` keeps each callable's last return value. ``memory=False``: on a
    CPU no RSS sampling and no ``malloc_trim`` before each call (which hands the heap back, so
    that the call then pays for fresh pages: right for its peak memory, wrong for timing an op
    that allocates); CUDA's counters cost nothing and are always read.
    """
    if not isinstance(fns, dict) or not fns:
        raise ValueError("fns must be a non-empty dict of name -> callable")
    warmups = warmup if isinstance(warmup, dict) else {name: warmup for name in fns}
    for name in fns:
        _check_counts(warmups.get(name, 0), rounds, min_rounds)
    if deadline is not None and not isinstance(deadline, (int, float)):
        raise ValueError(f"deadline must be a time.perf_counter() value, got {deadline!r}")
    device = torch.device(device)
    calls = _Calls(fns, device, memory)
    calls.warm_up(warmups, after_warmup)
    calls.rounds(rounds, min_rounds, max_time_s, deadline)
    return calls.timings(warmups, resident_bytes or {}, keep_output), calls.errors


class _Calls:
    """The state of one interleaved measurement: every callable's samples, peaks, last output
    and, once it raised, its error."""

    def __init__(self, fns: Dict[str, Callable[[], Any]], device: torch.device, memory: bool):
        self.fns, self.device, self.memory = fns, device, memory
        self.names = list(fns)
        self.errors: Dict[str, BaseException] = {}
        self.outputs: Dict[str, Any] = {}
        self.samples: Dict[str, List[float]] = {}
        self.peaks: Dict[str, int] = {}
        self.deltas: Dict[str, int] = {}
        self.mem_seen: Dict[str, bool] = {}

    def _failed(self, name: str, err: BaseException) -> None:
        self.errors[name] = err
        _release_cached(self.device)

    def warm_up(
        self, warmups: Dict[str, int], after_warmup: Optional[Callable[[str], None]]
    ) -> None:
        for name in self.names:
            try:
                for _ in range(warmups.get(name, 0)):
                    self.outputs[name] = self.fns[name]()
            except Exception as err:  # noqa: BLE001 - reported per implementation
                self._failed(name, err)
                continue
            if after_warmup is not None:
                after_warmup(name)
        live = [n for n in self.names if n not in self.errors]
        self.samples = {n: [] for n in live}
        self.peaks = {n: 0 for n in live}
        self.deltas = {n: 0 for n in live}
        self.mem_seen = {n: True for n in live}

    def _time_one(self, name: str) -> None:
        try:
            ms, peak, delta, out = _timed_call(self.fns[name], self.device, self.memory)
        except Exception as err:  # noqa: BLE001 - reported per implementation
            self._failed(name, err)
            return
        self.samples[name].append(ms)
        if peak is None:
            self.mem_seen[name] = False
        else:
            self.peaks[name] = max(self.peaks[name], peak)
            self.deltas[name] = max(self.deltas[name], delta)
        self.outputs[name] = out

    def rounds(
        self,
        rounds: int,
        min_rounds: int,
        max_time_s: Optional[float],
        deadline: Optional[float],
    ) -> None:
        started = time.perf_counter()
        done = 0
        while done < rounds and self.samples.keys() - self.errors.keys():
            live = [n for n in self.names if n in self.samples and n not in self.errors]
            for name in live[done % len(live) :] + live[: done % len(live)]:
                self._time_one(name)
            done += 1
            now = time.perf_counter()
            if (max_time_s is not None and done >= min_rounds and now - started > max_time_s) or (
                deadline is not None and now > deadline
            ):
                break

    def timings(
        self, warmups: Dict[str, int], resident: Dict[str, int], keep_output: bool
    ) -> Dict[str, Timing]:
        out: Dict[str, Timing] = {}
        for name, taken in self.samples.items():
            if name in self.errors or not taken:
                continue
            output = self.outputs.get(name) if keep_output else None
            warm = warmups.get(name, 0)
            if self.device.type == "cuda":
                peak = self.deltas[name] + int(resident.get(name, 0))
                out[name] = Timing(taken, peak, self.deltas[name], CUDA_MEM_METHOD, warm, output)
            elif not self.mem_seen[name]:
                method = "not measured: " + (
                    "psutil is not installed" if self.memory else "memory=False"
                )
                out[name] = Timing(taken, None, None, method, warm, output)
            else:
                peak, delta = self.peaks[name], self.deltas[name]
                out[name] = Timing(taken, peak, delta, CPU_MEM_METHOD, warm, output)
        return out


def kernel_ms(
    fn: Callable[[], Any], device: Union[str, torch.device], *, repeats: int = 5
) -> float:
    """Median milliseconds of one call of an op, for the op microbenchmarks. CUDA: Triton's
    ``do_bench`` (25 ms of warm-up, then 100 ms of calls with the L2 cache flushed before each,
    timed by CUDA events), the usual way to time a kernel of microseconds, where one
    synchronised call per sample (:func:`measure`) would mostly time the launch. CPU:
    :func:`measure` without memory sampling, one warm-up and ``repeats`` timed calls."""
    device = torch.device(device)
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    return measure(fn, device, warmup=1, repeats=repeats, memory=False).p50


def _release_cached(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed_call(fn: Callable[[], Any], device: torch.device, memory: bool = True):
    """(milliseconds, peak bytes or None, own bytes or None, output) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        output = fn()
        end.record()
        torch.cuda.synchronize(device)
        peak = int(torch.cuda.max_memory_allocated(device))
        return float(start.elapsed_time(end)), peak, max(0, peak - before), output
    try:
        rss: Optional[RssSampler] = RssSampler() if memory else None
    except ImportError:
        rss = None
    with rss if rss is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        output = fn()
        ms = (time.perf_counter() - t0) * 1e3
    if rss is None:
        return ms, None, None, output
    return ms, rss.peak, max(0, rss.peak - rss.baseline), output
