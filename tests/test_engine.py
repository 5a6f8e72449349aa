"""The engine (cdt_fast.accelerate) against the reference: parity, accelerating plain state dicts
and upstream-like modules, and the GPU checks. Streaming and out-of-memory fallback are in
``test_engine_streaming.py``, backend selection in ``test_engine_backends.py``."""

from __future__ import annotations

import pytest
import torch

import cdt_fast
from cdt_fast import CDT
from cdt_fast.engine import (
    AcceleratedCDT,
    OpTable,
    accelerate,
    infer_config,
)
from cdt_fast.reference import randomize_

from .bf16_emulation import emulate
from .conftest import random_latent, random_video, tiny_config, upstream_state_dict
from .helpers import UPSTREAM_TOL, assert_bf16_close, exact_fp32


# -- parity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["base", "small"])
@pytest.mark.parametrize("chunk", [None, 4, 8])
def test_encode_matches_reference(engines, upstream_io, preset, chunk):
    ref, eng = engines[preset]
    x = upstream_io[f"{preset}.x"]
    z, post = eng.encode(x, return_posterior=True, chunk_frames=chunk)
    torch.testing.assert_close(z, ref.encode(x), rtol=0, atol=UPSTREAM_TOL)
    torch.testing.assert_close(z, upstream_io[f"{preset}.z"], rtol=0, atol=UPSTREAM_TOL)
    torch.testing.assert_close(
        post.parameters, upstream_io[f"{preset}.posterior"], rtol=0, atol=UPSTREAM_TOL
    )


@pytest.mark.parametrize("preset", ["base", "small"])
@pytest.mark.parametrize("steps,chunk", [(1, None), (1, 1), (1, 2), (3, 1), (3, None)])
def test_decode_matches_reference_and_upstream(engines, upstream_io, preset, steps, chunk):
    ref, eng = engines[preset]
    z, noise = upstream_io[f"{preset}.z"], upstream_io[f"{preset}.s{steps}.noise"]
    y = eng.decode(z, steps=steps, noise=noise, chunk_frames=chunk)
    assert y.shape == noise.shape and y.dtype == torch.float32 and y.is_contiguous()
    torch.testing.assert_close(
        y, ref.decode(z, steps=steps, noise=noise), rtol=0, atol=UPSTREAM_TOL
    )
    torch.testing.assert_close(y, upstream_io[f"{preset}.s{steps}.y"], rtol=0, atol=UPSTREAM_TOL)


@pytest.mark.parametrize("preset", ["base", "small"])
def test_channel_padded_unet_inputs_match_reference(upstream_io, preset, monkeypatch):
    """The U-Net's first level reads noise | context (3 + 16 channels at CDT-base's real widths):
    on CUDA and under the Triton conv the engine appends zero channels up to a multiple of 16, with
    zero weights for them, so the kernels' loads are 16-byte aligned. The result must not move."""
    from cdt_fast.engine import accelerated

    monkeypatch.setattr(accelerated, "channel_alignment", lambda device, ops: 16)
    ref = CDT(tiny_config(preset))
    ref.load_state_dict(upstream_state_dict(preset))
    eng = accelerate(ref.eval(), backend="torch")
    assert eng.unet_plan.down_pads[0] > 0  # the tiny configs read 6 / 7 channels there
    first = eng.unet_plan.downs[0][0]
    assert first.block1.conv.weight.shape[1] % 16 == 0 == first.shortcut.weight.shape[1] % 16
    z, noise = upstream_io[f"{preset}.z"], upstream_io[f"{preset}.s1.noise"]
    torch.testing.assert_close(
        eng.decode(z, noise=noise, chunk_frames=1),
        upstream_io[f"{preset}.s1.y"],
        rtol=0,
        atol=UPSTREAM_TOL,
    )


def test_channel_alignment_follows_the_conv_backend():
    from cdt_fast.engine.layout import channel_alignment

    interp = {"TRITON_INTERPRET": "1"}
    assert channel_alignment(torch.device("cpu"), OpTable("triton", env=interp)) == 16
    assert (
        channel_alignment(
            torch.device("cpu"), OpTable("auto,causal_conv3d_norm=triton", env=interp)
        )
        == 16
    )
    assert channel_alignment(torch.device("cpu"), OpTable("torch", env=interp)) == 1
    assert channel_alignment(torch.device("cpu"), OpTable("auto", env={})) == 1
    assert channel_alignment(torch.device("cuda"), OpTable("torch", env={})) == 8  # cuDNN


def test_same_rng_gives_same_video_as_reference(engines):
    ref, eng = engines["small"]
    z = random_latent(ref)
    y_ref = ref.decode(z, generator=torch.Generator().manual_seed(5))
    y = eng.decode(z, generator=torch.Generator().manual_seed(5), chunk_frames=1)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=UPSTREAM_TOL)


