"""The single-step denoise pieces: in-kernel noise, per-decode time biases, the fused last stage."""

import pytest
import torch

from cdt_fast import CDT, FeatureCache, randomize_
from cdt_fast import functional as CF
from cdt_fast.reference.diffusion import DDIMSchedule
from cdt_fast.reference.layers import ResnetBlock

from .conftest import tiny_config

triton = pytest.importorskip("triton")
from cdt_fast.kernels.denoise import (
    ddim_update,
    denoise_final,
    denoise_final_reference,
    initial_noise,
    initial_noise_reference,
    time_biases,
    time_embeddings,
    to_uint8_frames,
)

from .helpers import DEVICE

SCHEDULE = DDIMSchedule.create(8192, 4)


# -- initial noise ---------------------------------------------------------------------------


def test_noise_matches_the_documented_philox_stream():
    shape = (2, 3, 3, 5, 7)
    got = initial_noise(shape, 1234, device=DEVICE)
    torch.testing.assert_close(
        got.cpu(), initial_noise_reference(shape, 1234), atol=1e-5, rtol=1e-5
    )
    # A 64-bit seed uses both key words; a different seed is a different stream.
    big = initial_noise((1, 3, 1, 4, 4), 2**40 + 7, device=DEVICE)
    torch.testing.assert_close(
        big.cpu(), initial_noise_reference((1, 3, 1, 4, 4), 2**40 + 7), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(big, initial_noise((1, 3, 1, 4, 4), 7, device=DEVICE))
    # Global indices past 2**32 (a long video) use the counter's high word.
    far = initial_noise((1, 3, 2, 4, 4), 5, 2**27, device=DEVICE)
    torch.testing.assert_close(
        far.cpu(), initial_noise_reference((1, 3, 2, 4, 4), 5, 2**27), atol=1e-5, rtol=1e-5
    )


def test_noise_is_deterministic_and_chunk_invariant():
    shape = (2, 3, 5, 3, 5)
    whole = initial_noise(shape, 7, device=DEVICE)
    assert torch.equal(whole, initial_noise(shape, 7, device=DEVICE))
    pieces = [
        initial_noise((2, 3, stop - start, 3, 5), 7, start, device=DEVICE)
        for start, stop in [(0, 1), (1, 3), (3, 5)]
    ]
    assert torch.equal(torch.cat(pieces, dim=2), whole)
    # The convention is time-major: the first frames do not depend on the clip length.
    assert torch.equal(initial_noise((2, 3, 2, 3, 5), 7, device=DEVICE), whole[:, :, :2])
    ref = initial_noise_reference((2, 3, 2, 3, 5), 7, 3)
    torch.testing.assert_close(ref, whole[:, :, 3:].cpu(), atol=1e-5, rtol=1e-5)


def test_noise_statistics_gamma_dtype_and_out():
    noise = initial_noise((1, 3, 4, 64, 64), 99, gamma=0.8, device=DEVICE)
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.std().item() - 0.8) < 0.02
    half = initial_noise((1, 3, 2, 4, 4), 99, gamma=1.0, dtype=torch.float16, device=DEVICE)
    assert half.dtype == torch.float16
    torch.testing.assert_close(
        half.float(),
        initial_noise((1, 3, 2, 4, 4), 99, gamma=1.0, device=DEVICE),
        atol=2e-3,
        rtol=1e-3,
    )
    out = torch.empty(1, 3, 2, 4, 4, device=DEVICE).to(memory_format=torch.channels_last_3d)
    assert initial_noise((1, 3, 2, 4, 4), 99, out=out, device=DEVICE) is out
    assert torch.equal(out, initial_noise((1, 3, 2, 4, 4), 99, device=DEVICE))


