"""cdt_fast.pipelines called as a library (the commands' end-to-end tests are in test_cli*.py):
decoded frames are the model's own decode, cropped and without the padding frames; chunk lengths
follow the device."""

from __future__ import annotations

import numpy as np
import torch

from cdt_fast import video_io
from cdt_fast.pipelines import (
    MAX_CPU_CHUNK_FRAMES,
    decode_chunk_frames,
    decode_frames,
    encode_chunk_frames,
)

from .conftest import random_latent


def test_decode_frames_are_the_models_decode_cropped_to_the_video(upstream_model):
    model = upstream_model
    z = random_latent(model, t=3, h=4, w=4)  # 9 frames of 32x32 once decoded
    done = []
    frames = list(decode_frames(model, z, 7, 30, 29, seed=3, on_frames=done.append))
    got = np.concatenate(frames)
    assert got.shape == (7, 30, 29, 3) and sum(done) == 7
    with torch.no_grad():
        whole = model.decode(z, generator=torch.Generator().manual_seed(3))
    want = video_io.tensor_to_frames(whole, 30, 29)[:7]
    # chunked and whole decodes agree to ~1e-6, which can move a value across a rounding step
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert (got == want).mean() > 0.99


def test_chunk_lengths_follow_the_device(upstream_model):
    config = upstream_model.config
    z = torch.zeros(1, config.latent_dim, 40, 4, 4)
    clip = video_io.PaddedClip(iter(()), 160, 32, 32)
    cuda = torch.device("cuda")
    assert decode_chunk_frames(config, z, "cpu", 8) == 8 // config.time_factor
    assert decode_chunk_frames(config, z, cuda, None) is None  # the engine sizes it
    cpu = decode_chunk_frames(config, z, "cpu", None)
    assert cpu == min(config.decode_chunk_frames(4, 4), MAX_CPU_CHUNK_FRAMES // config.time_factor)
    assert encode_chunk_frames(config, clip, "cpu", 12) == 12
    assert encode_chunk_frames(config, clip, cuda, None) is None
    assert encode_chunk_frames(config, clip, "cpu", None) == min(
        config.encode_chunk_frames(32, 32), MAX_CPU_CHUNK_FRAMES
    )
