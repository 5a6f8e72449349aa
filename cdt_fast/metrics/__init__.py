"""Reconstruction metrics as upstream evaluates them (PSNR, SSIM, LPIPS), and LPIPS as a loss."""

from .lpips import LPIPS, installed_heads_path
from .quality import frame_psnr, frame_ssim, psnr, ssim, to_unit_frames
from .video import VideoMetrics

__all__ = [
    "LPIPS",
    "VideoMetrics",
    "frame_psnr",
    "frame_ssim",
    "installed_heads_path",
    "psnr",
    "ssim",
    "to_unit_frames",
]
