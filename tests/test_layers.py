"""Layer-level semantics of the reference: causal padding, caches, temporal resampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cdt_fast import DiagonalGaussian, FeatureCache
from cdt_fast.reference.layers import CausalConv3d, TimeDownsample, TimeUpsample


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("plan", [[1, 4, 4], [1, 1, 1, 2, 4], [3, 1, 5], [9]])
def test_causal_conv_stream_equals_whole_clip(pad_mode, plan):
    torch.manual_seed(0)
    conv = CausalConv3d(5, 6, (3, 3, 3), padding=(1, 1, 1), pad_mode=pad_mode)
    x = torch.randn(2, 5, sum(plan), 7, 9)
    whole = conv(x)
    cache, outs, start = FeatureCache(), [], 0
    for n in plan:
        outs.append(conv(x[:, :, start : start + n], cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 2), whole, rtol=1e-5, atol=1e-5)
    assert cache.get(conv).shape[2] == 2


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
def test_causal_conv_padding_matches_upstream_definition(pad_mode):
    torch.manual_seed(1)
    conv = CausalConv3d(3, 4, (3, 7, 7), padding=(1, 3, 3), pad_mode=pad_mode)
    x = torch.randn(1, 3, 4, 6, 5)
    mode = {"zeros": "constant", "replicate": "replicate"}[pad_mode]
    expected = F.conv3d(F.pad(x, (3, 3, 3, 3, 2, 0), mode=mode), conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (1, 4, 4, 6, 5)


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
def test_time_downsample_stream(pad_mode):
    torch.manual_seed(2)
    layer = TimeDownsample(3, pad_mode=pad_mode)
    torch.nn.init.normal_(layer.conv.weight)
    x = torch.randn(1, 3, 9, 2, 3)
    whole = layer(x)
    assert whole.shape[2] == 5
    cache = FeatureCache()
    parts = [layer(x[:, :, :1], cache), layer(x[:, :, 1:5], cache), layer(x[:, :, 5:], cache)]
    torch.testing.assert_close(torch.cat(parts, 2), whole)


def test_time_upsample_drops_first_frame_once():
    layer = TimeUpsample(2)
    x = torch.randn(1, 2, 3, 2, 2)
    assert layer(x).shape[2] == 5
    cache = FeatureCache()
    assert layer(x[:, :, :1], cache).shape[2] == 1
    assert layer(x[:, :, 1:], cache).shape[2] == 4
    # upstream's initialisation copies each frame into both of its children
    torch.testing.assert_close(layer(x)[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(layer(x)[:, :, 1:3], x[:, :, 1:2].expand(-1, -1, 2, -1, -1))


def test_posterior():
    params = torch.cat([torch.full((2, 3, 1, 2, 2), 0.5), torch.full((2, 3, 1, 2, 2), -40.0)], 1)
    post = DiagonalGaussian(params)
    assert torch.equal(post.parameters, params) and torch.equal(post.mode(), post.mean)
    assert torch.all(post.logvar == -30.0)  # clamped as upstream
    a = post.sample(torch.Generator().manual_seed(0))
    b = post.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    unit = DiagonalGaussian(torch.zeros(2, 6, 1, 2, 2))
    torch.testing.assert_close(unit.kl(), torch.zeros(2))
    shifted = DiagonalGaussian(
        torch.cat([torch.ones(1, 3, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2)], 1)
    )
    torch.testing.assert_close(shifted.kl(), torch.tensor([0.5 * 12]))
