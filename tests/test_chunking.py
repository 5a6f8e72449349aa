"""Chunk invariance, causality and determinism of the reference encode/decode."""

from __future__ import annotations

import pytest
import torch

from cdt_fast import CDT, FeatureCache, chunking, randomize_

from .conftest import random_video, tiny_config

ATOL = 2e-5


@pytest.fixture(scope="module", params=["base", "small"])
def model(request) -> CDT:
    return randomize_(CDT(tiny_config(request.param)), seed=7).eval()


def _video(b=2, t=17, h=16, w=24, seed=0):
    return random_video(b=b, t=t, h=h, w=w, seed=seed)


@pytest.mark.parametrize("chunk", [4, 8, 12])
def test_encode_is_chunk_invariant(model, chunk):
    x = _video()
    whole = model.encode(x, chunk_frames=16)
    torch.testing.assert_close(model.encode(x, chunk_frames=chunk), whole, rtol=0, atol=ATOL)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_decode_is_chunk_invariant(model, chunk, steps):
    z = model.encode(_video(), chunk_frames=16)
    noise = torch.randn(model.output_shape(z.shape), generator=torch.Generator().manual_seed(1))
    whole = model.decode(z, steps=steps, noise=noise, chunk_frames=z.shape[2])
    chunked = model.decode(z, steps=steps, noise=noise, chunk_frames=chunk)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=ATOL)


def test_decode_stream_yields_chunks_that_concatenate_to_decode(model):
    z = model.encode(_video(t=9), chunk_frames=8)
    noise = torch.randn(model.output_shape(z.shape))
    pieces = list(model.decode_stream(z, noise=noise, chunk_frames=1))
    assert [p.shape[2] for p in pieces] == [1, 4, 4]
    torch.testing.assert_close(
        torch.cat(pieces, 2), model.decode(z, noise=noise), rtol=0, atol=ATOL
    )


def test_encode_is_causal(model):
    x = _video(t=17)
    z = model.encode(x, chunk_frames=4)
    x2 = x.clone()
    x2[:, :, 9:] = -x2[:, :, 9:]  # change video frames 9.. -> latent frames 3.. may change
    z2 = model.encode(x2, chunk_frames=4)
    torch.testing.assert_close(z2[:, :, :3], z[:, :, :3], rtol=0, atol=ATOL)
    assert (z2[:, :, 3:] - z[:, :, 3:]).abs().max() > 1e-3  # the test can fail


def test_decode_is_causal(model):
    z = model.encode(_video(t=17), chunk_frames=16)
    noise = torch.randn(model.output_shape(z.shape))
    y = model.decode(z, noise=noise, chunk_frames=2)
    z2 = z.clone()
    z2[:, :, 3:] += 1.0  # latent frames 3.. -> video frames 9..
    y2 = model.decode(z2, noise=noise, chunk_frames=2)
    torch.testing.assert_close(y2[:, :, :9], y[:, :, :9], rtol=0, atol=ATOL)
    assert (y2[:, :, 9:] - y[:, :, 9:]).abs().max() > 1e-3


