"""What every clip dataset provides, and the shape checks they share."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

__all__ = ["ClipDataset", "check_clip_shape"]


def check_clip_shape(frames, size) -> Tuple[int, int]:
    """Validate ``frames`` (1+4k) and ``size`` (int or (H, W), multiples of 8); returns (H, W)."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames must be 1+4k (1, 5, 9, 17, ...), got {frames!r}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 8 or s % 8 for s in hw
    ):
        raise ValueError(f"size must be an int or (H, W) of positive multiples of 8, got {size!r}")
    return hw


class ClipDataset:
    """A finite collection of clips. ``clip(index, generator)`` returns one clip
    [3, T, H, W] in [-1, 1] (float32); ``generator`` draws any random choice (start frame, crop),
    so that the same (index, generator state) always gives the same clip."""

    frames: int

    def __len__(self) -> int:
        raise NotImplementedError

    def clip(self, index: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.clip(index)

    def buckets(self) -> Optional[List[List[int]]]:
        """Groups of indices whose clips share one shape, for a dataset whose clips differ in
        shape (a batch takes clips of one group); None: every clip has the same shape."""
        return None
