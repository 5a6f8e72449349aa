"""AutoencoderCDT: diffusers' autoencoder interface over CDT (skipped without diffusers)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def test_a_generator_per_sample(vae):
    """``decode(z, generator=[g0, g1])`` (diffusers' list form): sample i's noise is drawn from
    its own generator, so it equals decoding that sample alone with it."""
    z = torch.randn(2, 16, 2, 4, 6, generator=torch.Generator().manual_seed(9))
    out = vae.decode(z, generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).sample
    for i, seed in enumerate((3, 4)):
        alone = vae.decode(z[i : i + 1], generator=torch.Generator().manual_seed(seed)).sample
        torch.testing.assert_close(out[i : i + 1], alone, atol=1e-4, rtol=1e-4)  # batch order
    recon = vae(_video(b=2), generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    assert recon.sample.shape == (2, 3, 5, 32, 48)
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        vae.decode(z, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="noise or generator"):
        vae.decode(z, generator=[torch.Generator()] * 2, noise=torch.zeros(2, 3, 5, 32, 48))


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
    # the engine computes from its own copy of the weights, without gradients: asking for them,
    # or moving the module away from that copy, raises instead of being ignored
    with pytest.raises(RuntimeError, match="no gradients"):
        vae.decode(z.clone().requires_grad_())
    with pytest.raises(RuntimeError, match="cannot be moved or cast"):
        vae.to(torch.float64)
    with pytest.raises(RuntimeError, match="layerwise casting"):
        vae.enable_layerwise_casting(torch.bfloat16, torch.float32)


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


def test_a_video_of_other_length_says_what_to_pass(vae):
    """The Wan VAE encodes a 7-frame video as its first 5 frames without saying so (as a
    video-to-video pipeline hands it any clip); AutoencoderCDT refuses and says which to pass."""
    with pytest.raises(ValueError, match="x has 7 frames; .* 1\\+4k frames: pass the first 5"):
        vae.encode(_video(t=7))


def test_bad_config():
    cfg = CDTConfig.preset("small", context_dim=4, unet_dim=4).to_dict()
    with pytest.raises(ValueError, match="latents_std"):
        AutoencoderCDT(cdt_config=cfg, latents_std=[1.0] * 3)
    with pytest.raises(ValueError, match="z_dim"):
        AutoencoderCDT(cdt_config=cfg, z_dim=8)
    with pytest.raises(TypeError, match="cdt_config"):
        AutoencoderCDT(cdt_config="base")


def _transformer(cls=None, **overrides):
    """A tiny random Wan transformer: 2 heads of 8, one layer, 32-wide text embeddings."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    config = dict(
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
    )
    config.update(overrides)
    return (cls or WanTransformer3DModel)(**config).eval()


def _frames(n=5, h=32, w=48):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def _wan_pipeline(kind: str, vae):
    """A Wan pipeline of ``kind`` around ``vae``: the transformer made locally, no text encoder
    (prompt embeddings are passed in), and the inputs its call needs besides them."""
    pytest.importorskip("transformers")  # diffusers' Wan pipeline modules import it
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanVACEPipeline,
        WanVACETransformer3DModel,
        WanVideoToVideoPipeline,
    )

    parts = dict(tokenizer=None, text_encoder=None, vae=vae)
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=3.0)
    frames = _frames()
    if kind == "text":
        return WanPipeline(transformer=_transformer(), **parts), dict(num_frames=5)
    if kind == "image":
        # Wan 2.2's image-to-video layout: no image encoder; the transformer reads the noisy
        # latents (16), the first-frame mask (4, one per frame of a latent frame) and the image's
        # latents (16)
        pipe = WanImageToVideoPipeline(transformer=_transformer(in_channels=36), **parts)
        return pipe, dict(image=frames[0], num_frames=5)
    if kind == "video":
        pipe = WanVideoToVideoPipeline(transformer=_transformer(), **parts)
        return pipe, dict(video=frames, strength=0.8)
    # VACE's control input: inactive and reactive latents (2 x 16) and the mask folded into
    # 8 x 8 = 64 channels
    transformer = _transformer(WanVACETransformer3DModel, vace_layers=[0], vace_in_channels=96)
    masks = [frames[0].convert("L").point(lambda _: 255)] * 5
    pipe = WanVACEPipeline(transformer=transformer, **parts)
    return pipe, dict(video=frames, mask=masks, reference_images=[frames[1]], num_frames=5)


def _generate(pipe, inputs, seed=0, output_type="pt"):
    return pipe(
        prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
        negative_prompt_embeds=torch.zeros(1, 8, 32),
        height=32,
        width=48,
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(seed),
        output_type=output_type,
        **inputs,
    ).frames


