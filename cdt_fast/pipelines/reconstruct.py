"""The quality of a reconstruction: PSNR/SSIM of decoded frames against their source, which is
read a second time in step with them (neither video is ever held whole)."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch

from .. import video_io
from ..metrics.quality import frame_psnr, frame_ssim


def frame_scores(metric: Callable, reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Per-frame ``metric`` (:func:`~cdt_fast.metrics.quality.frame_psnr` or ``frame_ssim``) of
    uint8 [N, H, W, 3] frames, in [0, 1] as upstream evaluates; NaN where a frame is too small
    for the metric (SSIM's 11x11 window)."""

    def unit(a):
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).double() / 255.0

    if metric is frame_ssim and min(frames.shape[1:3]) < 11:
        return np.full(frames.shape[0], np.nan)
    return metric(unit(reference), unit(frames)).numpy()


class ReconstructionScores:
    """PSNR/SSIM of decoded frames against frames [start, start+frames) of ``source`` (``info``:
    its probe), resized to ``size`` as the encoder read them; both are compared on their top-left
    ``out_size`` (the size the output keeps). Wrap the decoded chunks with :meth:`scored`."""

    def __init__(
        self,
        source: str,
        info: video_io.VideoInfo,
        size: Tuple[int, int],
        out_size: Tuple[int, int],
        start: int = 0,
        frames: Optional[int] = None,
    ):
        resize = None if size == (info.height, info.width) else size
        self.originals = video_io.iter_frames(
            source,
            resize,
            expected=info.frames,
            allow_truncated=info.truncated,
            start=start,
            count=frames,
        )
        self.out_size = out_size
        self.psnr, self.ssim = [], []

    def scored(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Each chunk cropped to ``out_size``, after its scores are taken."""
        h, w = self.out_size
        for out in chunks:
            ref = np.stack([next(self.originals)[:h, :w] for _ in range(out.shape[0])])
            out = out[:, :h, :w]
            self.psnr.extend(frame_scores(frame_psnr, ref, out))
            self.ssim.extend(frame_scores(frame_ssim, ref, out))
            yield out

    def text(self) -> str:
        """The means so far, e.g. ``PSNR 31.20 dB  SSIM 0.9120``."""
        return f"PSNR {np.mean(self.psnr):.2f} dB  SSIM {np.mean(self.ssim):.4f}"
