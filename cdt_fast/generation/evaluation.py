"""Fréchet distances for generated video: on CDT latents (weight-free) and FVD on I3D features
(weights from a path the user gives; nothing is downloaded).

The Fréchet distance between Gaussians N(m1, S1) and N(m2, S2) is
``|m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``; the last trace is computed from
the eigenvalues of the symmetric matrix ``S1^1/2 S2 S1^1/2`` (float64), which is exact for positive
semi-definite inputs and needs no general matrix square root.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_stats",
    "frechet_distance",
    "latent_features",
    "latent_frechet_distance",
    "load_i3d",
    "i3d_features",
    "fvd",
]

PathLike = Union[str, os.PathLike]


def gaussian_stats(features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and (unbiased) covariance [D, D] of ``features`` [N, D], float64."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(
            f"features must be [N >= 2, D], got "
            f"{list(features.shape) if isinstance(features, torch.Tensor) else type(features)}"
        )
    x = features.detach().double().cpu()
    mean = x.mean(0)
    centered = x - mean
    return mean, centered.T @ centered / (x.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """The Fréchet (2-Wasserstein) distance, squared, between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2, sigma1, sigma2 = (
        torch.as_tensor(a).double().cpu() for a in (mu1, mu2, sigma1, sigma2)
    )
    d = mu1.numel()
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"means must be [D] and covariances [D, D] with one D, got {list(mu1.shape)}, "
            f"{list(sigma1.shape)}, {list(mu2.shape)}, {list(sigma2.shape)}"
        )
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * cross
    return float(value.clamp(min=0))


def latent_features(latents: torch.Tensor) -> torch.Tensor:
    """Local space-time features of latents [B, C, T, h, w]: every 2x2 patch of two consecutive
    latent frames, flattened ([N, 8C] with N = B (T-1)(h-1)(w-1)), so the statistics see texture
    and motion, not only each channel's marginal. A single frame (T = 1) gives 2x2 patches [N, 4C]."""
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5:
        raise ValueError("latents must be a [B, C, T, h, w] tensor")
    b, c, t, h, w = latents.shape
    if h < 2 or w < 2:
        raise ValueError(f"latents must be at least 2x2 in space, got {h}x{w}")
    kt = 2 if t >= 2 else 1
    x = latents.detach().float()
    patches = x.unfold(2, kt, 1).unfold(3, 2, 1).unfold(4, 2, 1)  # [B, C, T', h', w', kt, 2, 2]
    return patches.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, c * kt * 4)


def latent_frechet_distance(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """Fréchet distance between the :func:`latent_features` of two sets of latents (use the same
    normalisation for both). Weight-free; comparable between models of one tokenizer only."""
    if generated.shape[1] != reference.shape[1]:
        raise ValueError(
            f"generated and reference latents differ in channels: {generated.shape[1]} vs "
            f"{reference.shape[1]}"
        )
    return frechet_distance(
        *gaussian_stats(latent_features(generated)), *gaussian_stats(latent_features(reference))
    )


# -- FVD -------------------------------------------------------------------------------------------
def load_i3d(path: Optional[PathLike], device: Union[str, torch.device] = "cpu"):
    """A TorchScript I3D (e.g. the ``i3d_torchscript.pt`` of the StyleGAN-V FVD code) from
    ``path``. Without a path: a ValueError that says what to pass; nothing is downloaded."""
    if path is None:
        raise ValueError(
            "FVD needs I3D weights: pass i3d_weights=PATH (--i3d-weights PATH), a TorchScript I3D "
            "that maps [B, 3, T, 224, 224] videos in [-1, 1] to [B, 400] features; cdt_fast "
            "downloads nothing. Without weights, use latent_frechet_distance"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights not found: {path}")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is how I3D ships
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:
        raise ValueError(
            f"{path} is not a TorchScript module ({str(err).splitlines()[0]})"
        ) from None


@torch.no_grad()
def i3d_features(
    i3d, videos: torch.Tensor, batch: int = 8, i3d_kwargs: Optional[dict] = None
) -> torch.Tensor:
    """[N, D] I3D features of videos [N, 3, T, H, W] in [-1, 1] (resized to 224x224 here).
    ``i3d_kwargs`` go to each call: StyleGAN-V's TorchScript I3D, for instance, is called with
    ``rescale=False, resize=False, return_features=True`` for [-1, 1] input already at 224x224."""
    if videos.dim() != 5 or videos.shape[1] != 3:
        raise ValueError(f"videos must be [N, 3, T, H, W], got {list(videos.shape)}")
    device = next(iter(i3d.parameters()), torch.empty(0)).device
    out = []
    for start in range(0, videos.shape[0], batch):
        v = videos[start : start + batch].to(device).float()
        n, c, t, h, w = v.shape
        frames = v.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        frames = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
        v = frames.reshape(n, t, c, 224, 224).permute(0, 2, 1, 3, 4)
        out.append(i3d(v, **(i3d_kwargs or {})).reshape(n, -1).double().cpu())
    return torch.cat(out)


def fvd(
    generated: torch.Tensor,
    reference: torch.Tensor,
    i3d_weights: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    i3d_kwargs: Optional[dict] = None,
) -> float:
    """Fréchet video distance: the Fréchet distance of I3D features of two sets of videos
    [N, 3, T, H, W] in [-1, 1]. Needs ``i3d_weights`` (see :func:`load_i3d`)."""
    i3d = load_i3d(i3d_weights, device)
    return frechet_distance(
        *gaussian_stats(i3d_features(i3d, generated, i3d_kwargs=i3d_kwargs)),
        *gaussian_stats(i3d_features(i3d, reference, i3d_kwargs=i3d_kwargs)),
    )