@pytest.mark.parametrize("kind", ["text", "image", "video", "vace"])
def test_wan_pipelines_run_with_cdt(vae, kind):
    """Tiny random Wan pipelines (text, image, video and VACE to video) generate through
    AutoencoderCDT as their vae: the frames are its decode of the pipeline's final latents,
    un-normalised with its latents_mean / latents_std, mapped from [-1, 1] to [0, 1]."""
    pipe, inputs = _wan_pipeline(kind, vae)
    assert pipe.vae_scale_factor_temporal == 4 and pipe.vae_scale_factor_spatial == 8
    out = _generate(pipe, inputs)
    assert out.shape == (1, 5, 3, 32, 48)
    assert bool(torch.isfinite(out).all()) and 0.0 <= out.min() and out.max() <= 1.0
    latents = _generate(pipe, inputs, output_type="latent")
    latents = latents[:, :, len(inputs.get("reference_images", [])) :]  # VACE's come first
    channels = (1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(channels)
    z = latents * std + torch.tensor(vae.config.latents_mean).view(channels)
    expect = (vae.decode(z).sample / 2 + 0.5).clamp(0, 1).transpose(1, 2)
    torch.testing.assert_close(out, expect)


def test_pipeline_runs_repeat(vae):
    """Pipelines call decode without a generator: the config's decode_seed makes the same call
    give the same frames, without touching the global RNG."""
    pipe, inputs = _wan_pipeline("text", vae)
    first = _generate(pipe, inputs)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert torch.equal(_generate(pipe, inputs), first)
    assert not torch.equal(_generate(pipe, inputs, seed=1), first)
    assert torch.equal(torch.get_rng_state(), state)  # decode drew from its own generator
    z = torch.randn(1, 16, 2, 4, 6)
    global_rng = AutoencoderCDT.from_cdt(vae.cdt, decode_seed=None)  # CDT's own behaviour
    assert global_rng.config.decode_seed is None
    assert not torch.equal(global_rng.decode(z).sample, global_rng.decode(z).sample)
    with pytest.raises(ValueError, match="decode_seed"):
        AutoencoderCDT.from_cdt(vae.cdt, decode_seed=-1)


def test_wan_attributes_and_mixin(vae):
    from diffusers.models.autoencoders.vae import AutoencoderMixin

    assert isinstance(vae, AutoencoderMixin)
    assert vae.temperal_downsample == [False, True, True]
    assert vae.temperal_upsample == [True, True, False]
    assert vae.spatial_compression_ratio == 8 and vae.temporal_compression_ratio == 4
    vae.clear_cache()  # nothing is kept between calls
    pytest.importorskip("transformers")
    from diffusers import FlowMatchEulerDiscreteScheduler, SkyReelsV2Pipeline

    pipe = SkyReelsV2Pipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=None,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    assert pipe.vae_scale_factor_temporal == 4 and pipe.vae_scale_factor_spatial == 8


def test_gradients_flow_and_a_training_step_lowers_the_loss(cdt):
    """encode/decode follow the caller's grad mode, as diffusers' VAEs do."""
    vae = AutoencoderCDT.from_cdt(copy.deepcopy(cdt)).train()
    x = _video()
    with torch.no_grad():
        assert not vae(x).sample.requires_grad
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = F.mse_loss(vae(x).sample, x)  # decode(encode(x).mode()), fixed decode noise
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    for part in (vae.cdt.context_model, vae.cdt.unet):  # both networks learn
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # and into the input, through a tiled encode and a sliced decode
    vae.enable_tiling(tile=24, overlap=8)
    vae.enable_slicing()
    x2 = _video(b=2).requires_grad_()
    vae.decode(vae.encode(x2).latent_dist.mode()).sample.square().sum().backward()
    assert x2.grad is not None and x2.grad.abs().sum() > 0


class _CountingHook:
    """What accelerate's offload hooks offer AutoencoderCDT: ``pre_forward(module)``."""

    def __init__(self):
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


def test_offload_hook_runs_before_encode_and_decode(cdt):
    vae = AutoencoderCDT.from_cdt(cdt)
    hook = vae._hf_hook = _CountingHook()  # where accelerate's cpu_offload_with_hook puts it
    z = vae.encode(_video()).latent_dist.mode()
    assert hook.calls == 1
    vae.decode(z)
    assert hook.calls == 2


def test_model_cpu_offload_moves_the_vae(vae):
    """With accelerate installed, a pipeline's model cpu offload hook fires on decode."""
    pytest.importorskip("accelerate")
    pipe, inputs = _wan_pipeline("text", copy.deepcopy(vae))
    pipe.enable_model_cpu_offload(device="cpu")
    hook = pipe.vae._hf_hook
    counter = _CountingHook()
    original = hook.pre_forward
    hook.pre_forward = lambda module, *a, **k: (counter.pre_forward(module), original(module))[1]
    _generate(pipe, inputs)
    assert counter.calls >= 1


def test_sequential_cpu_offload_runs_the_vae(vae):
    """Sequential offload (``enable_sequential_cpu_offload`` calls accelerate's ``cpu_offload`` on
    each model) keeps every weight on 'meta' between calls, each layer's hook loading its own on
    forward; CDT's fused layers read weights of layers they do not call, so encode and decode
    bring the VAE's weights in for the call and drop them after. ``cpu_offload`` is applied to the
    VAE alone, with the execution device "cpu" (the pipeline method names it "cpu:0", where
    accelerate leaves plain tensors in place of the parameters it loads, a CPU-only quirk)."""
    pytest.importorskip("accelerate")
    from accelerate import cpu_offload

    pipe, inputs = _wan_pipeline("text", vae)
    expect = _generate(pipe, inputs)
    pipe, inputs = _wan_pipeline("text", copy.deepcopy(vae))
    cpu_offload(pipe.vae, torch.device("cpu"))
    assert {p.device.type for p in pipe.vae.parameters()} == {"meta"}
    assert torch.equal(_generate(pipe, inputs), expect)
    x = _video()
    assert torch.equal(pipe.vae.encode(x).latent_dist.mode(), vae.encode(x).latent_dist.mode())
    assert {p.device.type for p in pipe.vae.parameters()} == {"meta"}  # offloaded again


def test_group_offload_is_refused_saying_what_to_do(vae):
    """diffusers' group offloading would leave the weights that fused layers read on the offload
    device: refused with the alternatives; a pipeline that leaves the VAE out runs."""
    pipe, inputs = _wan_pipeline("text", copy.deepcopy(vae))
    with pytest.raises(ValueError, match=r"group offloading .*exclude_modules=\['vae'\]"):
        pipe.enable_group_offload(torch.device("cpu"), offload_type="leaf_level")
    pipe, inputs = _wan_pipeline("text", copy.deepcopy(vae))
    pipe.enable_group_offload(
        torch.device("cpu"), offload_type="leaf_level", exclude_modules=["vae"]
    )
    assert _generate(pipe, inputs).shape == (1, 5, 3, 32, 48)


def test_tiling_with_wan_keywords_equals_ours(cdt):
    vae = AutoencoderCDT.from_cdt(cdt)
    x = _video(h=40, w=56)
    z = vae.encode(x).latent_dist.mode()
    vae.enable_tiling(tile=(24, 32), overlap=(8, 16))
    ours = vae.encode(x).latent_dist.mode(), vae.decode(z).sample
    vae.disable_tiling()
    vae.enable_tiling(
        tile_sample_min_height=24,
        tile_sample_min_width=32,
        tile_sample_stride_height=16,
        tile_sample_stride_width=16,
    )
    wans = vae.encode(x).latent_dist.mode(), vae.decode(z).sample
    assert all(torch.equal(a, b) for a, b in zip(ours, wans))
    assert not torch.equal(ours[1], AutoencoderCDT.from_cdt(cdt).decode(z).sample)  # it tiled
    vae.enable_tiling(tile_sample_stride_width=24)  # the rest kept: Wan's update rule
    assert vae._tiling == cdt_fast.tiling.Tiling((24, 32), (8, 8))
    fresh = AutoencoderCDT.from_cdt(cdt)
    fresh.enable_tiling()  # Wan's defaults: 256-pixel tiles, stride 192
    assert fresh._tiling == cdt_fast.tiling.Tiling((256, 256), (64, 64))
    with pytest.raises(ValueError, match="not both"):
        vae.enable_tiling(tile=24, tile_sample_min_height=24)
    with pytest.raises(ValueError, match="tile_sample_stride_height=40 exceeds"):
        vae.enable_tiling(tile_sample_stride_height=40)
    with pytest.raises(TypeError, match="tile_sample_min_width"):
        vae.enable_tiling(tile_sample_min_width=24.0)


def test_layerwise_casting_computes_in_the_compute_dtype(cdt):
    """diffusers' layerwise casting: weights stored in float8, each layer cast up to compute."""
    vae = AutoencoderCDT.from_cdt(cdt)
    vae.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    stored = {p.dtype for p in vae.parameters()}
    assert torch.float8_e4m3fn in stored and vae.dtype == torch.float32
    # the same computation from the float8-rounded weights held in float32
    rounded = copy.deepcopy(cdt)
    rounded.load_state_dict({k: v.float() for k, v in vae.state_dict().items()})
    x = _video()
    z = vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(z, rounded.encode(x), rtol=1e-5, atol=1e-5)
    out = vae.decode(z, generator=torch.Generator().manual_seed(0)).sample
    ref = rounded.decode(z, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layerwise casting"):
        vae.accelerate(backend="torch")


def test_save_load_with_subfolder_variant_and_dtype(tmp_path, vae):
    half = copy.deepcopy(vae).to(torch.float16)
    half.save_pretrained(tmp_path / "pipe" / "vae", variant="fp16")
    assert (tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = AutoencoderCDT.from_pretrained(
        tmp_path / "pipe", subfolder="vae", variant="fp16", torch_dtype=torch.float32
    )
    assert loaded.dtype == torch.float32 and loaded.config.decode_seed == vae.config.decode_seed
    for a, b in zip(half.state_dict().values(), loaded.state_dict().values()):
        assert b.dtype == torch.float32 and torch.equal(a.float(), b)
    z = torch.randn(1, 16, 2, 3, 4)
    expect = AutoencoderCDT.from_cdt(copy.deepcopy(vae.cdt).half().float()).decode(z).sample
    assert torch.equal(loaded.decode(z).sample, expect)
    with pytest.raises(OSError):
        AutoencoderCDT.from_pretrained(tmp_path / "pipe", subfolder="vae", variant="bf16")
