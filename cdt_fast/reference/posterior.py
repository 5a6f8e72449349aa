"""The encoder's diagonal Gaussian posterior over latents."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["DiagonalGaussian"]


class DiagonalGaussian:
    """Mean and log-variance stacked on channels (upstream ``DiagonalGaussianDistribution``).

    ``parameters`` is the encoder's raw output; ``logvar`` is clamped to [-30, 20] as upstream.
    """

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """mean + std * N(0, 1). Without a generator the noise comes from the global CPU RNG, as
        upstream draws it, so seeded upstream scripts reproduce."""
        device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise.to(self.mean.device)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements: [B]."""
        dims = list(range(1, self.mean.dim()))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)}, dtype={self.mean.dtype})"
