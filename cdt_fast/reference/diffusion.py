"""Cosine noise schedule and the deterministic DDIM x-prediction sampler, as upstream computes them.

The arithmetic (float64 schedule, float32 tables, the order of operations in the update) follows
upstream's ``GaussianDiffusion`` so that the same inputs give the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..functional import ddim_update

__all__ = ["cosine_alphas_cumprod", "DDIMSchedule", "q_sample"]


def cosine_alphas_cumprod(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Cumulative alphas of the cosine schedule (Nichol & Dhariwal), betas clipped to 0.999."""
    steps = num_timesteps + 1
    x = np.linspace(0, steps, steps)
    alphas_cumprod = np.cos(((x / steps) + s) / (1 + s) * np.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = np.clip(1 - (alphas_cumprod[1:] / alphas_cumprod[:-1]), a_min=0, a_max=0.999)
    return torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Forward diffusion at integer steps ``t`` ([B]) of the training schedule."""
    a = alphas_cumprod.to(x0.device)[t].reshape(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@dataclass(frozen=True)
class DDIMSchedule:
    """The ``steps``-step sampling schedule over a ``num_timesteps`` training schedule.

    Step ``i`` counts down from ``steps - 1`` (pure noise) to 0 (the output), as upstream's loop.
    """

    num_timesteps: int
    steps: int
    index: torch.Tensor  # training step of each sampling step, long [steps]
    sqrt_alphas_cumprod_prev: torch.Tensor
    one_minus_alphas_cumprod_prev: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor

    @classmethod
    def create(cls, num_timesteps: int, steps: int) -> "DDIMSchedule":
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if steps > num_timesteps:
            raise ValueError(f"steps must be at most num_timesteps={num_timesteps}, got {steps}")
        train = cosine_alphas_cumprod(num_timesteps)
        if steps != 1:
            index = torch.linspace(0, num_timesteps - 1, steps).long()
        else:
            index = torch.tensor([num_timesteps - 1]).long()
        ac = train[index]
        ac_prev = torch.cat([torch.ones(1), ac[:-1]])
        return cls(
            num_timesteps=num_timesteps,
            steps=steps,
            index=index,
            sqrt_alphas_cumprod_prev=torch.sqrt(ac_prev),
            one_minus_alphas_cumprod_prev=1.0 - ac_prev,
            sqrt_recip_alphas_cumprod=torch.sqrt(1.0 / ac),
            sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / ac - 1),
        )

    def time_input(self, step: int, batch: int, device=None) -> torch.Tensor:
        """The U-Net's time input for sampling step ``step``: [batch, 1], training step / T."""
        t = self.index[step].float() / self.num_timesteps
        return t.reshape(1, 1).expand(batch, 1).to(device)

    def coefficients(self, step: int):
        """(a, b, c, d) with x_next = c*x0 + d*(a*x_t - x0)/b for this step (eta = 0)."""
        return (
            self.sqrt_recip_alphas_cumprod[step],
            self.sqrt_recipm1_alphas_cumprod[step],
            self.sqrt_alphas_cumprod_prev[step],
            self.one_minus_alphas_cumprod_prev[step].clamp(min=0).sqrt(),
        )

    def step(self, x_t: torch.Tensor, x0: torch.Tensor, step: int) -> torch.Tensor:
        """One deterministic DDIM update from ``x_t`` given the predicted clean sample ``x0``."""
        return ddim_update(x_t, x0, self.coefficients(step))
