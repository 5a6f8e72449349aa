"""AutoencoderCDT: diffusers' autoencoder interface over CDT (skipped without diffusers)."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import cdt_fast
from cdt_fast import CDT, CDTConfig, randomize_
from cdt_fast.integrations.diffusers import AutoencoderCDT, read_latent_stats


def _cdt() -> CDT:
    cfg = CDTConfig.preset("small", context_dim=4, unet_dim=4, latent_dim=16, out_channels=3)
    return randomize_(CDT(cfg).eval())


@pytest.fixture(scope="module")
def cdt() -> CDT:
    return _cdt()


@pytest.fixture(scope="module")
def vae(cdt) -> AutoencoderCDT:
    return AutoencoderCDT.from_cdt(cdt, latents_mean=[0.1] * 16, latents_std=[2.0] * 16)


def _video(b=1, t=5, h=32, w=48):
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(5)) * 2 - 1


def test_config_and_numbers_equal_cdt(cdt, vae):
    cfg = vae.config
    assert cfg.z_dim == 16 and cfg.scale_factor_temporal == 4 and cfg.scale_factor_spatial == 8
    assert cfg.scaling_factor == cdt.config.latent_scale and cfg.decode_steps == 1
    assert cfg.latents_mean == [0.1] * 16 and cfg.latents_std == [2.0] * 16
    x = _video()
    dist = vae.encode(x).latent_dist
    z, posterior = cdt.encode(x, return_posterior=True)
    assert torch.equal(dist.mode(), z)
    assert torch.equal(dist.std, posterior.std)
    torch.testing.assert_close(dist.kl(), posterior.kl())
    assert dist.kl().shape == (1,)
    g = torch.Generator().manual_seed(2)
    drawn = dist.sample(generator=g)
    g = torch.Generator().manual_seed(2)
    torch.testing.assert_close(drawn, posterior.sample(g))
    out = vae.decode(z, generator=torch.Generator().manual_seed(3)).sample
    ref = cdt.decode(z, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, ref.clamp(-1, 1))
    (tupled,) = vae.decode(z, return_dict=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(tupled, out)
    recon = vae(x, generator=torch.Generator().manual_seed(3)).sample
    assert torch.equal(recon, out)


def test_slicing_and_tiling(cdt, vae):
    x = _video(b=2)
    z = vae.encode(x).latent_dist.mode()
    ref = vae.decode(z, generator=torch.Generator().manual_seed(4)).sample
    vae.enable_slicing()
    try:
        # same numbers up to the batch size's effect on the kernels' summation order
        torch.testing.assert_close(vae.encode(x).latent_dist.mode(), z, atol=1e-4, rtol=1e-4)
        sliced = vae.decode(z, generator=torch.Generator().manual_seed(4)).sample
        torch.testing.assert_close(sliced, ref, atol=1e-4, rtol=1e-4)
    finally:
        vae.disable_slicing()
    vae.enable_tiling(tile=24, overlap=8)
    try:
        tiled = vae.decode(z, generator=torch.Generator().manual_seed(4)).sample
        noise = cdt.initial_noise(z, torch.Generator().manual_seed(4))
        expect = cdt.decode(z, noise=noise, tile=24, tile_overlap=8).clamp(-1, 1)
        assert torch.equal(tiled, expect)
        assert torch.equal(vae.encode(x).latent_dist.mode(), cdt.encode(x, tile=24, tile_overlap=8))
    finally:
        vae.disable_tiling()
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.enable_tiling(tile=20)


def test_engine_matches(cdt):
    vae = AutoencoderCDT.from_cdt(cdt).accelerate(backend="torch")
    x = _video()
    z = cdt.encode(x)
    torch.testing.assert_close(vae.encode(x).latent_dist.mode(), z, atol=1e-4, rtol=1e-4)
    out = vae.decode(z, generator=torch.Generator().manual_seed(3)).sample
    ref = cdt.decode(z, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    torch.testing.assert_close(out, ref)


def test_save_load_round_trip(tmp_path, cdt, vae):
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "config.json").is_file()
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AutoencoderCDT.from_pretrained(tmp_path / "vae", low_cpu_mem_usage=False)

    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(vae.config)
    for (k, a), (k2, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    z = torch.randn(1, 16, 2, 3, 4)
    a = vae.decode(z, generator=torch.Generator().manual_seed(0)).sample
    b = loaded.decode(z, generator=torch.Generator().manual_seed(0)).sample
    assert torch.equal(a, b)
    # the weights keep upstream's names: cdt_fast.load reads the folder's file
    plain = cdt_fast.load(cdt.config, tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(plain.decode(z, generator=torch.Generator().manual_seed(0)).clamp(-1, 1), a)


def test_from_upstream_and_manifest(tmp_path, cdt):
    ckpt = cdt_fast.save(cdt, tmp_path / "cdt.safetensors")
    folder = tmp_path / "latents"
    folder.mkdir()
    stats = {"mean": [float(i) for i in range(16)], "std": [1.0 + i for i in range(16)]}
    (folder / "manifest.json").write_text(json.dumps({"latent_stats": stats}))
    assert read_latent_stats(folder) == (stats["mean"], stats["std"])
    vae = AutoencoderCDT.from_upstream(ckpt, preset=cdt.config, latents_manifest=folder)
    assert vae.config.latents_mean == stats["mean"] and vae.config.latents_std == stats["std"]
    x = _video()
    assert torch.equal(vae.encode(x).latent_dist.mode(), cdt.encode(x))
    (folder / "manifest.json").write_text(json.dumps({"videos": []}))
    with pytest.raises(ValueError, match="latent-stats"):
        read_latent_stats(folder)


def test_bad_config():
    cfg = CDTConfig.preset("small", context_dim=4, unet_dim=4).to_dict()
    with pytest.raises(ValueError, match="latents_std"):
        AutoencoderCDT(cdt_config=cfg, latents_std=[1.0] * 3)
    with pytest.raises(ValueError, match="z_dim"):
        AutoencoderCDT(cdt_config=cfg, z_dim=8)
    with pytest.raises(TypeError, match="cdt_config"):
        AutoencoderCDT(cdt_config="base")


def test_wan_pipeline_end_to_end(vae):
    """A tiny random WanPipeline generates a video through AutoencoderCDT as its vae."""
    pytest.importorskip("transformers")  # diffusers' Wan pipeline module imports it
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    out = pipe(
        prompt_embeds=torch.randn(1, 8, 32),
        negative_prompt_embeds=torch.randn(1, 8, 32),
        height=32,
        width=48,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).frames
    assert out.shape == (1, 5, 3, 32, 48)
    assert bool(torch.isfinite(out).all()) and 0.0 <= out.min() and out.max() <= 1.0
