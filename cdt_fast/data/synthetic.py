"""Synthetic moving-pattern clips: deterministic by seed, no files, for tests and the demo model.

Each clip is a smooth colour field (two oriented colour gradients and a low-frequency grating) that
pans and zooms, with a few soft-edged discs and boxes moving across it at constant velocities. The
content is smooth enough for an 8x8x4-compressing tokenizer to reconstruct, and moving enough that
the temporal path is exercised.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .base import ClipDataset, check_clip_shape

__all__ = ["SyntheticVideos"]


class SyntheticVideos(ClipDataset):
    """``length`` clips of ``frames`` frames at ``size`` x ``size`` (or (H, W)); clip ``i`` depends
    only on ``(seed, i)``. Values in [-1, 1], shape [3, frames, H, W]."""

    def __init__(
        self, length: int = 100_000, frames: int = 9, size=64, seed: int = 0, shapes: int = 3
    ):
        self.height, self.width = check_clip_shape(frames, size)
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.length, self.frames, self.seed, self.shapes = length, frames, seed, shapes

    def __len__(self) -> int:
        return self.length

    def clip(self, index: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)

        def uniform(lo, hi, *shape):
            return lo + (hi - lo) * torch.rand(shape or (1,), generator=g)

        t = torch.arange(self.frames, dtype=torch.float32).reshape(-1, 1, 1)
        ys = torch.linspace(-1, 1, self.height).reshape(1, -1, 1)
        xs = torch.linspace(-1, 1, self.width).reshape(1, 1, -1)
        # Camera: pan velocity and zoom rate per frame.
        vx, vy = uniform(-0.08, 0.08), uniform(-0.08, 0.08)
        zoom = 1 + uniform(-0.04, 0.04) * t
        u, v = xs / zoom + vx * t, ys / zoom + vy * t

        colors = uniform(-1, 1, 4, 3)
        angle = uniform(0, math.pi)
        ramp = torch.tanh(1.5 * (u * torch.cos(angle) + v * torch.sin(angle)))
        freq, phase, angle2 = uniform(1.5, 4.0), uniform(0, 2 * math.pi), uniform(0, math.pi)
        grating = torch.sin(
            freq * (u * torch.cos(angle2) + v * torch.sin(angle2)) * math.pi + phase
        )
        image = (
            colors[0].reshape(3, 1, 1, 1) * (1 + ramp) / 2
            + colors[1].reshape(3, 1, 1, 1) * (1 - ramp) / 2
            + 0.35 * colors[2].reshape(3, 1, 1, 1) * grating
        )

        for _ in range(self.shapes):
            cx, cy = uniform(-0.8, 0.8), uniform(-0.8, 0.8)
            dx, dy = uniform(-0.1, 0.1), uniform(-0.1, 0.1)
            radius = uniform(0.15, 0.4)
            color = uniform(-1, 1, 3).reshape(3, 1, 1, 1)
            px, py = xs - (cx + dx * t), ys - (cy + dy * t)
            if bool(torch.rand(1, generator=g) < 0.5):
                dist = torch.sqrt(px**2 + py**2)
            else:
                dist = torch.maximum(px.abs(), py.abs())
            mask = torch.sigmoid((radius - dist) * 24.0)
            image = image * (1 - mask) + color * mask
        return image.clamp(-1, 1)
