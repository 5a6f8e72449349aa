"""Per-layer stream state of the engine: preallocated, double-buffered history frames.

A chunk reads every layer's history from ``cur`` and writes the next history into ``nxt``; only
when the whole chunk has succeeded does :meth:`StreamState.commit` copy ``nxt`` over ``cur``. So a
chunk that fails half way (CUDA out of memory) leaves the stream exactly where it was, and the
retry with a smaller chunk continues it. The copies are of the last 1-2 frames per layer only.

Buffers are allocated on a layer's first chunk, sized from that chunk (batch, channels, H, W), and
reused by every later chunk and every later stream of the same shape (:meth:`reset`), which is what
lets a captured CUDA graph keep pointing at them.
"""

from __future__ import annotations

from typing import Dict, Optional, Set

import torch

__all__ = ["History", "StreamState"]

_CL3D = torch.channels_last_3d


def _format_of(x: torch.Tensor) -> torch.memory_format:
    cl = x.is_contiguous(memory_format=_CL3D) and not x.is_contiguous()
    return _CL3D if cl else torch.contiguous_format


class History:
    """The last ``frames`` input frames of one causal layer (fewer at the start of a stream)."""

    __slots__ = ("frames", "cur", "nxt", "valid", "next_valid")

    def __init__(self, frames: int):
        self.frames = frames
        self.cur: Optional[torch.Tensor] = None
        self.nxt: Optional[torch.Tensor] = None
        self.valid = 0
        self.next_valid = 0

    def past(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """What the layer's op takes as ``past`` for chunk ``x`` (None at the stream's start)."""
        if self.cur is None:
            b, c, _, h, w = x.shape
            shape = (b, c, self.frames, h, w)
            self.cur = torch.zeros(shape, dtype=x.dtype, device=x.device).contiguous(
                memory_format=_format_of(x)
            )
            self.nxt = torch.zeros_like(self.cur)
        if self.valid == 0:
            return None
        return self.cur[:, :, self.frames - self.valid :]

    def advance(self, x: torch.Tensor, past: Optional[torch.Tensor], ops) -> None:
        """Write the history the next chunk needs, the last frames of ``[past | x]``, into nxt."""
        h, t = self.frames, x.shape[2]
        if t >= h:
            self.nxt.copy_(x[:, :, t - h :])
        elif self.valid == h:  # steady state with a short chunk: shift, then append
            self.nxt[:, :, : h - t].copy_(self.cur[:, :, t:])
            self.nxt[:, :, h - t :].copy_(x)
        else:  # the stream's first frames: rare, goes through the op contract
            new = ops("causal_conv3d_history", x, past, h)
            self.nxt[:, :, h - new.shape[2] :].copy_(new)
        self.next_valid = min(h, self.valid + t)

    def commit(self) -> None:
        if self.cur is not None and self.next_valid:
            self.cur.copy_(self.nxt)
        self.valid = self.next_valid

    def rollback(self) -> None:
        self.next_valid = self.valid

    def reset(self) -> None:
        self.valid = self.next_valid = 0

    @property
    def full(self) -> bool:
        return self.valid == self.frames

    def nbytes(self) -> int:
        return 0 if self.cur is None else 2 * self.cur.numel() * self.cur.element_size()


class StreamState:
    """The state of one stream through one network: histories per layer and the set of layers
    that have already run (temporal upsampling drops a frame on its first chunk only)."""

    def __init__(self) -> None:
        self.histories: Dict[object, History] = {}
        self.started: Set[object] = set()
        self._pending: Set[object] = set()
        self.chunks = 0

    def history(self, layer: object, frames: int) -> History:
        hist = self.histories.get(layer)
        if hist is None:
            hist = self.histories[layer] = History(frames)
        return hist

    def first_call(self, layer: object) -> bool:
        self._pending.add(layer)
        return layer not in self.started

    def commit(self) -> None:
        for hist in self.histories.values():
            hist.commit()
        self.started |= self._pending
        self._pending.clear()
        self.chunks += 1

    def rollback(self) -> None:
        for hist in self.histories.values():
            hist.rollback()
        self._pending.clear()

    def reset(self) -> None:
        """Start a new stream, keeping the buffers."""
        for hist in self.histories.values():
            hist.reset()
        self.started.clear()
        self._pending.clear()
        self.chunks = 0

    def signature(self) -> tuple:
        """What of this state decides a chunk's launch sequence: each history's frame count (only
        the non-empty ones: a fresh stream looks the same before and after its buffers exist)
        and the layers that have started."""
        held = tuple((layer, h.valid) for layer, h in self.histories.items() if h.valid)
        return held, frozenset(self.started)

    def snapshot(self) -> tuple:
        """The Python-side state (not the buffers' contents), for :meth:`restore`."""
        counts = tuple((h, h.valid, h.next_valid) for h in self.histories.values())
        return counts, frozenset(self.started), frozenset(self._pending), self.chunks

    def restore(self, snapshot: tuple) -> None:
        """Set the Python-side state to a snapshot: after a replayed CUDA graph, which updates
        the buffers but runs no Python, or after a capture that failed."""
        counts, started, pending, self.chunks = snapshot
        for h, valid, next_valid in counts:
            h.valid, h.next_valid = valid, next_valid
        self.started, self._pending = set(started), set(pending)

    @property
    def steady(self) -> bool:
        """Every history is full: the next chunk runs the same code as every later one."""
        return self.chunks > 0 and all(h.full for h in self.histories.values())

    def nbytes(self) -> int:
        return sum(h.nbytes() for h in self.histories.values())