def test_decode_is_deterministic_with_a_generator(model):
    z = model.encode(_video(b=1, t=5))
    a = model.decode(z, generator=torch.Generator().manual_seed(5))
    b = model.decode(z, generator=torch.Generator().manual_seed(5))
    c = model.decode(z, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_noise_is_drawn_as_upstream(model):
    """Upstream draws 4*T latent frames of noise and drops the first 3."""
    z = model.encode(_video(b=1, t=5))
    b, _, t, h, w = z.shape
    expected = torch.randn((b, 3, 4 * t, 8 * h, 8 * w), generator=torch.Generator().manual_seed(3))[
        :, :, 3:
    ]
    via_noise = model.decode(z, noise=expected)
    via_gen = model.decode(z, generator=torch.Generator().manual_seed(3))
    assert torch.equal(via_noise, via_gen)


def test_batch_items_are_independent(model):
    x = _video(b=2, t=5)
    z = model.encode(x)
    torch.testing.assert_close(model.encode(x[1:]), z[1:], rtol=0, atol=ATOL)
    noise = torch.randn(model.output_shape(z.shape))
    y = model.decode(z, noise=noise)
    torch.testing.assert_close(model.decode(z[:1], noise=noise[:1]), y[:1], rtol=0, atol=ATOL)


def test_two_streams_interleaved_do_not_interfere(model):
    """The cache is per call: interleaving two videos' chunks gives each its own result."""
    xa, xb = _video(b=1, seed=1), _video(b=1, seed=2)
    za, zb = model.encode(xa, chunk_frames=4), model.encode(xb, chunk_frames=4)
    ga, gb = model.encode_chunks(xa, 4), model.encode_chunks(xb, 4)
    pa, pb = [], []
    for ca, cb in zip(ga, gb):
        pa.append(ca)
        pb.append(cb)
    torch.testing.assert_close(torch.cat(pa, 2)[:, : za.shape[1]], za, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(pb, 2)[:, : zb.shape[1]], zb, rtol=0, atol=0)


def test_cache_memory_does_not_grow_with_video_length():
    model = randomize_(CDT(tiny_config("small")), seed=1).eval()
    sizes = []
    for frames in (9, 33):
        cache = FeatureCache()
        x = _video(b=1, t=frames, h=16, w=16)
        for a, b in chunking.encode_plan(frames, 4):
            model.context_model.encode(x[:, :, a:b], cache)
        sizes.append(cache.nbytes())
    assert sizes[0] == sizes[1] > 0


def test_chunk_plans():
    assert chunking.encode_plan(17, 4) == [(0, 1), (1, 5), (5, 9), (9, 13), (13, 17)]
    assert chunking.encode_plan(17, 8) == [(0, 1), (1, 9), (9, 17)]
    assert chunking.encode_plan(13, 8) == [(0, 5), (5, 13)]
    assert chunking.encode_plan(9, 64) == [(0, 9)]
    assert chunking.decode_plan(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert [chunking.video_span(a, b) for a, b in chunking.decode_plan(5, 2)] == [
        (0, 5),
        (5, 13),
        (13, 17),
    ]
    with pytest.raises(ValueError, match="multiple of 4"):
        chunking.encode_plan(17, 6)


def test_models_with_different_pad_modes_coexist():
    """Upstream's PAD_MODE is a class global: building CDT-small switches CDT-base to replicate
    padding. Here the pad mode belongs to each layer."""
    base = randomize_(CDT(tiny_config("base")), seed=1).eval()
    x = _video(b=1, t=5)
    before = base.encode(x)
    small = randomize_(CDT(tiny_config("small")), seed=1).eval()
    small.encode(x)
    assert torch.equal(base.encode(x), before)


def test_encode_chunks_builds_no_autograd_graph(model):
    with torch.enable_grad():
        for params in model.encode_chunks(_video(b=1, t=9), 4):
            assert not params.requires_grad


def test_gradients_only_on_request_and_chunk_invariant(model):
    """``grad=True`` follows the caller's grad mode; the gradient through a chunked decode (the
    feature caches chain the chunks' graphs) equals the whole clip's. By default, and in streams,
    nothing is recorded whatever the mode."""
    z0 = model.encode(_video(b=1, t=9), chunk_frames=8)
    noise = torch.randn(model.output_shape(z0.shape), generator=torch.Generator().manual_seed(1))
    grads = []
    for chunk in (z0.shape[2], 1):
        z = z0.clone().requires_grad_()
        model.decode(z, noise=noise, chunk_frames=chunk, grad=True).square().sum().backward()
        grads.append(z.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4 * grads[0].abs().max())
    x = _video(b=1, t=9).requires_grad_()
    model.encode(x, chunk_frames=4, grad=True).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    z = z0.clone().requires_grad_()
    with torch.enable_grad():
        assert not model.decode(z, noise=noise).requires_grad
        assert not model.encode(x).requires_grad
        assert not any(c.requires_grad for c in model.decode_stream(z, noise=noise))
    with torch.no_grad():
        assert not model.decode(z, noise=noise, grad=True).requires_grad
