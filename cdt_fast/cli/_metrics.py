"""PSNR and SSIM of uint8 frames, per frame in [0, 1] and averaged over frames (Open-Sora-Plan's
convention, which upstream CDT evaluates with).

A private stand-in: when ``cdt_fast.metrics`` lands, ``reconstruct`` should call it instead.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr_per_frame", "ssim_per_frame"]

_MAX_PSNR = 100.0  # identical frames: report a finite ceiling, not inf


def _unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float64 [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).double() / 255.0


def psnr_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = (_unit(a) - _unit(b)).pow(2).flatten(1).mean(1)
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-_MAX_PSNR / 10.0)))
    return psnr.numpy()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma * sigma))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM with an 11x11 Gaussian window (sigma 1.5), valid positions, per channel, averaged
    over channels; frames smaller than the window use a window of their size."""
    x, y = _unit(a), _unit(b)
    size = min(11, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd
    window = _gaussian_window(size, 1.5 * size / 11).expand(3, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=3)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim.flatten(1).mean(1).numpy()
