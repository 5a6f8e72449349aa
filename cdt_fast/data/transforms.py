"""Frame geometry: scale the short side to cover the target, then crop (centre or random)."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["cover_size", "centre_offset", "nearest_aspect", "resize_crop", "to_unit_range"]


def cover_size(height: int, width: int, size: Tuple[int, int]) -> Tuple[int, int]:
    """The (h, w) that a ``height`` x ``width`` frame is scaled to, aspect ratio kept, so that it
    just covers ``size`` = (H, W): ``scale = max(H / height, W / width)``, as upstream's evaluation
    ``CenterCrop``."""
    oh, ow = size
    scale = max(oh / height, ow / width)
    return max(oh, round(scale * height)), max(ow, round(scale * width))


def centre_offset(covered: Tuple[int, int], size: Tuple[int, int]) -> Tuple[int, int]:
    """(top, left) of the centred ``size`` window in a frame of ``covered`` = (h, w)."""
    return (covered[0] - size[0]) // 2, (covered[1] - size[1]) // 2


def nearest_aspect(height: int, width: int, sizes: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The (H, W) of ``sizes`` whose aspect ratio is nearest that of ``height`` x ``width``, by the
    log of the ratio (so 2:1 and 1:2 are equally far from 1:1); the first listed among equals."""
    if not sizes:
        raise ValueError("sizes must hold at least one (H, W)")
    target = math.log(width / height)
    return min(sizes, key=lambda s: abs(math.log(s[1] / s[0]) - target))


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
    rh, rw = cover_size(ih, iw, size)
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
        top, left = centre_offset((rh, rw), size)
    else:
        top = int(torch.randint(0, rh - oh + 1, (1,), generator=generator))
        left = int(torch.randint(0, rw - ow + 1, (1,), generator=generator))
    return clip[:, :, top : top + oh, left : left + ow].contiguous()
