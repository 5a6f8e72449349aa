"""Accumulate PSNR / SSIM / LPIPS over reconstructed videos, as upstream's evaluation does."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .lpips import LPIPS
from .quality import frame_psnr, frame_ssim, to_unit_frames

__all__ = ["VideoMetrics"]


class VideoMetrics:
    """``update(real, recon)`` with model-range videos [B, 3, T, H, W] in [-1, 1]; ``result()``
    gives the mean over videos of each video's mean over frames (upstream averages per batch with
    batch size 1: the same thing), plus the count of videos.

    LPIPS is computed per frame with the spatial map averaged, as upstream's ``cal_lpips.py``
    (which uses the AlexNet variant; pass ``LPIPS.from_pretrained(..., net='alex')`` to match it).
    """

    def __init__(self, lpips: Optional[LPIPS] = None):
        self.lpips = lpips
        self.values: Dict[str, List[float]] = {"psnr": [], "ssim": []}
        if lpips is not None:
            self.values["lpips"] = []

    @torch.no_grad()
    def update(self, real: torch.Tensor, recon: torch.Tensor) -> Dict[str, List[float]]:
        a, b = to_unit_frames(real), to_unit_frames(recon)  # [B, T, 3, H, W] in [0, 1]
        per_video = {
            "psnr": frame_psnr(a, b).mean(1).tolist(),
            "ssim": frame_ssim(a, b).mean(1).tolist(),
        }
        if self.lpips is not None:
            device = self.lpips.lin[0].weight.device
            frames_a = a.flatten(0, 1).to(device)
            frames_b = b.flatten(0, 1).to(device)
            maps = self.lpips(frames_a, frames_b, spatial=True, normalize=True)
            per_video["lpips"] = maps.mean(dim=(1, 2, 3)).reshape(a.shape[:2]).mean(1).tolist()
        for k, v in per_video.items():
            self.values[k].extend(v)
        return per_video

    def result(self) -> Dict[str, float]:
        out: Dict[str, float] = {"videos": float(len(self.values["psnr"]))}
        for k, v in self.values.items():
            out[k] = sum(v) / len(v) if v else float("nan")
        return out
