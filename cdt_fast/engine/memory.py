"""How many frames fit in one chunk: a per-frame memory model, and halving on out-of-memory.

Memory model (a documented estimate, not a measurement): a chunk's peak is dominated by the
activations at full resolution. Per video pixel of a chunk, the decode holds about
``1.5 * (10 * unet_dim + 2 * (3 + out_channels))`` activation elements of the model dtype -- the
U-Net's widest full-resolution live set (concatenated input, block outputs, norm temporaries,
the skip kept for the up path, conv workspace) with a half more for the coarser levels -- plus
36 bytes of fp32 sample, noise and output. The encode holds ``1.5 * 10 * context_dim * s``
elements per input pixel, with ``s`` = 1 when the first encoder level keeps full resolution and
1/4 when it halves it. The default chunk uses 70 % of the free device memory under this model.

CUDA graphs (``graphs=True``): a session's captured graphs share one private pool that keeps one
chunk's activations between calls. It takes the place of the eager chunk's activations (the
allocator's cache is emptied before a capture), so the activation term above covers it; what
graphs add is their static tensors, kept per captured chunk step: the device copies of the inputs
(the latent chunk and fp32 noise for a decode, the video chunk for an encode) and the fp32
output. Counted (at 4 bytes an element) for up to :attr:`MemoryModel.graphs_per_session` steps
(a stream's first, second and steady chunks and an odd last one): per video pixel, noise and
output (2 * 3 elements) and the latent's share for a decode; the video and the posterior
parameters' share (3 + 2 * latent_dim / space_factor^2) for an encode -- small next to the
activations, but counted.
A session keeps the chunk size its first stream chose, so later streams replay the same graphs.
Not modelled: an eager chunk (a key's warm-up) that runs while the session's pool is held peaks
at about two chunks' activations; if that runs out of memory, the engine drops the graphs and
retries the same chunk before it halves anything.

Every chunk plan gives the same result (chunk invariance), so when a chunk runs out of memory
the engine halves the chunk and retries from the same position; see :func:`halve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import CDTConfig

__all__ = ["MemoryModel", "free_memory", "halve"]


def free_memory(device: torch.device) -> Optional[int]:
    """Free bytes on a CUDA device (None elsewhere: host memory is not modelled)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def halve(chunk: int, multiple: int = 1) -> Optional[int]:
    """The next smaller chunk after an out-of-memory error (None when it cannot shrink)."""
    smaller = (chunk // 2) // multiple * multiple
    return smaller if smaller >= multiple and smaller < chunk else None


@dataclass(frozen=True)
class MemoryModel:
    config: CDTConfig
    budget_fraction: float = 0.7
    max_latent_frames: int = 16  # beyond this, bigger chunks stop paying for themselves
    max_video_frames: int = 64
    graphs_per_session: int = 4

    def decode_bytes_per_latent_frame(
        self, batch: int, height: int, width: int, dtype: torch.dtype, graphs: bool = False
    ) -> int:
        """Peak bytes one latent frame adds to a decode chunk at video size ``height``x``width``
        (with ``graphs``: plus the static tensors of the session's captured steps)."""
        c = self.config
        elements = 1.5 * (10 * c.unet_dim + 2 * (c.channels + c.out_channels))
        per_pixel = elements * _itemsize(dtype) + 36
        if graphs:
            latent = c.latent_dim / (c.space_factor**2 * c.time_factor)  # latent per pixel
            per_pixel += self.graphs_per_session * 4 * (2 * c.channels + latent)
        return int(batch * c.time_factor * height * width * per_pixel)

    def encode_bytes_per_frame(
        self, batch: int, height: int, width: int, dtype: torch.dtype, graphs: bool = False
    ) -> int:
        c = self.config
        scale = 0.25 if c.space_down[0] else 1.0
        per_pixel = 1.5 * 10 * c.context_dim * scale * _itemsize(dtype) + 12
        if graphs:
            params = 2 * c.latent_dim / c.space_factor**2  # fp32 posterior parameters per pixel
            per_pixel += self.graphs_per_session * 4 * (c.channels + params)
        return int(batch * height * width * per_pixel)

    def decode_chunk(
        self,
        batch: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        graphs: bool = False,
    ) -> int:
        """Latent frames per decode chunk: from free CUDA memory, else upstream's default."""
        free = free_memory(device)
        if free is None:
            s = self.config.space_factor
            return self.config.decode_chunk_frames(height // s, width // s)
        per = self.decode_bytes_per_latent_frame(batch, height, width, dtype, graphs)
        return max(1, min(self.max_latent_frames, int(free * self.budget_fraction) // max(per, 1)))

    def encode_chunk(
        self,
        batch: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        graphs: bool = False,
    ) -> int:
        """Video frames per encode chunk after the first (a multiple of the time factor)."""
        tf = self.config.time_factor
        free = free_memory(device)
        if free is None:
            return self.config.encode_chunk_frames(height, width)
        per = self.encode_bytes_per_frame(batch, height, width, dtype, graphs)
        frames = min(self.max_video_frames, int(free * self.budget_fraction) // max(per, 1))
        return max(tf, frames // tf * tf)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
