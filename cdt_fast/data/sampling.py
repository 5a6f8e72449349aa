"""Which clip each rank trains on at each step, as a pure function of (seed, step, rank).

The data position of a run is then just its step count: resuming at step s reproduces exactly the
batches an uninterrupted run would have drawn, with any number of loader workers.

A dataset whose clips differ in shape (:meth:`ClipDataset.buckets`) is sampled one bucket per
step: the global batch of a step (every rank's clips) comes from one bucket, so each rank stacks
clips of one shape and all ranks run the same shape. Steps go in rounds; in each round bucket
``b`` gets ``ceil(n_b / global batch)`` steps (proportional to its size, at least one, so every
bucket is visited every round) in a seeded order. Each bucket walks its own stream of seeded
permutations, continued from round to round. With one bucket this is a plain walk through
per-epoch permutations of the dataset.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from .base import ClipDataset

__all__ = ["StepBatches"]


def _seed(*parts) -> int:
    """A seed for one stream of random choices named by ``parts``. torch's CPU generator keeps
    only the low 32 bits of a seed, so streams are told apart by a hash, not by offsets."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class StepBatches(Dataset):
    """Global sample position ``p`` -> clip. Positions walk through seeded permutations of each
    bucket of the dataset (see the module docstring); each clip's random choices come from a
    generator seeded by ``p``.

    ``batch_positions(step)`` gives this rank's positions at ``step``; ``batches(start)`` iterates
    them from ``start`` (a batch sampler for ``torch.utils.data.DataLoader``);
    ``bucket_of(step)`` is the bucket a step draws from.
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
        groups = dataset.buckets()
        self.groups: List[List[int]] = (
            [list(range(len(dataset)))] if groups is None else [list(g) for g in groups]
        )
        if not self.groups or any(not g for g in self.groups):
            raise ValueError("dataset.buckets() must give non-empty groups of indices")
        per_step = batch_size * world_size
        self._steps = [-(-len(g) // per_step) for g in self.groups]  # steps per round, by bucket
        self._round_length = sum(self._steps)
        self._round: Optional[Tuple[int, List[Tuple[int, int]]]] = None
        self._perms: Dict[int, Tuple[int, torch.Tensor]] = {}

    def __len__(self) -> int:  # positions are unbounded; DataLoader never asks with a batch sampler
        return len(self.dataset)

    def _schedule(self, round_: int) -> List[Tuple[int, int]]:
        """(bucket, how many times the bucket came earlier in the round) for each step of a
        round."""
        if self._round is None or self._round[0] != round_:
            order = torch.cat(
                [torch.full((k,), b, dtype=torch.long) for b, k in enumerate(self._steps)]
            )
            if len(self.groups) > 1:
                g = torch.Generator().manual_seed(_seed("order", self.seed, round_))
                order = order[torch.randperm(len(order), generator=g)]
            seen = [0] * len(self.groups)
            schedule = []
            for b in order.tolist():
                schedule.append((b, seen[b]))
                seen[b] += 1
            self._round = (round_, schedule)
        return self._round[1]

    def bucket_of(self, step: int) -> int:
        round_, j = divmod(step, self._round_length)
        return self._schedule(round_)[j][0]

    def _index(self, position: int) -> int:
        per_step = self.batch_size * self.world_size
        step, slot = divmod(position, per_step)
        round_, j = divmod(step, self._round_length)
        bucket, earlier = self._schedule(round_)[j]
        group = self.groups[bucket]
        # The bucket's own stream: every step it got in earlier rounds and earlier in this one.
        stream = (round_ * self._steps[bucket] + earlier) * per_step + slot
        epoch, at = divmod(stream, len(group))
        cached = self._perms.get(bucket)
        if cached is None or cached[0] != epoch:
            # bucket 0 (the only one of a dataset without buckets) keeps the plain walk's seeds
            seed = self.seed * 7919 + epoch if bucket == 0 else _seed(self.seed, bucket, epoch)
            g = torch.Generator().manual_seed(seed)
            cached = (epoch, torch.randperm(len(group), generator=g))
            self._perms[bucket] = cached
        return group[int(cached[1][at])]

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
