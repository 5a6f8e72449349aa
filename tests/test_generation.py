"""The latent video generator's building blocks: attention dispatch, the video DiT and its key/value
cache, latent statistics, and the Fréchet maths."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cdt_fast.availability import BackendStatus
from cdt_fast.generation import attention, attention_backends
from cdt_fast.generation.evaluation import (
    frechet_distance,
    fvd,
    gaussian_stats,
    latent_features,
    latent_frechet_distance,
    load_i3d,
)
from cdt_fast.generation.model import GenConfig, KVCache, VideoDiT
from cdt_fast.generation.stats import ChannelMoments, LatentNormalizer, latent_stats

CPU_BACKENDS = [n for n, s in attention_backends().items() if s.available]


def _qkv(s, heads, tq, tk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, heads, t, d, generator=g).to(dtype) for t in (tq, tk, tk)]  # q, k, v


# -- attention ------------------------------------------------------------------------------------
def test_attention_backends_report_every_backend():
    status = attention_backends()
    assert set(status) == {"flash", "xformers", "triton", "sdpa", "torch"}
    assert all(isinstance(s, BackendStatus) and s.reason for s in status.values())
    assert status["sdpa"].available and status["torch"].available


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(3, 1, 5, 5, 8), (2, 3, 3, 7, 16), (4, 2, 17, 17, 32)])
def test_attention_backends_agree_with_torch(backend, dtype, causal, shape):
    if not attention_backends(torch.device("cpu"), dtype)[backend].available:
        pytest.skip(attention_backends(torch.device("cpu"), dtype)[backend].reason)
    s, heads, tq, tk, d = shape
    q, k, v = _qkv(s, heads, tq, tk, d, dtype)
    expected = attention(q, k, v, causal=causal, backend="torch")
    out = attention(q, k, v, causal=causal, backend=backend, axis="time")
    assert out.dtype == dtype and out.shape == q.shape
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


def test_attention_torch_is_softmax_attention():
    q, k, v = _qkv(2, 2, 3, 4, 8, torch.float64)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    mask = torch.ones(3, 4, dtype=torch.bool).tril(diagonal=1)  # bottom-right aligned
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(attention(q, k, v, causal=True, backend="torch"), expected)


def test_attention_rejects_bad_arguments():
    q, k, v = _qkv(1, 1, 3, 3, 4, torch.float32)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="nope")
    with pytest.raises(ValueError, match="axis"):
        attention(q, k, v, axis="depth")
    with pytest.raises(TypeError, match="causal"):
        attention(q, k, v, causal=1)
    if not attention_backends()["flash"].available:
        with pytest.raises(RuntimeError, match="unavailable"):
            attention(q, k, v, backend="flash")


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="needs triton (interpreter on CPU)")
def test_attention_triton_refuses_autograd():
    q, k, v = _qkv(1, 1, 3, 3, 4, torch.float32)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="backward"):
        attention(q, k, v, backend="triton")


# -- model ----------------------------------------------------------------------------------------
def _model(**overrides) -> VideoDiT:
    config = GenConfig.preset("tiny", in_channels=4, **overrides)
    model = VideoDiT(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # leave the zero initialisation, so that every path matters
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_fresh_model_outputs_zero_and_keeps_shape():
    model = VideoDiT(GenConfig.preset("tiny", in_channels=4))
    x = torch.randn(2, 4, 3, 6, 4)
    out = model(x, torch.rand(2))
    assert out.shape == x.shape and not out.any()  # adaLN-zero head starts at zero


@pytest.mark.parametrize("backend", ["sdpa", "torch"])
def test_causal_cache_chunks_equal_whole_clip(backend):
    model = _model(causal=True, num_classes=3)
    x, t, y = torch.randn(2, 4, 6, 4, 4), torch.rand(2, 6), torch.tensor([0, 2])
    with torch.no_grad():
        whole = model(x, t, y, backend=backend)
        cache, parts = KVCache(), []
        for a, b in ((0, 1), (1, 4), (4, 6)):
            parts.append(
                model(x[:, :, a:b], t[:, a:b], y, backend=backend, cache=cache, update_cache=True)
            )
    assert cache.frames == 6
    torch.testing.assert_close(torch.cat(parts, 2), whole, atol=1e-5, rtol=1e-5)


def test_cache_without_update_leaves_it_unchanged():
    model = _model(causal=True)
    x = torch.randn(1, 4, 4, 4, 4)
    with torch.no_grad():
        cache = KVCache()
        model(x[:, :, :2], torch.rand(1), cache=cache, update_cache=True)
        t = torch.rand(1)
        a = model(x[:, :, 2:], t, cache=cache)
        assert cache.frames == 2
        b = model(x[:, :, 2:], t, cache=cache)
    torch.testing.assert_close(a, b)


def test_causal_model_ignores_future_frames_and_full_model_does_not():
    x = torch.randn(1, 4, 5, 4, 4)
    later = x.clone()
    later[:, :, 3:] += 1.0
    t = torch.full((1,), 0.5)
    with torch.no_grad():
        causal = _model(causal=True)
        torch.testing.assert_close(causal(x, t)[:, :, :3], causal(later, t)[:, :, :3])
        full = _model(causal=False)
        assert not torch.allclose(full(x, t)[:, :, :3], full(later, t)[:, :, :3])


def test_model_runs_on_more_frames_and_other_sizes_than_trained():
    model = _model()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 33, 2, 8), torch.rand(1))
    assert out.shape == (1, 4, 33, 2, 8) and torch.isfinite(out).all()


def test_model_rejects_bad_inputs():
    model = _model(num_classes=2)
    x = torch.randn(1, 4, 2, 4, 4)
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(1, 3, 2, 4, 4), torch.rand(1))
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.randn(1, 4, 2, 3, 4), torch.rand(1))
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.rand(3))
    with pytest.raises(ValueError, match="y must be"):
        model(x, torch.rand(1), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="causal"):
        model(x, torch.rand(1), cache=KVCache())
    with pytest.raises(ValueError, match="preset"):
        GenConfig.preset("XXL")
    with pytest.raises(ValueError, match="depth"):
        GenConfig(depth=3)


def test_presets_have_dit_sizes():
    assert GenConfig.preset("S").hidden == 384 and GenConfig.preset("S").heads == 6
    assert GenConfig.preset("B").hidden == 768 and GenConfig.preset("B").heads == 12
    assert GenConfig.from_dict(GenConfig.preset("S").to_dict()) == GenConfig.preset("S")


# -- latent statistics ----------------------------------------------------------------------------
def test_channel_moments_merge_equals_single_pass():
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(1, 3, n, 2, 2, generator=g) * 3 + 5 for n in (1, 4, 2, 7)]
    single = ChannelMoments(3).update(torch.cat(data, 2))
    shards = [ChannelMoments(3).update(d) for d in data]
    merged = ChannelMoments(3)
    for s in (shards[2], shards[0], ChannelMoments(3), shards[3], shards[1]):
        merged.merge(s)
    assert merged.count == single.count == 14 * 4
    torch.testing.assert_close(merged.mean, single.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.m2, single.m2, rtol=1e-12, atol=1e-10)
    flat = torch.cat(data, 2).double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(merged.mean, flat.mean(1))
    torch.testing.assert_close(merged.std, flat.std(1, unbiased=False))
    roundtrip = ChannelMoments.from_dict(json.loads(json.dumps(merged.to_dict())))
    torch.testing.assert_close(roundtrip.std, merged.std)


def test_channel_moments_rejects_wrong_channels():
    with pytest.raises(ValueError, match="channels"):
        ChannelMoments(3).update(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="no data"):
        _ = ChannelMoments(2).std


def test_latent_stats_writes_manifest_and_normaliser_uses_it(tmp_path):
    from cdt_fast.generation.demo import write_latent_folder

    from .test_generation_train import latent_config

    config = latent_config()
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(1, 4, 2, 2, 2, generator=g) * 2 + 1 for _ in range(5)]
    write_latent_folder(tmp_path, zs, config)
    fallback = LatentNormalizer.from_manifest(
        json.loads((tmp_path / "manifest.json").read_text()), 4
    )
    assert fallback.source == "latent_scale" and fallback.scale == (config.latent_scale,) * 4
    # two ranks' shares, merged through a stand-in all-gather
    parts = [latent_stats(tmp_path, rank=r, world_size=2, write=False) for r in range(2)]
    gathered = latent_stats(tmp_path, gather=lambda _: [p.to_dict() for p in parts], write=False)
    single = latent_stats(tmp_path)
    torch.testing.assert_close(gathered.mean, single.mean)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["latent_stats"]["files"] == 5 and len(manifest["items"]) == 5
    norm = LatentNormalizer.from_manifest(manifest, 4)
    z = torch.cat(zs, 2)
    normalised = norm.normalize(z)
    torch.testing.assert_close(normalised.mean((0, 2, 3, 4)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        normalised.std((0, 2, 3, 4), unbiased=False), torch.ones(4), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(norm.denormalize(normalised), z, atol=1e-5, rtol=1e-5)


# -- Fréchet distance -----------------------------------------------------------------------------
def test_frechet_distance_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    d = 6
    mu1, mu2 = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(2))
    s1, s2 = (torch.rand(d, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    # diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2 plus the squared mean distance
    expected = float(((mu1 - mu2) ** 2).sum() + ((s1.sqrt() - s2.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(
        expected, rel=1e-9
    )
    # a common rotation of both Gaussians changes nothing (and makes the covariances dense)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    dense = frechet_distance(
        rot @ mu1, rot @ torch.diag(s1) @ rot.T, rot @ mu2, rot @ torch.diag(s2) @ rot.T
    )
    assert dense == pytest.approx(expected, rel=1e-8)
    # a Gaussian's distance to itself is 0, with any full covariance
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    assert frechet_distance(mu1, a @ a.T, mu1, a @ a.T) == pytest.approx(0.0, abs=1e-8)


def test_gaussian_stats_and_latent_features():
    x = torch.randn(1000, 3, dtype=torch.float64)
    mean, cov = gaussian_stats(x)
    torch.testing.assert_close(cov, torch.cov(x.T))
    torch.testing.assert_close(mean, x.mean(0))
    feats = latent_features(torch.randn(2, 4, 3, 5, 6))
    assert feats.shape == (2 * 2 * 4 * 5, 4 * 8)
    assert latent_features(torch.randn(2, 4, 1, 3, 3)).shape == (2 * 4, 16)
    z = torch.randn(16, 2, 3, 4, 4)
    assert latent_frechet_distance(z, z) == pytest.approx(0.0, abs=1e-8)
    assert latent_frechet_distance(z + 1, z) == pytest.approx(16.0, rel=1e-6)  # 16 features


def test_fvd_needs_weights_and_uses_a_torchscript_i3d(tmp_path):
    videos = torch.rand(3, 3, 4, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="i3d-weights"):
        fvd(videos, videos)
    with pytest.raises(FileNotFoundError):
        load_i3d(tmp_path / "missing.pt")

    class PoolI3D(torch.nn.Module):  # a stand-in with I3D's interface: [B,3,T,224,224] -> [B,D]
        def forward(self, x):
            return torch.stack([x.mean((2, 3, 4)), x.std((2, 3, 4))], -1).flatten(1)

    path = tmp_path / "i3d.pt"
    torch.jit.script(PoolI3D()).save(str(path))
    assert fvd(videos, videos, i3d_weights=path) == pytest.approx(0.0, abs=1e-8)
    assert fvd(videos, -videos, i3d_weights=path) > 0


def test_generation_benchmark_rows():
    from benchmarks.bench_generation import markdown, run

    rows = run("tiny", batch=1, repeats=1, warmup=0, backends=["sdpa", "torch"])
    assert [(r["kind"], r["backend"]) for r in rows] == [
        ("train_step", "sdpa"),
        ("train_step", "torch"),
        ("sample_step", "sdpa"),
        ("sample_step", "torch"),
    ]
    assert all(r["p50_ms"] > 0 and r["latent_frames_per_s"] > 0 for r in rows)
    assert "| train_step | tiny | sdpa |" in markdown(rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(4099, 2, 5, 5, 64), (64, 6, 256, 256, 64), (33, 3, 7, 13, 32)])
def test_gpu_attention_backends_agree_with_torch(dtype, causal, shape):
    s, heads, tq, tk, d = shape
    q, k, v = (t.cuda() for t in _qkv(s, heads, tq, tk, d, dtype))
    expected = attention(q, k, v, causal=causal, backend="torch").float()
    tol = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    status = attention_backends(q.device, dtype)
    for name in ("auto", "flash", "xformers", "triton", "sdpa"):
        if name != "auto" and not status[name].available:
            continue
        out = attention(q, k, v, causal=causal, backend=name, axis="time").float()
        torch.testing.assert_close(out, expected, atol=tol, rtol=tol, msg=name)


def test_sampler_and_trainer_share_the_model_s_attention_table():
    """A backend name passed to the sampler or the trainer's loss reaches the model, which builds
    that name's op table once and keeps it across calls."""
    from cdt_fast.generation.sampling import sample_latents
    from cdt_fast.generation.train import FlowMatchingLoss

    model = VideoDiT(GenConfig.preset("tiny", in_channels=4))
    table = model._attention("torch")
    with torch.no_grad():
        for _ in range(2):
            sample_latents(model, (1, 4, 2, 4, 4), steps=1, backend="torch")
        FlowMatchingLoss(model, "torch")(torch.randn(1, 4, 2, 4, 4), None, torch.Generator())
    assert model._attention("torch") is table
    (built,) = table.tables.values()
    # three forwards (two 1-step samples, one loss), one attention call per block each
    calls = sum(built.record.ops()["temporal_attention"].values())
    assert calls == 3 * model.config.depth


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_model_trains_under_bf16_autocast_and_samples():
    from cdt_fast.generation.sampling import sample_latents
    from cdt_fast.generation.train import FlowMatchingLoss

    model = VideoDiT(GenConfig.preset("tiny", in_channels=16, num_classes=4)).cuda()
    loss_fn = FlowMatchingLoss(model)
    z, y = torch.randn(2, 16, 5, 8, 8, device="cuda"), torch.tensor([1, 3], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = loss_fn(z, y, torch.Generator(device="cuda").manual_seed(0))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters()
    )
    with torch.no_grad():  # non-zero everywhere, so that attention matters to the samples
        for p in model.parameters():
            p.normal_(0, 0.05)
    a = sample_latents(model.eval(), (1, 16, 5, 8, 8), steps=2, backend="sdpa")
    b = sample_latents(model, (1, 16, 5, 8, 8), steps=2, backend="auto")
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
