"""Run the launchers' autotuned path under the Triton interpreter (CI has no GPU): key names,
config pruning, grid callables and ``restore_value`` (in-place outputs survive the tuning reruns)
are otherwise only exercised on a GPU. Used by the fused-kernel tests through ``monkeypatch``."""

from __future__ import annotations


def tune_on_cpu(monkeypatch, tuned, tiles, configs: int = 3) -> None:
    """Make the launcher of ``tuned`` take its (opt-in) autotuned branch: a few configs,
    no cached choice, and a stand-in timer that runs each config twice (as a benchmark reruns it)
    and ranks them by their order; winners go to the tile file ``tiles``."""
    from cdt_fast.kernels import _tiles

    # The interpreter has no GPU benchmarker (launch refuses to tune there): the stand-in timer
    # below replaces it.
    monkeypatch.setattr(_tiles, "interpreting", lambda: False)
    monkeypatch.setenv("CDT_FAST_AUTOTUNE", "1")
    monkeypatch.setenv("CDT_FAST_TILES", str(tiles))
    monkeypatch.setattr(tuned, "configs", tuned.configs[:configs])
    monkeypatch.setattr(tuned, "cache", {})
    timings = iter(range(1, 1 << 20))

    def rerun_twice(kernel_call, quantiles):
        kernel_call()
        kernel_call()
        t = float(next(timings))
        return [t, t, t]

    monkeypatch.setattr(tuned, "_do_bench", rerun_twice)