@pytest.mark.parametrize("preset", ["base", "small"])
def test_awkward_shapes_batch2_odd_latent(preset):
    """Batch 2 and 24x40 video (3x5 latent: the U-Net crops odd levels), random weights."""
    ref = randomize_(CDT(tiny_config(preset)), seed=3).eval()
    eng = accelerate(ref, backend="torch")
    x = random_video(b=2, t=5, h=24, w=40)
    z = eng.encode(x, chunk_frames=4)
    torch.testing.assert_close(z, ref.encode(x), rtol=0, atol=UPSTREAM_TOL)
    noise = torch.randn(ref.output_shape(z.shape))
    torch.testing.assert_close(
        eng.decode(z, noise=noise, chunk_frames=1),
        ref.decode(z, noise=noise),
        rtol=0,
        atol=UPSTREAM_TOL,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_error_at_most_that_of_reference(engines, upstream_io, dtype):
    """flash-attention's oracle: our low-precision error vs fp32 is at most (about) that of the
    reference run in the same precision."""
    ref, _ = engines["small"]
    eng = accelerate(ref, backend="torch", dtype=dtype)
    assert eng.dtype == dtype and ref.dtype == torch.float32  # the given model is untouched
    ref_low = CDT(ref.config).to(dtype)
    ref_low.load_state_dict(ref.state_dict())
    z, noise = upstream_io["small.z"], upstream_io["small.s1.noise"]
    y32 = ref.decode(z, noise=noise)
    err = (eng.decode(z, noise=noise, chunk_frames=1) - y32).abs().max().item()
    err_ref = (ref_low.decode(z, noise=noise) - y32).abs().max().item()
    assert err <= 2 * err_ref + 1e-3, (err, err_ref)
    x = upstream_io["small.x"]
    zerr = (eng.encode(x) - ref.encode(x)).abs().max().item()
    zerr_ref = (ref_low.encode(x) - ref.encode(x)).abs().max().item()
    assert zerr <= 2 * zerr_ref + 1e-3, (zerr, zerr_ref)


def test_forward_and_forward_with_info(engines, upstream_io):
    ref, eng = engines["base"]
    x = upstream_io["base.x"]
    noise = upstream_io["base.s1.noise"]
    torch.testing.assert_close(eng(x, noise=noise), ref(x, noise=noise), rtol=0, atol=UPSTREAM_TOL)
    y, mu, logvar, std = eng.forward_with_info(x, noise=noise)
    torch.testing.assert_close(mu, upstream_io["base.z"], rtol=0, atol=UPSTREAM_TOL)
    assert eng.latent_scale == ref.latent_scale and eng.config == ref.config


# -- construction ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["base", "small"])
def test_infer_config_from_state_dict(preset):
    sd = upstream_state_dict(preset)
    assert infer_config(sd).architecture_hash() == tiny_config(preset).architecture_hash()
    with torch.device("meta"):  # the real preset's widths too (on meta: no memory)
        full = CDT(cdt_fast.CDTConfig.preset(preset))
    assert infer_config(full.state_dict()) == cdt_fast.CDTConfig.preset(preset)


def test_accelerate_plain_state_dict_and_upstream_like_module(engines, upstream_io):
    _, eng = engines["base"]
    z, noise = upstream_io["base.z"], upstream_io["base.s1.noise"]
    expected = eng.decode(z, noise=noise)

    class UpstreamLike(torch.nn.Module):  # only its state dict's format matters
        def __init__(self):
            super().__init__()
            self.model = CDT(tiny_config("base")).model

    upstream = UpstreamLike()
    upstream.model.load_state_dict(
        {k[len("model.") :]: v for k, v in upstream_state_dict("base").items()}
    )
    for source in (upstream_state_dict("base"), upstream):
        other = accelerate(source, backend="torch")
        assert isinstance(other, AcceleratedCDT)
        torch.testing.assert_close(other.decode(z, noise=noise), expected, rtol=0, atol=0)
    assert set(eng.state_dict()) == set(upstream_state_dict("base"))
    # packing shares the converted model's storage (no second copy of the weights) ...
    assert (
        eng.unet_plan.final_conv.weight.data_ptr()
        == eng.model.denoise_fn.final_conv[1].weight.data_ptr()
    )
    with pytest.raises(RuntimeError, match="accelerate"):  # ... so moving it alone is refused
        eng.to(torch.float16)
    again = accelerate(eng, dtype=torch.float16)  # re-accelerating keeps the config
    assert again.config == eng.config and again.dtype == torch.float16
    assert eng.dtype == torch.float32
    with pytest.raises(TypeError, match="model must be"):
        accelerate(42)
    with pytest.raises(ValueError, match="upstream's format"):
        accelerate({"weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="dtype"):
        accelerate(upstream, dtype=torch.int8)


def test_load_cdt_accelerate(tmp_path):
    path = tmp_path / "cdt_small.safetensors"
    from safetensors.torch import save_file

    save_file(upstream_state_dict("small"), str(path))
    cfg = tiny_config("small")
    model = cdt_fast.load_cdt(
        "small",
        dtype=torch.float32,
        ckpt=path,
        accelerate=True,
        context_dim=cfg.context_dim,
        unet_dim=cfg.unet_dim,
        latent_dim=cfg.latent_dim,
        out_channels=cfg.out_channels,
    )
    assert isinstance(model, AcceleratedCDT) and model.dtype == torch.float32


def test_cuda_graphs_fall_back_on_cpu(engines):
    _, eng = engines["small"]
    z = random_latent(eng, t=4)
    for _ in eng.decode_stream(z, chunk_frames=1):
        pass
    session = eng._sessions[("decode", 1, 4, 4, 1)]
    assert session.steady and session.graphs.reason == "no CUDA graphs on cpu"
    assert session.graphs.captures == 0
    report = eng.backend_report()
    assert report["graphs"][("decode", 1, 4, 4, 1)][0] == "no CUDA graphs on cpu"


def test_execution_record_counts_calls_per_backend(engines):
    """Each op call counts under the backend that served it (torch serves the Block op itself);
    a reset starts the record afresh."""
    _, eng = engines["small"]
    eng.reset_execution_record()
    assert eng.execution_record()["ops"] == {}
    eng.encode(random_video(t=5, h=16, w=16), chunk_frames=4)  # two chunks
    ran = eng.execution_record()["ops"]
    assert all(set(counts) == {"torch"} for counts in ran.values()), ran
    assert ran["causal_conv3d_norm"]["torch"] > 0 and ran["time_downsample"] == {"torch": 4}
    assert eng.execution_record()["cuda_graphs"]["eager"] == 2
    eng.reset_execution_record()
    assert eng.execution_record()["ops"] == {}


def test_history_buffers_are_reused_across_chunks(engines):
    _, eng = engines["small"]
    z = random_latent(eng, t=4)
    stream = eng.decode_stream(z, chunk_frames=1)
    next(stream)
    session = eng._sessions[("decode", 1, 4, 4, 1)]
    ptrs = {id(k): h.cur.data_ptr() for s in session.states for k, h in s.histories.items()}
    for _ in stream:
        pass
    assert ptrs == {id(k): h.cur.data_ptr() for s in session.states for k, h in s.histories.items()}


# -- GPU -------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["base", "small"])
def test_gpu_bf16_within_emulation_and_graph_replay(preset):
    """The bf16 engine is as close to fp32 as the bf16 emulation (tests/bf16_emulation.py) of the
    same decode, within the derived multiples (tests/helpers.py)."""
    ref = randomize_(CDT(cdt_fast.CDTConfig.preset(preset)), seed=0).cuda().eval()
    x = torch.rand(1, 3, 17, 256, 256, device="cuda") * 2 - 1  # 5 latent frames: graphs replay
    with exact_fp32():  # the fp32 oracle and the fp32 islands without TF32
        z = ref.encode(x)
        noise = torch.randn(ref.output_shape(z.shape), device="cuda")
        y32 = ref.decode(z, noise=noise)
        eng = accelerate(ref, dtype=torch.bfloat16)
        y = eng.decode(z, noise=noise, chunk_frames=1)
        emulated = emulate(accelerate(ref, backend="torch", dtype=torch.bfloat16))
        assert_bf16_close(y, y32, emulated.decode(z, noise=noise, chunk_frames=1))
    session = eng._sessions[("decode", 1, 32, 32, 1)]
    assert session.graphs.replays >= 1, eng.backend_report()["graphs"]
    y2 = eng.decode(z, noise=noise, chunk_frames=1)  # replayed graphs give the eager result
    torch.testing.assert_close(y2, y, rtol=0, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_stream_peak_memory_does_not_grow_with_length():
    ref = randomize_(CDT(cdt_fast.CDTConfig.small()), seed=0).cuda().eval()
    eng = accelerate(ref, dtype=torch.bfloat16)
    peaks = []
    for frames in (4, 12):
        z = torch.randn(1, 16, frames, 32, 32, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in eng.decode_stream(iter(z.split(1, dim=2)), chunk_frames=1):
            pass
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] <= 1.05 * peaks[0], peaks
