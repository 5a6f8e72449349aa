"""PSNR and SSIM as upstream's evaluation computes them (Open-Sora-Plan's ``cal_psnr.py`` /
``cal_ssim.py``): frames in [0, 1], one value per frame, averaged.

* PSNR of a frame: ``20 log10(1 / sqrt(MSE))`` over all its channels and pixels; 100 when the
  MSE is below 1e-10.
* SSIM of a frame: the mean over channels of the single-channel SSIM with an 11x11 Gaussian window
  (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2, in float64, over the "valid" part of the filtered maps
  (upstream filters with OpenCV and then drops 5 pixels at each border, which leaves exactly the
  positions where the window fits inside the image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["frame_psnr", "frame_ssim", "psnr", "ssim", "to_unit_frames"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{name}: expected two torch.Tensors")
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: the two videos must have the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    if a.dim() < 3:
        raise ValueError(f"{name}: expected frames [..., C, H, W], got shape {tuple(a.shape)}")


def to_unit_frames(video: torch.Tensor) -> torch.Tensor:
    """A model's [B, 3, T, H, W] in [-1, 1] -> upstream's metric input [B, T, 3, H, W] in [0, 1]
    (clamped first, as upstream)."""
    return ((video.float().clamp(-1, 1) + 1) / 2).transpose(1, 2)


def frame_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR of frames [..., C, H, W] in [0, 1] -> [...] (float64)."""
    _check_pair(a, b, "frame_psnr")
    mse = (a.double() - b.double()).pow(2).flatten(-3).mean(-1)
    out = 20 * torch.log10(1 / mse.sqrt())
    return torch.where(mse < 1e-10, torch.full_like(out, 100.0), out)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def frame_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM of frames [..., C, H, W] in [0, 1] -> [...] (float64); H, W >= 11."""
    _check_pair(a, b, "frame_ssim")
    *lead, c, h, w = a.shape
    if h < 11 or w < 11:
        raise ValueError(f"frame_ssim needs frames of at least 11x11 pixels, got {h}x{w}")
    x = a.double().reshape(-1, 1, h, w)
    y = b.double().reshape(-1, 1, h, w)
    g = _gaussian_window().to(x.device)
    kh, kw = g.reshape(1, 1, -1, 1), g.reshape(1, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh), kw)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(1).reshape(*lead, c).mean(-1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-frame PSNR of videos [B, T, C, H, W] (or frames [N, C, H, W]) in [0, 1]."""
    return float(frame_psnr(a, b).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-frame SSIM of videos [B, T, C, H, W] (or frames [N, C, H, W]) in [0, 1]."""
    return float(frame_ssim(a, b).mean())
