"""benchmarks/timing.py: percentiles, warm-up and rounds, time budgets, memory sampling and the
interleaved statistics."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from benchmarks import timing


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 10):
        samples = list(rng.random(n) * 100)
        for q in (0, 20, 50, 80, 100):
            assert timing.percentile(samples, q) == pytest.approx(np.percentile(samples, q))
    with pytest.raises(ValueError, match="q"):
        timing.percentile([1.0], 101)
    with pytest.raises(ValueError, match="sample"):
        timing.percentile([], 50)


def test_measure_warmup_repeats_and_percentiles():
    calls = []
    durations = iter([0.0, 0.004, 0.012, 0.020, 0.028, 0.036])  # warm-up, then 5 timed calls

    def fn():
        calls.append(1)
        time.sleep(next(durations))
        return len(calls)

    t = timing.measure(fn, torch.device("cpu"), warmup=1, repeats=5, keep_output=True)
    assert len(calls) == 6 and t.repeats == 5 and t.warmup == 1 and t.output == 6
    assert all(s >= d * 0.99 for s, d in zip(t.samples_ms, [4, 12, 20, 28, 36]))
    assert t.p20 <= t.p50 <= t.p80
    assert t.p50 == timing.percentile(t.samples_ms, 50)
    assert t.peak_mem_bytes > 0 and t.peak_mem_delta_bytes >= 0 and "RSS" in t.mem_method


def test_measure_time_budget_and_bad_counts():
    t = timing.measure(lambda: time.sleep(0.03), "cpu", warmup=0, repeats=50, max_time_s=0.01)
    assert t.repeats == 1 and t.output is None
    t = timing.measure(lambda: None, "cpu", warmup=0, repeats=4, min_repeats=3, max_time_s=0.0)
    assert t.repeats == 3
    for bad in (dict(repeats=0), dict(warmup=-1), dict(repeats=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            timing.measure(lambda: None, "cpu", **bad)


def test_rss_sampler_sees_a_large_allocation():
    with timing.RssSampler() as rss:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.02)
        del block
    assert rss.peak - rss.baseline >= 48 * 2**20


def test_measure_interleaved_rotates_the_order_and_isolates_failures():
    calls = []

    def make(name, fail_at=None):
        def fn():
            calls.append(name)
            if fail_at is not None and calls.count(name) == fail_at:
                raise RuntimeError(f"{name} broke")
            return name

        return fn

    timings, errors = timing.measure_interleaved(
        {"a": make("a"), "b": make("b"), "c": make("c", fail_at=3)},
        "cpu",
        warmup={"a": 1, "b": 0, "c": 0},
        rounds=4,
        keep_output=True,
        after_warmup=lambda name: calls.append(name + "!"),
    )
    # warm-up a; each one's after_warmup before any timed call; then rounds abc, bca,
    # (ab: c raised in the third round) -> a b, then ab
    assert calls == ["a", "a!", "b!", "c!", "a", "b", "c", "b", "c", "a", "c", "a", "b", "b", "a"]
    assert set(timings) == {"a", "b"} and timings["a"].repeats == timings["b"].repeats == 4
    assert timings["a"].output == "a" and timings["a"].warmup == 1
    assert str(errors["c"]) == "c broke"
    assert timings["a"].min <= timings["a"].p50 <= timings["a"].max


def test_measure_interleaved_budget_and_deadline():
    slow = lambda: time.sleep(0.02)  # noqa: E731
    t, _ = timing.measure_interleaved(
        {"x": slow, "y": slow}, "cpu", warmup=0, rounds=20, min_rounds=2, max_time_s=0.0
    )
    assert t["x"].repeats == t["y"].repeats == 2
    t, _ = timing.measure_interleaved(
        {"x": slow}, "cpu", warmup=0, rounds=20, min_rounds=5, deadline=time.perf_counter()
    )
    assert t["x"].repeats == 1  # past the deadline: one round, then stop
    with pytest.raises(ValueError, match="fns"):
        timing.measure_interleaved({}, "cpu")


def test_kernel_ms_on_cpu_is_the_median_without_memory_sampling(monkeypatch):
    """The op microbenchmarks' CPU timer: one warm-up, then the median of ``repeats`` calls, with
    no RSS sampler and no malloc_trim around them (fresh pages would be timed as the op's)."""

    def no_sampler(*args, **kwargs):
        raise AssertionError("kernel_ms must not sample memory")

    monkeypatch.setattr(timing, "RssSampler", no_sampler)
    calls = []
    durations = iter([0.0, 0.004, 0.012, 0.002])  # warm-up, then 3 timed calls

    def fn():
        calls.append(1)
        time.sleep(next(durations))

    ms = timing.kernel_ms(fn, "cpu", repeats=3)
    assert len(calls) == 4 and 4.0 * 0.99 <= ms < 12.0
    t = timing.measure(lambda: None, "cpu", warmup=0, repeats=1, memory=False)
    assert t.peak_mem_bytes is None and t.mem_method == "not measured: memory=False"
