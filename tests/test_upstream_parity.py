"""The reference model reproduces tensors computed with upstream CDT (tests/fixtures/README.md)."""

from __future__ import annotations

import pytest
import torch

from cdt_fast import CDT

from .conftest import tiny_config, upstream_state_dict
from .helpers import UPSTREAM_TOL


def test_state_dict_keys_and_shapes_equal_upstream(preset):
    upstream = upstream_state_dict(preset)
    own = CDT(tiny_config(preset)).state_dict()
    assert sorted(own) == sorted(upstream)
    assert all(own[k].shape == upstream[k].shape for k in own)


def test_parameter_count_matches_fixture(preset, upstream_model):
    import json

    from .conftest import FIXTURES

    meta = json.loads((FIXTURES / "meta.json").read_text())
    assert sum(p.numel() for p in upstream_model.parameters()) == meta[preset]["n_params"]
    assert len(upstream_model.state_dict()) == meta[preset]["n_keys"]


def test_encode_matches_upstream(preset, upstream_model, upstream_io):
    z, posterior = upstream_model.encode(upstream_io[f"{preset}.x"], return_posterior=True)
    torch.testing.assert_close(z, upstream_io[f"{preset}.z"], rtol=0, atol=UPSTREAM_TOL)
    torch.testing.assert_close(
        posterior.parameters, upstream_io[f"{preset}.posterior"], rtol=0, atol=UPSTREAM_TOL
    )
    torch.testing.assert_close(posterior.mean, z, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [1, 3])
def test_decode_matches_upstream(preset, steps, upstream_model, upstream_io):
    y = upstream_model.decode(
        upstream_io[f"{preset}.z"], steps=steps, noise=upstream_io[f"{preset}.s{steps}.noise"]
    )
    expected = upstream_io[f"{preset}.s{steps}.y"]
    assert y.shape == expected.shape and y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=0, atol=UPSTREAM_TOL)


@pytest.mark.parametrize("steps", [1, 3])
def test_chunked_decode_matches_upstream_whole_clip(preset, steps, upstream_model, upstream_io):
    """Upstream's own chunked decode of CDT-base differs from its whole clip; ours does not."""
    y = upstream_model.decode(
        upstream_io[f"{preset}.z"],
        steps=steps,
        chunk_frames=1,
        noise=upstream_io[f"{preset}.s{steps}.noise"],
    )
    torch.testing.assert_close(y, upstream_io[f"{preset}.s{steps}.y"], rtol=0, atol=UPSTREAM_TOL)


def test_encode_chunked_matches_upstream(preset, upstream_model, upstream_io):
    z = upstream_model.encode(upstream_io[f"{preset}.x"], chunk_frames=4)
    torch.testing.assert_close(z, upstream_io[f"{preset}.z"], rtol=0, atol=UPSTREAM_TOL)
