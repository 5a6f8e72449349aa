"""A latent to uint8 video frames, chunk by chunk."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .. import video_io
from .encode import MAX_CPU_CHUNK_FRAMES


def decode_chunk_frames(config, z: torch.Tensor, device, chunk_frames: Optional[int]):
    """Latent frames per decode chunk: ``chunk_frames`` (video frames, a multiple of the time
    factor) when given, else upstream's choice for the latent's size capped on CPU (see
    :data:`~cdt_fast.pipelines.encode.MAX_CPU_CHUNK_FRAMES`); None leaves the choice to the engine
    (CUDA)."""
    tf = config.time_factor
    if chunk_frames is not None:
        return chunk_frames // tf
    if torch.device(device).type != "cpu":
        return None
    return min(config.decode_chunk_frames(z.shape[3], z.shape[4]), MAX_CPU_CHUNK_FRAMES // tf)


def decode_frames(
    model,
    z: torch.Tensor,
    frames: int,
    height: int,
    width: int,
    steps: Optional[int] = None,
    seed: int = 0,
    chunk_frames: Optional[int] = None,
    on_frames: Optional[Callable[[int], None]] = None,
    tile: Optional[int] = None,
    tile_overlap: Optional[int] = None,
    *,
    config=None,
    device=None,
) -> Iterator[np.ndarray]:
    """Decode ``z`` [1, C, T, h, w] with ``model`` (a :class:`~cdt_fast.CDT` or the engine) chunk
    by chunk into uint8 [N, height, width, 3] frames, ``frames`` in all: the padding frames at the
    end are dropped and the padded rows/columns cropped. Noise comes from a CPU generator seeded
    with ``seed``, so a decode repeats whatever the device. ``on_frames(n)`` is called as frames
    are done.

    The engine is fed the latent one frame at a time, so that it draws each latent frame's noise
    as it gets there (memory flat in the clip's length); the reference model draws the noise of
    the whole video at once. ``tile``: spatial tiles that advance chunk by chunk together (the
    engine tiles a whole latent tensor). ``config`` and ``device``: the model's
    :class:`~cdt_fast.CDTConfig` and device, by default ``model.config`` and ``model.device``."""
    tiles = {} if tile is None else {"tile": tile, "tile_overlap": tile_overlap}
    generator = torch.Generator().manual_seed(seed)
    config = model.config if config is None else config
    device = model.device if device is None else device
    latent_chunk = decode_chunk_frames(config, z, device, chunk_frames)
    if hasattr(model, "encode_params") and tile is None:
        # the engine takes an iterable of latent chunks (tiling needs the whole tensor)
        latent = (z[:, :, i : i + 1].to(device) for i in range(z.shape[2]))
    else:
        latent = z.to(device)
    left = frames
    for chunk in model.decode_stream(
        latent, steps=steps, generator=generator, chunk_frames=latent_chunk, **tiles
    ):
        if left <= 0:
            continue
        out = video_io.tensor_to_frames(chunk[:, :, :left], height, width)
        left -= out.shape[0]
        if on_frames is not None:
            on_frames(out.shape[0])
        yield out