def test_noise_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        initial_noise((1, 3, 4, 4), 0)
    with pytest.raises(ValueError, match="seed"):
        initial_noise((1, 3, 1, 4, 4), -1)
    with pytest.raises(ValueError, match="offset"):
        initial_noise((1, 3, 1, 4, 4), 0, 1.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_noise_matches_the_torch_twin_on_the_same_device():
    shape = (2, 3, 5, 64, 48)
    torch.testing.assert_close(
        initial_noise(shape, 11, 3, device="cuda"),
        initial_noise_reference(shape, 11, 3, device="cuda"),
        atol=1e-5,
        rtol=1e-5,
    )


# -- time biases -----------------------------------------------------------------------------


def test_time_biases_equal_the_per_call_reference():
    unet = randomize_(CDT(tiny_config("base")), seed=3).unet
    biases = time_biases(unet, SCHEDULE)
    blocks = [m for m in unet.modules() if isinstance(m, ResnetBlock)]
    assert set(biases) == set(blocks) and len(blocks) > 0
    emb = time_embeddings(unet, SCHEDULE)
    assert emb.shape == (SCHEDULE.steps, 1, unet.time_mlp[-1].out_features)
    for step in range(SCHEDULE.steps):
        t = unet.time_embedding(SCHEDULE.time_input(step, 2))
        torch.testing.assert_close(emb[step].expand(2, -1), t, atol=1e-6, rtol=1e-6)
        for block in blocks:
            got = biases[block][step]
            assert got.shape == (1, block.mlp[1].out_features)
            torch.testing.assert_close(
                got.expand(2, -1)[:, :, None, None, None], block.time_bias(t), atol=1e-6, rtol=1e-6
            )


# -- fused last stage ------------------------------------------------------------------------


def _stage(c, frames, h, w, k=(3, 3, 3), batch=1, dtype=torch.float32):
    hidden = torch.randn(batch, c, frames, h, w, device=DEVICE).to(dtype)
    hidden = hidden.to(memory_format=torch.channels_last_3d)
    g = 1 + 0.1 * torch.randn(1, c, 1, 1, 1, device=DEVICE)
    b = 0.1 * torch.randn(1, c, 1, 1, 1, device=DEVICE)
    weight = torch.randn(3, c, *k, device=DEVICE) / (c * k[0] * k[1] * k[2]) ** 0.5
    bias = 0.1 * torch.randn(3, device=DEVICE)
    x_t = 0.8 * torch.randn(batch, 3, frames, h, w, device=DEVICE)
    return hidden, g, b, weight, bias, x_t


def _assert_stage_close(got, ref, tol):
    x_next, frames, past = got
    torch.testing.assert_close(x_next, ref[0], **tol)
    assert x_next.dtype == torch.float32
    torch.testing.assert_close(past.float(), ref[2].float(), **tol)
    if ref[1] is None:
        assert frames is None
    else:
        assert frames.dtype == torch.uint8 and frames.shape == ref[1].shape
        diff = (frames.int() - ref[1].int()).abs()
        assert diff.max().item() <= 1 and (diff == 0).float().mean().item() > 0.97


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("past_frames", [0, 1, 2])
def test_denoise_final_fp32(pad_mode, past_frames):
    hidden, g, b, weight, bias, x_t = _stage(5, 2, 5, 7, batch=2)
    past = torch.randn(2, 5, past_frames, 5, 7, device=DEVICE) if past_frames else None
    kwargs = dict(past=past, history=2, space_padding=(1, 1), pad_mode=pad_mode, uint8=True)
    coef = SCHEDULE.coefficients(2)
    got = denoise_final(hidden, g, b, weight, bias, x_t, coef, **kwargs)
    _assert_stage_close(
        got,
        denoise_final_reference(hidden, g, b, weight, bias, x_t, coef, **kwargs),
        dict(atol=1e-5, rtol=1e-5),
    )


@pytest.mark.parametrize("step", [0, 3])
def test_denoise_final_fp16_cdt_kernel(step):
    # CDT's real (3, 7, 7) kernel; fp16 against the fp32 reference of the same fp16 inputs.
    hidden, g, b, weight, bias, x_t = _stage(6, 1, 3, 9, k=(3, 7, 7), dtype=torch.float16)
    coef = SCHEDULE.coefficients(step)
    got = denoise_final(hidden, g, b, weight, bias, x_t, coef, uint8=True, clamp=True)
    ref = denoise_final_reference(
        hidden.float(), g, b, weight, bias, x_t, coef, uint8=True, clamp=True
    )
    assert got[2].dtype == torch.float16
    _assert_stage_close(got, ref, dict(atol=1e-2, rtol=1e-2))


def test_denoise_final_stream_equals_unet_final_conv_with_cache():
    unet = randomize_(CDT(tiny_config("small")), seed=1).unet  # replicate padding
    norm, conv = unet.final_conv
    c = norm.g.shape[1]
    hidden = torch.randn(1, c, 3, 4, 5, device=DEVICE)
    x_t = torch.randn(1, 3, 3, 4, 5, device=DEVICE)
    coef = SCHEDULE.coefficients(0)
    whole = CF.ddim_update(x_t, conv(norm(hidden)).float(), coef)
    cache, past, pieces = FeatureCache(), None, []
    for start, stop in [(0, 1), (1, 3)]:
        x_next, _, past = denoise_final(
            hidden[:, :, start:stop],
            norm.g,
            norm.b,
            conv.weight,
            conv.bias,
            x_t[:, :, start:stop],
            coef,
            past=past,
            history=conv.history,
            space_padding=conv.space_padding,
            pad_mode=conv.pad_mode,
            eps=norm.eps,
        )
        ref = CF.ddim_update(
            x_t[:, :, start:stop], conv(norm(hidden[:, :, start:stop]), cache).float(), coef
        )
        torch.testing.assert_close(x_next, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(past, cache.get(conv), atol=1e-5, rtol=1e-5)
        pieces.append(x_next)
    torch.testing.assert_close(torch.cat(pieces, dim=2), whole, atol=1e-5, rtol=1e-5)


def test_epilogue_clamp_and_uint8_rounding_are_exact():
    # A zero conv with bias 2 gives x0 = 2 everywhere: clamping x0 is visible in x_next.
    # With (a, b, c, d) = (1, 1, 0, 1), x_next = x_t - x0; clamped (x0 = 1) it sweeps exact
    # uint8 rounding ties (k + 0.5 after scaling: 128 of the 192 values).
    c, n = 2, 64
    hidden = torch.randn(1, c, 1, 4, n // 4, device=DEVICE)
    weight = torch.zeros(3, c, 3, 3, 3, device=DEVICE)
    bias = torch.full((3,), 2.0, device=DEVICE)
    k = torch.arange(3 * n, device=DEVICE, dtype=torch.float32).reshape(1, 3, 1, 4, n // 4)
    x_t = 1.0 + (2 * (k + 0.5) / 255 - 1)  # x_next = x_t - 1 lands on (k + 0.5) steps
    x_t[0, 0, 0, 0, :3] = torch.tensor([-5.0, 5.0, 0.0])
    for clamp in (False, True):
        x_next, frames, _ = denoise_final(
            hidden,
            torch.ones(c),
            torch.zeros(c),
            weight,
            bias,
            x_t,
            (1.0, 1.0, 0.0, 1.0),
            space_padding=(1, 1),
            clamp=clamp,
            uint8=True,
        )
        expected = CF.ddim_update(x_t, torch.full_like(x_t, 2.0), (1.0, 1.0, 0.0, 1.0), clamp=clamp)
        assert torch.equal(x_next, expected)
        assert torch.equal(frames, CF.to_uint8_frames(expected))


@pytest.mark.parametrize("clamp", [False, True])
def test_ddim_update_matches_functional(clamp):
    x_t = torch.randn(2, 3, 2, 5, 7, device=DEVICE).to(memory_format=torch.channels_last_3d)
    x0 = (1.5 * torch.randn(2, 3, 2, 5, 7, device=DEVICE)).half()  # a half-precision model's x0
    for step in (0, 2):
        floats = [float(v) for v in SCHEDULE.coefficients(step)]
        on_device = tuple(v.to(DEVICE) for v in SCHEDULE.coefficients(step))
        ref = CF.ddim_update(x_t, x0, floats, clamp=clamp)
        for coef in (floats, on_device):
            got = ddim_update(x_t, x0, coef, clamp=clamp)
            assert got.dtype == torch.float32
            assert got.is_contiguous(memory_format=torch.channels_last_3d)
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_to_uint8_frames_matches_functional_exactly(dtype):
    x = torch.cat(
        [
            torch.linspace(-1.3, 1.3, 105, device=DEVICE),
            2 * (torch.arange(105, device=DEVICE) + 0.5) / 255 - 1,
        ]
    )  # ties, clamping
    x = x.reshape(1, 3, 2, 5, 7).to(dtype).transpose(3, 4)  # strided input
    assert torch.equal(to_uint8_frames(x), CF.to_uint8_frames(x))
    out = torch.empty(1, 2, 7, 5, 3, dtype=torch.uint8, device=DEVICE)
    assert to_uint8_frames(x, out=out) is out


def test_denoise_final_bad_arguments():
    hidden, g, b, weight, bias, x_t = _stage(3, 1, 3, 3)
    coef = SCHEDULE.coefficients(0)
    with pytest.raises(ValueError, match="x_t"):
        denoise_final(hidden, g, b, weight, bias, x_t[:, :, :, :2], coef, space_padding=(1, 1))
    with pytest.raises(ValueError, match="pad_mode"):
        denoise_final(hidden, g, b, weight, bias, x_t, coef, space_padding=(1, 1), pad_mode="x")
    with pytest.raises(ValueError, match="past"):
        denoise_final(
            hidden,
            g,
            b,
            weight,
            bias,
            x_t,
            coef,
            space_padding=(1, 1),
            past=torch.zeros(1, 3, 3, 3, 3),
        )
    with pytest.raises(ValueError, match="coefficients"):
        denoise_final(hidden, g, b, weight, bias, x_t, coef[:3], space_padding=(1, 1))
    with pytest.raises(ValueError, match="norm_g"):
        denoise_final(hidden, g[:, :2], b, weight, bias, x_t, coef, space_padding=(1, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_denoise_final_at_cdt_width(dtype):
    hidden, g, b, weight, bias, x_t = _stage(64, 3, 67, 45, k=(3, 7, 7), dtype=dtype)
    past = torch.randn(1, 64, 2, 67, 45, device=DEVICE).to(dtype)
    coef = SCHEDULE.coefficients(0)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # exact fp32, both sides
        ref = denoise_final_reference(
            hidden.float(), g, b, weight, bias, x_t, coef, past=past.float(), uint8=True
        )
        got = denoise_final(hidden, g, b, weight, bias, x_t, coef, past=past, uint8=True)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    _assert_stage_close(got, ref, tol)


def test_decode_recipe_with_noise_offsets_and_per_step_past_equals_reference_decode():
    """The engine's recipe (notes/fusedB.md): per chunk, noise drawn at its first video frame, then
    per step the fused last stage with that step's cached frames, equals the reference decode."""
    model = randomize_(CDT(tiny_config("base")), seed=2).eval()
    unet, steps = model.unet, 2
    norm, conv = unet.final_conv
    z = torch.randn(1, model.config.latent_dim, 2, 2, 2)
    noise = initial_noise(model.output_shape(z.shape), 5, gamma=1.0)
    hidden = []  # the final LayerNorm's input, per (chunk, step) in the order the reference runs
    hook = norm.register_forward_pre_hook(lambda module, args: hidden.append(args[0]))
    try:
        expected = list(model.decode_stream(z, steps=steps, noise=noise, chunk_frames=1))
    finally:
        hook.remove()
    schedule = DDIMSchedule.create(model.config.num_timesteps, steps)
    past = [None] * steps
    for index, (start, _stop) in enumerate([(0, 1), (1, 2)]):
        a, b = (0, 1) if start == 0 else (1, 5)  # chunking.video_span
        x = initial_noise((1, 3, b - a, 16, 16), 5, a, gamma=model.config.sample_gamma)
        assert torch.equal(x, model.config.sample_gamma * noise[:, :, a:b])
        for step in reversed(range(steps)):
            x, frames, past[step] = denoise_final(
                hidden.pop(0),
                norm.g,
                norm.b,
                conv.weight,
                conv.bias,
                x,
                schedule.coefficients(step),
                past=past[step],
                history=conv.history,
                space_padding=conv.space_padding,
                pad_mode=conv.pad_mode,
                uint8=step == 0,
                eps=norm.eps,
            )
        torch.testing.assert_close(x, expected[index], atol=1e-5, rtol=1e-5)
        assert (frames.int() - CF.to_uint8_frames(expected[index]).int()).abs().max() <= 1
