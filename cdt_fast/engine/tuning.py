"""``tune``'s measurements: which backends it times, and the timings, rejections and winner of
each (arch, op, shape class)."""

from __future__ import annotations

import time
from typing import Dict, List, Tuple

import torch

from .registry import OpChoice, implementations

__all__ = ["Measurements", "tune_order"]

# The backends tune times, compiled code first. Triton under the CPU interpreter is far slower
# than torch, so it is never a candidate there.
_TUNE_ORDER = {
    "cuda": ("cuda", "triton", "flash", "xformers", "sdpa", "torch"),
    "cpu": ("cpp", "sdpa", "torch"),
}


def tune_order(op: str, device: torch.device) -> Tuple[str, ...]:
    """The backends ``tune`` times for ``op`` on ``device``: those that implement it, in
    :data:`_TUNE_ORDER`."""
    order = _TUNE_ORDER["cuda" if device.type == "cuda" else "cpu"]
    return tuple(b for b in order if op in implementations(b))


class Measurements:
    """``tune``'s record: timings of each candidate per (arch, op, shape class), the rejected
    candidates (raised, or disagreed with torch) and the winner. Owned by an engine (or shared
    between engines on purpose); nothing global."""

    def __init__(self, repeats: int = 3):
        self.repeats = repeats
        self.timings: Dict[tuple, Dict[str, float]] = {}
        self.winner: Dict[tuple, str] = {}
        self.rejected: Dict[tuple, Dict[str, str]] = {}

    def pick(self, key: tuple, candidates: List[OpChoice], args, kwargs) -> OpChoice:
        """The fastest of the candidates that agree with torch on this call (measured once per
        ``key``)."""
        if key not in self.winner:
            self._select(key, candidates, args, kwargs)
        name = self.winner[key]
        return next(c for c in candidates if c.backend == name)

    def _select(self, key, candidates: List[OpChoice], args, kwargs) -> None:
        torch_choice = next(c for c in candidates if c.backend == "torch")
        expected = torch_choice.fn(*args, **kwargs)
        times, rejected = {}, {}
        for choice in candidates:
            if choice.backend != "torch":
                try:  # vetting a candidate once per shape class, not guarding calls
                    out = choice.fn(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - any failure disqualifies it
                    rejected[choice.backend] = f"{type(err).__name__}: {err}"
                    continue
                if not _close(out, expected):
                    rejected[choice.backend] = "result differs from torch beyond tolerance"
                    continue
            times[choice.backend] = self._time(choice.fn, args, kwargs)
        self.timings[key], self.rejected[key] = times, rejected
        self.winner[key] = min(times, key=times.get)

    def _time(self, fn, args, kwargs) -> float:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        sync = (
            torch.cuda.synchronize
            if device is not None and device.type == "cuda"
            else (lambda: None)
        )
        fn(*args, **kwargs)
        sync()
        start = time.perf_counter()
        for _ in range(self.repeats):
            fn(*args, **kwargs)
        sync()
        return (time.perf_counter() - start) / self.repeats


def _close(out, expected) -> bool:
    if out.shape != expected.shape or out.dtype != expected.dtype:
        return False
    tol = 1e-3 if expected.dtype == torch.float32 else 5e-2
    return bool(torch.allclose(out.float(), expected.float(), rtol=tol, atol=tol))
