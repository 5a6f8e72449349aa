"""Bad input raises a clear ValueError/TypeError naming the argument."""

from __future__ import annotations

import pytest
import torch

from cdt_fast import CDT, randomize_

from .conftest import tiny_config


@pytest.fixture(scope="module")
def model() -> CDT:
    return randomize_(CDT(tiny_config("small")), seed=0).eval()


def _x(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize(
    "x, error, match",
    [
        ([[1.0]], TypeError, "x must be a torch.Tensor"),
        (_x(3, 5, 16, 16), ValueError, "x must have rank 5"),
        (_x(1, 4, 5, 16, 16), ValueError, "3 \\(RGB\\) channels"),
        (_x(1, 3, 4, 16, 16), ValueError, "T = 1\\+4k"),
        (_x(1, 3, 6, 16, 16), ValueError, "T = 1\\+4k"),
        (_x(1, 3, 5, 12, 16), ValueError, "multiples of 8"),
        (_x(1, 3, 5, 16, 20), ValueError, "multiples of 8"),
        (torch.zeros(1, 3, 5, 16, 16, dtype=torch.uint8), TypeError, "floating-point"),
        (torch.zeros(1, 3, 5, 16, 16, dtype=torch.int64), TypeError, "floating-point"),
        (_x(0, 3, 5, 16, 16), ValueError, "must not be empty"),
    ],
)
def test_encode_rejects_bad_video(model, x, error, match):
    with pytest.raises(error, match=match):
        model.encode(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_encode_rejects_non_finite(model, bad):
    x = _x(1, 3, 5, 16, 16)
    x[0, 1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="x contains NaN or infinite"):
        model.encode(x)


@pytest.mark.parametrize(
    "chunk, error",
    [(3, ValueError), (0, ValueError), (-4, ValueError), (4.0, TypeError), (True, TypeError)],
)
def test_encode_rejects_bad_chunk(model, chunk, error):
    with pytest.raises(error, match="chunk_frames"):
        model.encode(_x(1, 3, 5, 16, 16), chunk_frames=chunk)


def test_decode_rejects_bad_latent(model):
    with pytest.raises(ValueError, match="latent_dim=4 channels"):
        model.decode(_x(1, 5, 2, 2, 2))
    with pytest.raises(ValueError, match="z must have rank 5"):
        model.decode(_x(4, 2, 2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        model.decode(torch.zeros(1, 4, 2, 2, 2, dtype=torch.int32))
    z = _x(1, 4, 2, 2, 2)
    z[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="z contains NaN"):
        model.decode(z)


def test_decode_rejects_bad_noise(model):
    z = _x(1, 4, 2, 2, 2)
    with pytest.raises(ValueError, match=r"noise must have the output's shape \[1, 3, 5, 16, 16\]"):
        model.decode(z, noise=_x(1, 3, 8, 16, 16))
    with pytest.raises(TypeError, match="noise must be a torch.Tensor"):
        model.decode(z, noise=[0.0])


@pytest.mark.parametrize(
    "steps, error",
    [(0, ValueError), (-1, ValueError), (1.0, TypeError), ("2", TypeError), (None, None)],
)
def test_decode_steps(model, steps, error):
    z = _x(1, 4, 1, 2, 2)
    if error is None:
        assert model.decode(z, steps=steps).shape == (1, 3, 1, 16, 16)
        return
    with pytest.raises(error, match="steps"):
        model.decode(z, steps=steps)


def test_decode_rejects_bad_generator_and_chunk(model):
    z = _x(1, 4, 2, 2, 2)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        model.decode(z, generator=0)
    with pytest.raises(ValueError, match="chunk_frames must be a positive int"):
        model.decode(z, chunk_frames=0)
