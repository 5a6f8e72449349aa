"""Which clip each rank trains on at each step, as a pure function of (seed, step, rank).

The data position of a run is then just its step count: resuming at step s reproduces exactly the
batches an uninterrupted run would have drawn, with any number of loader workers.
"""

from __future__ import annotations

from typing import Iterator, List, Optional

import torch
from torch.utils.data import Dataset

from .base import ClipDataset

__all__ = ["StepBatches"]


class StepBatches(Dataset):
    """Global sample position ``p`` -> clip. Positions walk through seeded permutations of the
    dataset (one per epoch); each clip's random choices come from a generator seeded by ``p``.

    ``batch_positions(step)`` gives this rank's positions at ``step``; ``batches(start)`` iterates
    them from ``start`` (a batch sampler for ``torch.utils.data.DataLoader``).
    """

    def __init__(
        self,
        dataset: ClipDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._perm_epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None

    def __len__(self) -> int:  # positions are unbounded; DataLoader never asks with a batch sampler
        return len(self.dataset)

    def _index(self, position: int) -> int:
        n = len(self.dataset)
        epoch = position // n
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perm, self._perm_epoch = torch.randperm(n, generator=g), epoch
        return int(self._perm[position % n])

    def __getitem__(self, position: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + position + 1)
        return self.dataset.clip(self._index(position), g)

    def batch_positions(self, step: int) -> List[int]:
        first = (step * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def batches(self, start_step: int = 0) -> Iterator[List[int]]:
        step = start_step
        while True:
            yield self.batch_positions(step)
            step += 1
