"""Rebuffering: frames along dim 2 arrive as a tensor or as an iterator of pieces of any length,
and leave in the chunk sizes the networks need."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import torch

__all__ = ["FrameQueue"]

Source = Union[torch.Tensor, Iterable[torch.Tensor], Any]


class FrameQueue:
    """A queue of frames (dim 2 of 5-D tensors) read lazily from ``source``.

    ``source``: a tensor; a lazily sliced clip (anything with ``shape`` whose ``[:, :, a:b]``
    returns a tensor, read front to back, e.g. the CLI's ``PaddedClip``); or an iterable of tensor
    pieces of any lengths. ``check(piece, name)`` validates each piece as it arrives. ``total`` is
    the number of frames when the source has a shape, else None (known only at the end). Taking
    frames slices views; a chunk that spans pieces is concatenated once.
    """

    def __init__(self, source: Source, check: Callable[[torch.Tensor, str], object], name: str):
        self.name = name
        self._check = check
        self._pieces: deque = deque()
        self._buffered = 0
        self._count = 0
        self._shape = None
        self._sliced = None
        if isinstance(source, torch.Tensor):
            self.total: Optional[int] = source.shape[2]
            self._source: Iterator[torch.Tensor] = iter((source,))
        elif hasattr(source, "shape") and hasattr(source, "__getitem__"):
            self.total, self._sliced, self._read = source.shape[2], source, 0
        else:
            try:
                self._source = iter(source)
            except TypeError:
                raise TypeError(
                    f"{name} must be a torch.Tensor or an iterable of tensors, got "
                    f"{type(source).__name__}"
                ) from None
            self.total = None
        self.exhausted = False

    def _pull(self, need: int) -> bool:
        if self._sliced is not None:  # read exactly what is needed, in order
            stop = min(self.total, self._read + need)
            piece = self._sliced[:, :, self._read : stop] if stop > self._read else None
            self._read = stop
        else:
            piece = next(self._source, None)
        if piece is None:
            self.exhausted = True
            return False
        label = self.name if self.total is not None else f"{self.name}[piece {self._count}]"
        self._check(piece, label)
        outside_time = piece.shape[:2] + piece.shape[3:]
        if self._shape is None:
            self._shape = outside_time
        elif outside_time != self._shape:
            raise ValueError(
                f"{label} has shape {tuple(piece.shape)}, which differs from earlier "
                f"pieces outside dim 2 (frames): {tuple(self._shape)}"
            )
        self._count += 1
        if piece.shape[2]:
            self._pieces.append(piece)
            self._buffered += piece.shape[2]
        return True

    def available(self, wanted: int) -> int:
        """Buffer up to ``wanted`` frames (fewer only at the source's end); return the count."""
        while self._buffered < wanted and not self.exhausted:
            self._pull(wanted - self._buffered)
        return min(wanted, self._buffered)

    def peek(self, n: int) -> torch.Tensor:
        """The next ``n`` buffered frames, without consuming them (a retry may need them again)."""
        parts, left = [], n
        for piece in self._pieces:
            parts.append(piece[:, :, :left])
            left -= parts[-1].shape[2]
            if not left:
                break
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def drop(self, n: int) -> None:
        while n:
            head = self._pieces[0]
            if head.shape[2] <= n:
                self._pieces.popleft()
                n -= head.shape[2]
                self._buffered -= head.shape[2]
            else:
                self._pieces[0] = head[:, :, n:]
                self._buffered -= n
                n = 0

    @property
    def empty(self) -> bool:
        return self.available(1) == 0
