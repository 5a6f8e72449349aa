"""The decoder's starting noise, chunk by chunk: drawn per latent frame for a stream of unknown
length, or sliced from a tensor given whole. Both keep what a retried chunk needs."""

from __future__ import annotations

import torch

from .. import chunking

__all__ = ["FramewiseNoise", "NoiseSlices"]


class FramewiseNoise:
    """Noise for a stream of unknown length: one draw of [B, C, time_factor, H, W] per latent
    frame (the first frame keeps its last video frame), kept until consumed so that a retried
    chunk sees the same values."""

    def __init__(self, shape, time_factor: int, generator, device):
        self.shape, self.tf, self.generator = shape, time_factor, generator
        self.device = generator.device if generator is not None else device
        self.frames = {}

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        for i in range(start, stop):
            if i not in self.frames:
                draw = torch.randn(self.shape, generator=self.generator, device=self.device)
                self.frames[i] = draw[:, :, self.tf - 1 :] if i == 0 else draw
        return torch.cat([self.frames[i] for i in range(start, stop)], dim=2)

    def release(self, stop: int) -> None:
        for i in [i for i in self.frames if i < stop]:
            del self.frames[i]


class NoiseSlices:
    """A given noise tensor, sliced per chunk of latent frames."""

    def __init__(self, noise: torch.Tensor, time_factor: int):
        self.noise, self.tf = noise, time_factor

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        a, b = chunking.video_span(start, stop, self.tf)
        if b > self.noise.shape[2]:
            raise ValueError(
                f"noise has {self.noise.shape[2]} frames but the latent stream needs at least {b}"
            )
        return self.noise[:, :, a:b]

    def release(self, stop: int) -> None:
        pass
