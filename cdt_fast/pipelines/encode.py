"""A clip to its latent, chunk by chunk, and the video metadata a latent file keeps."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import video_io
from ..reference import DiagonalGaussian

# Frames per chunk when none is given on CPU: upstream's resolution-based length grows as the frame
# shrinks (a whole 200-frame clip at 128 px in one chunk), so the pipelines cap it to keep memory
# flat in the clip's length. On CUDA the engine sizes chunks from free memory.
MAX_CPU_CHUNK_FRAMES = 32


def encode_chunk_frames(config, clip: video_io.PaddedClip, device, chunk_frames: Optional[int]):
    """Video frames per encode chunk: ``chunk_frames`` when given, else upstream's choice for the
    clip's size capped on CPU (see :data:`MAX_CPU_CHUNK_FRAMES`); None leaves the choice to the
    engine (CUDA)."""
    if chunk_frames is not None or torch.device(device).type != "cpu":
        return chunk_frames
    _, _, _, height, width = clip.shape
    return min(config.encode_chunk_frames(height, width), MAX_CPU_CHUNK_FRAMES)


def encode_clip(
    model,
    clip: video_io.PaddedClip,
    chunk_frames: Optional[int],
    tile: Optional[int] = None,
    tile_overlap: Optional[int] = None,
) -> torch.Tensor:
    """The posterior mode of a clip, as ``model.encode`` computes it, reading frames chunk by chunk
    when the model offers ``encode_chunks`` (else the whole padded clip at once). Only the latent
    (16x smaller per frame in space, 4x in time) is kept whole. With ``tile``, the clip is read
    whole and encoded one spatial tile at a time. Returns the latent in fp32 on the CPU."""
    # no_grad: encode_chunks is a plain generator, and with autograd on, the feature cache would
    # chain every chunk's graph to the next (memory growing with the video's length).
    with torch.no_grad():
        if tile is not None:
            z = model.encode(
                clip.read_all(), chunk_frames=chunk_frames, tile=tile, tile_overlap=tile_overlap
            )
            z = z.float().cpu()
        elif hasattr(model, "encode_chunks"):
            params = torch.cat(
                [p.float().cpu() for p in model.encode_chunks(clip, chunk_frames)], 2
            )
            z = DiagonalGaussian(params).mode()
        else:
            z = model.encode(clip.read_all(), chunk_frames=chunk_frames).float().cpu()
    clip.finish()
    return z


def video_metadata(info: video_io.VideoInfo, clip: video_io.PaddedClip, start: int = 0) -> dict:
    """What a latent file records of the video it codes (see :func:`cdt_fast.latents.save_latent`):
    frame rate and count, the size encoded and the source's, the padding added, the source's
    name, how it keeps time, and the first frame taken when it is not frame 0."""
    meta = {
        "fps": str(info.fps),
        "frames": clip.frames,
        "height": clip.height,
        "width": clip.width,
        "source_height": info.height,
        "source_width": info.width,
        "padding": clip.padding,
        "source": os.path.basename(str(info.path).rstrip(os.sep)),
        "timing": info.timing_text,
    }
    if start:
        meta["start"] = start
    return meta
