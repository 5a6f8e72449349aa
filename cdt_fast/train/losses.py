"""The CDT training objective: x-prediction diffusion MSE + KL of the posterior + LPIPS.

Upstream released no training code. The paper (arXiv 2503.03708) states the recipe: the encoder's
posterior sample conditions the causal diffusion decoder, trained from scratch with "a basic MSE
diffusion loss for reconstruction, along with KL term and LPIPS perceptual loss". The pieces that
the paper and the released inference code fix are kept exactly: the 8192-step cosine schedule, the
U-Net's time input ``t / num_timesteps``, x-prediction (the released DDIM sampler reads the U-Net
output as x0). The weights of the KL and LPIPS terms are not given in the paper; ours are
documented in :class:`LossWeights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..reference import CDT, DiagonalGaussian
from ..reference.diffusion import cosine_alphas_cumprod, q_sample

__all__ = ["LossWeights", "CDTLoss"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (all our choice; the paper gives none).

    kl: multiplies the posterior's KL summed over latent elements and divided by the number of video
    elements, so that it is on the scale of the per-element MSE. 1e-6 is the KL weight of the
    KL-regularised autoencoders of latent diffusion (Rombach et al. 2022), which sum both terms the
    same way: the KL only keeps the latent bounded, it does not shape it.
    lpips: 0.1 keeps the perceptual term below the MSE at the start of training (LPIPS of a noisy
    reconstruction is ~0.5-0.7, its MSE ~0.1-0.3). 0 disables LPIPS (no VGG16 weights needed).
    lpips_frames: frames per clip that LPIPS sees, drawn at random, to bound its cost.
    """

    kl: float = 1e-6
    lpips: float = 0.1
    lpips_frames: int = 2

    def __post_init__(self):
        for name in ("kl", "lpips"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"LossWeights.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.lpips_frames, int) or self.lpips_frames < 1:
            raise ValueError(
                f"LossWeights.lpips_frames must be an int >= 1, got {self.lpips_frames!r}"
            )


class CDTLoss(nn.Module):
    """``forward(x0, generator)`` -> dict of scalar tensors: ``loss`` and its parts.

    Holds the model (so that a DDP wrapper around this module syncs the model's gradients) and an
    optional frozen LPIPS network. All randomness (posterior sample, t, noise, LPIPS frames) comes
    from ``generator`` so that a resumed run draws the same numbers.
    """

    def __init__(
        self,
        model: CDT,
        weights: LossWeights = LossWeights(),
        lpips: Optional[nn.Module] = None,
        t_range: Tuple[float, float] = (0.0, 1.0),
    ):
        super().__init__()
        lo, hi = (float(v) for v in t_range)
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"t_range must be (lo, hi) with 0 <= lo < hi <= 1, got {t_range!r}")
        if weights.lpips > 0 and lpips is None:
            raise ValueError(
                "LossWeights.lpips > 0 needs an LPIPS network (cdt_fast.metrics.LPIPS "
                "with VGG16 weights); pass lpips=... or set the LPIPS weight to 0"
            )
        self.model = model
        self.weights = weights
        self.lpips = lpips
        if lpips is not None:
            lpips.requires_grad_(False).eval()
        self.num_timesteps = model.config.num_timesteps
        # t is drawn uniformly from [t_lo, t_hi): the whole schedule by default (the paper's
        # recipe); a range near the end trains the one-step decode harder (our option).
        self.t_lo = int(lo * self.num_timesteps)
        self.t_hi = max(self.t_lo + 1, int(round(hi * self.num_timesteps)))
        self.register_buffer(
            "alphas_cumprod", cosine_alphas_cumprod(self.num_timesteps), persistent=False
        )

    def train(self, mode: bool = True) -> "CDTLoss":
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()  # a frozen metric network: never in training mode
        return self

    def forward(
        self, x0: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> Dict[str, torch.Tensor]:
        model = self.model
        b, _, frames, _, _ = x0.shape
        params = model.context_model.encode(x0)
        posterior = DiagonalGaussian(params)
        z = posterior.sample(generator)
        context = model.context_model.decode(z)

        device = x0.device
        gen_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(self.t_lo, self.t_hi, (b,), generator=generator, device=gen_device)
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32)
        t, noise = t.to(device), noise.to(device)
        x_t = q_sample(x0.float(), t, noise, self.alphas_cumprod)
        time = (t.float() / self.num_timesteps).reshape(b, 1)
        x0_pred = model.unet(x_t, time, context).float()

        mse = F.mse_loss(x0_pred, x0.float())
        kl = posterior.kl().mean() / x0[0].numel()
        loss = mse + self.weights.kl * kl
        parts = {"mse": mse, "kl": kl}
        if self.weights.lpips > 0:
            count = min(self.weights.lpips_frames, frames)
            idx = torch.randperm(frames, generator=generator, device=gen_device)[:count].to(device)
            pred = x0_pred.index_select(2, idx).transpose(1, 2).flatten(0, 1)
            true = x0.float().index_select(2, idx).transpose(1, 2).flatten(0, 1)
            perceptual = self.lpips(pred, true).mean()
            loss = loss + self.weights.lpips * perceptual
            parts["lpips"] = perceptual
        return {"loss": loss, **parts}
