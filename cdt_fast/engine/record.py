"""What an engine actually ran: calls per (op, backend) and what its CUDA graphs did.

An engine's op table counts every op call it serves under the backend that served it (a dict
increment after the call returns: no tensor allocation, no device sync). A block op served
"composed" is not counted itself: its parts go through the table and count under their own names
and real backends.

A CUDA graph replay runs no Python, so no op is counted during one. The ops inside a captured
graph are the ones that ran while it was captured, on the backends they were captured with; so
the capture notes what was counted while it ran, and each replay adds those counts again. Every
chunk step is thus counted once whether it ran eagerly, was captured or was replayed.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

__all__ = ["ExecutionRecord", "Counts"]

# op -> backend -> calls
Counts = Dict[str, Dict[str, int]]

_WARM_UP = "warm-up: a chunk step is captured the second time its key is seen"


class ExecutionRecord:
    """Calls per (op, backend) and the CUDA graph events of one engine, since the last
    :meth:`reset`. ``ops``: the op names the table serves."""

    def __init__(self, ops: Iterable[str]):
        self.calls: Counts = {op: {} for op in ops}
        self.captures = 0  # chunk steps captured into a graph (and computed by it)
        self.replays = 0  # replays of graphs captured before
        self.eager = 0  # chunk steps run without a graph
        self.eager_reason: Optional[str] = None  # why the last of them ran without one

    def reset(self) -> None:
        for counts in self.calls.values():
            counts.clear()
        self.captures = self.replays = self.eager = 0
        self.eager_reason = None

    def count(self, op: str, backend: str) -> None:
        counts = self.calls[op]
        counts[backend] = counts.get(backend, 0) + 1

    # -- CUDA graphs ---------------------------------------------------------------------------
    def mark(self) -> Counts:
        """The op counts now, for :meth:`since` and :meth:`restore`."""
        return {op: dict(counts) for op, counts in self.calls.items()}

    def since(self, mark: Counts) -> Counts:
        """The calls counted after ``mark``."""
        out: Counts = {}
        for op, counts in self.calls.items():
            before = mark.get(op, {})
            grown = {b: n - before.get(b, 0) for b, n in counts.items() if n > before.get(b, 0)}
            if grown:
                out[op] = grown
        return out

    def restore(self, mark: Counts) -> None:
        """Forget the calls counted after ``mark`` (a capture that failed, whose step then runs
        eagerly and counts again)."""
        for op, counts in self.calls.items():
            counts.clear()
            counts.update(mark.get(op, {}))

    def add(self, counts: Counts) -> None:
        for op, by_backend in counts.items():
            mine = self.calls[op]
            for backend, n in by_backend.items():
                mine[backend] = mine.get(backend, 0) + n

    def ran_eagerly(self, reason: Optional[str]) -> None:
        self.eager += 1
        self.eager_reason = reason or _WARM_UP

    def captured(self) -> None:
        """A step captured: its ops were counted as the capture ran its Python once."""
        self.captures += 1

    def replayed(self, counts: Counts) -> None:
        self.replays += 1
        self.add(counts)

    # -- reading -------------------------------------------------------------------------------
    def ops(self) -> Counts:
        """{op: {backend: calls}} of the ops that ran, backends sorted."""
        return {
            op: {b: counts[b] for b in sorted(counts)}
            for op, counts in self.calls.items()
            if counts
        }

    def graphs(self) -> dict:
        """``state``: "replayed" (some chunk steps replayed a graph), "captured" (graphs were
        captured, none replayed yet) or "off" (every chunk step ran eagerly); ``reason``: why the
        last eager chunk step ran without a graph (None when none did); ``captures``,
        ``replays``, ``eager``: chunk steps of each kind."""
        state = "replayed" if self.replays else ("captured" if self.captures else "off")
        return {
            "state": state,
            "reason": self.eager_reason if self.eager else None,
            "captures": self.captures,
            "replays": self.replays,
            "eager": self.eager,
        }

    def as_dict(self) -> dict:
        return {"ops": self.ops(), "cuda_graphs": self.graphs()}
