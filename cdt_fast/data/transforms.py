"""Frame geometry: scale the short side to cover the target, then crop (centre or random)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["resize_crop", "to_unit_range"]


def to_unit_range(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] frames -> float32 [3, T, H, W] in [-1, 1]."""
    return frames_uint8.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


def resize_crop(
    clip: torch.Tensor, size: Tuple[int, int], generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """[3, T, H, W] -> [3, T, *size]: scale so that the clip covers ``size`` (as upstream's
    evaluation ``CenterCrop``: ``scale = max(oh/ih, ow/iw)``), then crop. The crop is centred
    without a generator and uniformly placed with one.

    Resampling is antialiased bicubic (upstream's evaluation uses PIL's Lanczos: values differ by
    a few 1/255 levels at edges).
    """
    _, _, ih, iw = clip.shape
    oh, ow = size
    scale = max(oh / ih, ow / iw)
    rh, rw = max(oh, round(scale * ih)), max(ow, round(scale * iw))
    if (rh, rw) != (ih, iw):
        clip = (
            F.interpolate(
                clip.transpose(0, 1),
                size=(rh, rw),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )
            .transpose(0, 1)
            .clamp_(-1, 1)
        )
    if generator is None:
        top, left = (rh - oh) // 2, (rw - ow) // 2
    else:
        top = int(torch.randint(0, rh - oh + 1, (1,), generator=generator))
        left = int(torch.randint(0, rw - ow + 1, (1,), generator=generator))
    return clip[:, :, top : top + oh, left : left + ow].contiguous()
