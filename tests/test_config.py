"""CDTConfig presets reproduce upstream's load_cdt_base / load_cdt_small."""

from __future__ import annotations

import pytest

from cdt_fast import CDTConfig


def test_base_preset():
    c = CDTConfig.base()
    assert (c.context_dim, c.unet_dim, c.latent_dim, c.out_channels) == (128, 64, 16, 16)
    assert c.space_down == (0, 1, 1, 1) and c.time_down == (0, 0, 1, 1)
    assert c.new_upsample and c.pad_mode == "zeros"
    assert (c.condition_times, c.num_timesteps, c.sample_gamma, c.latent_scale) == (
        4,
        8192,
        0.8,
        1.3,
    )
    assert (c.encode_frames, c.decode_frames, c.sample_steps) == (4, 1, 1)


def test_small_preset():
    c = CDTConfig.small()
    assert (c.context_dim, c.unet_dim, c.latent_dim, c.out_channels) == (64, 64, 16, 3)
    assert c.space_down == (1, 1, 1, 0) and not c.new_upsample and c.pad_mode == "replicate"
    assert c.space_factor == 8 and c.time_factor == 4


def test_upstream_chunk_defaults():
    c = CDTConfig.base()
    assert c.encode_chunk_frames(256, 256) == 64 and c.encode_chunk_frames(720, 720) == 8
    assert c.decode_chunk_frames(32, 32) == 16 and c.decode_chunk_frames(90, 90) == 2
    assert c.encode_chunk_frames(2048, 2048) == 4 and c.decode_chunk_frames(512, 512) == 1


def test_overrides_and_roundtrip():
    c = CDTConfig.small(context_dim=8, space_down=[1, 1, 1, 0])
    assert c.context_dim == 8 and c.space_down == (1, 1, 1, 0) and c.name == "small"
    assert CDTConfig.from_dict(c.to_dict()) == c
    assert (
        c.architecture_hash() == CDTConfig.small(context_dim=8, sample_steps=4).architecture_hash()
    )
    assert c.architecture_hash() != CDTConfig.small().architecture_hash()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(context_dim=0), "context_dim must be a positive int"),
        (dict(latent_dim=2.0), "latent_dim must be a positive int"),
        (dict(space_down=(1, 1, 1)), "space_down must hold 4 flags"),
        (dict(space_down=(1, 1, 0, 0)), "8x in space"),
        (dict(time_down=(0, 1, 1, 1)), "4x in time"),
        (dict(condition_times=5), "condition_times"),
        (dict(sample_gamma=0.0), "sample_gamma"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        CDTConfig.base(**overrides)


def test_preset_can_be_renamed():
    assert CDTConfig.small(name="tiny", context_dim=8).name == "tiny"
    assert CDTConfig.preset("base", name="mine").new_upsample


def test_unknown_fields():
    with pytest.raises(TypeError):
        CDTConfig.base(colour=3)
    with pytest.raises(ValueError, match="unknown CDTConfig fields"):
        CDTConfig.from_dict({"colour": 3})
    with pytest.raises(ValueError, match="preset must be one of"):
        CDTConfig.preset("large")
