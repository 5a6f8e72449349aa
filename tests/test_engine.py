"""The engine (cdt_fast.accelerate) against the reference: parity, streaming, rebuffering,
out-of-memory fallback, backend selection, accelerating plain state dicts."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch

import cdt_fast
from cdt_fast import CDT, BackendFallbackWarning, BackendUnavailableError
from cdt_fast import functional as CF
from cdt_fast.availability import backend_status
from cdt_fast.engine import (
    AcceleratedCDT,
    DispatchTable,
    Measurements,
    OpTable,
    accelerate,
    infer_config,
)
from cdt_fast.engine.decisions import CUDA_GRAPH_SAFE_OPS, DECISIONS
from cdt_fast.engine.dispatch import OPS, OpChoice, implementations
from cdt_fast.engine.memory import MemoryModel, halve
from cdt_fast.engine.plan import TimeDownsample, UNetPlan
from cdt_fast.reference import randomize_

from .bf16_emulation import emulate
from .conftest import tiny_config, upstream_state_dict
from .helpers import UPSTREAM_TOL, assert_bf16_close, exact_fp32


@pytest.fixture(scope="module")
def engines():
    """Reference and fp32 torch-backend engine per preset (shared, read-only)."""
    out = {}
    for preset in ("base", "small"):
        ref = CDT(tiny_config(preset))
        ref.load_state_dict(upstream_state_dict(preset))
        out[preset] = (ref.eval(), accelerate(ref, backend="torch"))
    return out


def _video(b=1, t=9, h=32, w=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, 3, t, h, w), generator=g) * 2 - 1


def _latent(model, b=1, t=3, h=4, w=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((b, model.config.latent_dim, t, h, w), generator=g)


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
    from cdt_fast.engine.accelerated import channel_alignment

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
    z = _latent(ref)
    y_ref = ref.decode(z, generator=torch.Generator().manual_seed(5))
    y = eng.decode(z, generator=torch.Generator().manual_seed(5), chunk_frames=1)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=UPSTREAM_TOL)


@pytest.mark.parametrize("preset", ["base", "small"])
def test_awkward_shapes_batch2_odd_latent(preset):
    """Batch 2 and 24x40 video (3x5 latent: the U-Net crops odd levels), random weights."""
    ref = randomize_(CDT(tiny_config(preset)), seed=3).eval()
    eng = accelerate(ref, backend="torch")
    x = _video(b=2, t=5, h=24, w=40)
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


# -- streaming -------------------------------------------------------------------------------------
def test_decode_stream_equals_one_shot(engines):
    _, eng = engines["base"]
    z = _latent(eng, t=4)
    one = eng.decode(z, generator=torch.Generator().manual_seed(7), chunk_frames=2)
    parts = list(eng.decode_stream(z, generator=torch.Generator().manual_seed(7), chunk_frames=1))
    assert [p.shape[2] for p in parts] == [1, 4, 4, 4]
    torch.testing.assert_close(torch.cat(parts, dim=2), one, rtol=0, atol=UPSTREAM_TOL)


def test_decode_from_latent_iterator(engines):
    _, eng = engines["base"]
    z = _latent(eng, t=5)
    noise = torch.randn(eng.output_shape(z.shape))
    whole = eng.decode(z, noise=noise, chunk_frames=5)
    pieces = iter([z[:, :, :2], z[:, :, 2:3], z[:, :, 3:]])
    streamed = torch.cat(list(eng.decode_stream(pieces, noise=noise, chunk_frames=2)), dim=2)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=UPSTREAM_TOL)


def test_iterator_without_noise_is_chunk_plan_invariant(engines):
    """Frame-wise noise draws: the same generator seed gives the same video for any split."""
    _, eng = engines["small"]
    z = _latent(eng, t=4)
    a = eng.decode(iter([z]), generator=torch.Generator().manual_seed(3), chunk_frames=4)
    b = eng.decode(
        iter(z.split(1, dim=2)), generator=torch.Generator().manual_seed(3), chunk_frames=3
    )
    assert a.shape == eng.output_shape(z.shape)
    torch.testing.assert_close(a, b, rtol=0, atol=UPSTREAM_TOL)


def test_stream_state_does_not_grow_with_length(engines):
    _, eng = engines["small"]
    z = _latent(eng, t=6)
    sizes = []
    for t in (3, 6):
        for _ in eng.decode_stream(iter(z[:, :, :t].split(1, dim=2)), chunk_frames=1):
            pass
        session = eng._sessions[("decode", 1, 4, 4, 1)]
        sizes.append(sum(s.nbytes() for s in session.states))
    assert sizes[0] == sizes[1] > 0


def test_uint8_frames(engines):
    _, eng = engines["small"]
    z = _latent(eng, t=2)
    noise = torch.randn(eng.output_shape(z.shape))
    frames = torch.cat(list(eng.decode_stream(z, noise=noise, uint8=True)), dim=1)
    assert frames.dtype == torch.uint8 and frames.shape == (1, 5, 32, 32, 3)
    assert torch.equal(frames, CF.to_uint8_frames(eng.decode(z, noise=noise)))


def test_two_streams_interleaved(engines):
    _, eng = engines["small"]
    z1, z2 = _latent(eng, t=3, seed=1), _latent(eng, t=3, seed=2)
    n1, n2 = (torch.randn(eng.output_shape(z1.shape)) for _ in range(2))
    s1 = eng.decode_stream(z1, noise=n1, chunk_frames=1)
    s2 = eng.decode_stream(z2, noise=n2, chunk_frames=1)
    got1, got2 = [], []
    for a, b in zip(s1, s2):
        got1.append(a)
        got2.append(b)
    torch.testing.assert_close(
        torch.cat(got1, 2), eng.decode(z1, noise=n1), rtol=0, atol=UPSTREAM_TOL
    )
    torch.testing.assert_close(
        torch.cat(got2, 2), eng.decode(z2, noise=n2), rtol=0, atol=UPSTREAM_TOL
    )


@pytest.mark.parametrize("pieces", [[9], [2, 3, 4], [1, 4, 4], [5, 1, 1, 1, 1]])
@pytest.mark.parametrize("chunk", [None, 4])
def test_encode_from_frame_iterator(engines, upstream_io, pieces, chunk):
    _, eng = engines["base"]
    x = upstream_io["base.x"]
    z = eng.encode(iter(x.split(pieces, dim=2)), chunk_frames=chunk)
    torch.testing.assert_close(z, eng.encode(x), rtol=0, atol=UPSTREAM_TOL)
    streamed = torch.cat(list(eng.encode_stream(iter(x.split(pieces, dim=2)))), dim=2)
    torch.testing.assert_close(streamed, z, rtol=0, atol=UPSTREAM_TOL)


def test_encode_stream_feeds_decode_stream(engines, upstream_io):
    """Frames in, frames out, chunk by chunk: the pipeline a long video runs through."""
    _, eng = engines["base"]
    x, noise = upstream_io["base.x"], upstream_io["base.s1.noise"]
    latents = eng.encode_stream(iter(x.split([1, 4, 4], dim=2)), chunk_frames=4)
    frames = torch.cat(list(eng.decode_stream(latents, noise=noise, chunk_frames=1)), dim=2)
    torch.testing.assert_close(frames, eng(x, noise=noise), rtol=0, atol=UPSTREAM_TOL)


class _SlicedClip:
    """Like the CLI's PaddedClip: a shape, and ``[:, :, a:b]`` reads front to back only."""

    def __init__(self, x):
        self.x, self.shape, self.next = x, tuple(x.shape), 0

    def __getitem__(self, index):
        start, stop, _ = index[2].indices(self.shape[2])
        assert start == self.next, "read out of order"
        self.next = stop
        return self.x[:, :, start:stop]


def test_encode_chunks_reads_a_sliced_clip_front_to_back(engines, upstream_io):
    _, eng = engines["small"]
    x = upstream_io["small.x"]
    params = torch.cat(list(eng.encode_chunks(_SlicedClip(x), 4)), dim=2)
    torch.testing.assert_close(params, upstream_io["small.posterior"], rtol=0, atol=UPSTREAM_TOL)
    assert eng.encode(_SlicedClip(x)).shape == upstream_io["small.z"].shape
    with pytest.raises(ValueError, match="1\\+4k"):
        eng.encode(_SlicedClip(x[:, :, :8]))


def test_streams_build_no_autograd_graph(engines):
    _, eng = engines["small"]
    with torch.enable_grad():
        chunks = list(eng.decode_stream(iter(_latent(eng).split(1, dim=2))))
        latents = list(eng.encode_stream(iter(_video(t=5).split(1, dim=2))))
    assert not any(t.requires_grad for t in chunks + latents)


def test_encode_iterator_bad_input(engines, upstream_io):
    _, eng = engines["base"]
    x = upstream_io["base.x"]
    with pytest.raises(ValueError, match="1\\+4k"):
        eng.encode(iter([x[:, :, :7]]))
    with pytest.raises(ValueError, match="piece 1"):
        eng.encode(iter([x[:, :, :1], x[:, :2, 1:5]]))
    with pytest.raises(ValueError, match="differs from earlier pieces"):
        eng.encode(iter([x[:, :, :1], x[:, :, 1:5, :16, :16]]))
    with pytest.raises(TypeError, match="iterable"):
        eng.encode(42)
    with pytest.raises(ValueError, match="no frames"):
        eng.encode(iter([]))
    with pytest.raises(ValueError, match="latent_dim"):
        eng.decode(torch.zeros(1, 5, 1, 4, 4))
    with pytest.raises(ValueError, match="steps"):  # checked at the call, not at first next()
        eng.decode_stream(torch.zeros(1, 4, 1, 4, 4), steps=0)
    with pytest.raises(ValueError, match="1, 5, 9"):
        eng.encode_stream(x[:, :, :4])


# -- out of memory ---------------------------------------------------------------------------------
def _oom_when(monkeypatch, plan_cls, bad_frames):
    """Make ``plan_cls`` raise CUDA OOM on inputs with ``bad_frames(n)`` frames, after the layers
    before it already ran and mid-stream (so the state of the failed chunk must not leak)."""
    original = plan_cls.__call__
    faults = []

    def faulty(self, x, *args):
        if bad_frames(x.shape[2]):
            faults.append(x.shape[2])
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return original(self, x, *args)

    monkeypatch.setattr(plan_cls, "__call__", faulty)
    return faults


def test_decode_oom_halves_chunk_with_identical_output(engines, monkeypatch):
    ref, eng = engines["base"]
    z = _latent(eng, t=5)
    noise = torch.randn(eng.output_shape(z.shape))
    expected = ref.decode(z, noise=noise, chunk_frames=1)
    # chunks of 2 latent frames: video chunks 5, 8, 4 frames; the second runs out of memory
    faults = _oom_when(monkeypatch, UNetPlan, lambda n: n == 8)
    y = eng.decode(z, noise=noise, chunk_frames=2)
    assert faults == [8], "the simulated fault never fired"
    torch.testing.assert_close(y, expected, rtol=0, atol=UPSTREAM_TOL)


def test_encode_oom_halves_chunk_with_identical_output(engines, monkeypatch):
    _, eng = engines["small"]
    x = _video(t=17)
    expected = eng.encode(x, chunk_frames=4)
    # the first temporal downsample sees the 8 frames after two encoder levels already ran
    faults = _oom_when(monkeypatch, TimeDownsample, lambda n: n == 8)
    z = eng.encode(x, chunk_frames=8)  # first chunk 1 frame, then 8 -> OOM -> 4 + 4 + 4 + 4
    assert faults == [8]
    assert torch.equal(z, expected)


def test_oom_at_smallest_chunk_raises(engines, upstream_io, monkeypatch):
    _, eng = engines["small"]
    _oom_when(monkeypatch, UNetPlan, lambda n: True)
    with pytest.raises(torch.OutOfMemoryError):
        eng.decode(upstream_io["small.z"], chunk_frames=2)
    monkeypatch.undo()  # the engine still works after the failed stream
    noise = upstream_io["small.s1.noise"]
    torch.testing.assert_close(
        eng.decode(upstream_io["small.z"], noise=noise),
        upstream_io["small.s1.y"],
        rtol=0,
        atol=UPSTREAM_TOL,
    )


def test_memory_model():
    cfg = tiny_config("base")
    mm = MemoryModel(cfg)
    assert mm.decode_chunk(
        1, 256, 256, torch.float32, torch.device("cpu")
    ) == cfg.decode_chunk_frames(32, 32)
    assert mm.encode_chunk(
        1, 256, 256, torch.float32, torch.device("cpu")
    ) == cfg.encode_chunk_frames(256, 256)
    per = MemoryModel(cdt_fast.CDTConfig.base()).decode_bytes_per_latent_frame(
        1, 720, 720, torch.bfloat16
    )
    assert 1e9 < per < 1e10  # CDT-base at 720p: a few GB per latent frame under the model
    assert halve(3) == 1 and halve(1) is None and halve(8, 4) == 4 and halve(4, 4) is None


def test_memory_model_uses_free_device_memory(monkeypatch):
    from cdt_fast.engine import memory

    mm = MemoryModel(cdt_fast.CDTConfig.base())
    cuda = torch.device("cuda")
    per = mm.decode_bytes_per_latent_frame(1, 720, 720, torch.bfloat16)
    monkeypatch.setattr(memory, "free_memory", lambda device: int(5.5 * per / 0.7))
    assert mm.decode_chunk(1, 720, 720, torch.bfloat16, cuda) == 5
    per_frame = mm.encode_bytes_per_frame(1, 720, 720, torch.bfloat16)
    monkeypatch.setattr(memory, "free_memory", lambda device: int(9.5 * per_frame / 0.7))
    assert mm.encode_chunk(1, 720, 720, torch.bfloat16, cuda) == 8  # a multiple of 4
    monkeypatch.setattr(memory, "free_memory", lambda device: 10**15)
    assert mm.decode_chunk(1, 720, 720, torch.bfloat16, cuda) == mm.max_latent_frames
    monkeypatch.setattr(memory, "free_memory", lambda device: 0)
    assert mm.decode_chunk(1, 720, 720, torch.bfloat16, cuda) == 1
    assert mm.encode_chunk(1, 720, 720, torch.bfloat16, cuda) == 4


# -- backends --------------------------------------------------------------------------------------
def test_backend_table_reasons():
    table = OpTable("torch", env={})
    assert set(table.report()) == set(OPS)
    assert all(b == "torch" for b, _ in table.report().values())
    if not torch.cuda.is_available():  # named, and unable to serve here: the build says why
        with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
            OpTable("triton", env={})
        with pytest.raises(BackendUnavailableError, match="CUDA tensors only") as caught:
            OpTable("cuda", env={})
        assert {op for op, _, _ in caught.value.failures} == set(implementations("cuda"))
    auto = OpTable("auto", env={}).report()["channel_norm"]
    assert auto[0] in ("cpp", "torch") and auto[1].startswith("auto")


def test_env_var_fills_in_only_for_auto():
    """An explicit backend wins over CDT_FAST_BACKEND; the variable replaces only "auto"."""
    env = {"CDT_FAST_BACKEND": "torch"}
    table = OpTable("triton", env=dict(env, TRITON_INTERPRET="1"))
    assert table.requested == "triton" and table.source == "argument"
    assert table.report()["channel_norm"][0] == "triton"
    table = OpTable("auto", env=env)
    assert table.requested == "torch" and table.source == "CDT_FAST_BACKEND"
    assert all(b == "torch" for b, _ in table.report().values())
    spec = OpTable("auto,channel_norm=torch", env={"CDT_FAST_BACKEND": "auto,channel_norm=cpp"})
    assert spec.source == "argument" and spec.report()["channel_norm"][0] == "torch"
    for bad in ("fast", "auto,conv=torch", "auto,channel_norm=auto", "auto,channel_norm=tune"):
        with pytest.raises(ValueError, match="backend|op"):
            OpTable(bad, env={})
    with pytest.raises(TypeError):
        OpTable(1, env={})


def test_accelerate_argument_beats_env_var(engines, monkeypatch):
    ref, _ = engines["small"]
    monkeypatch.setenv("CDT_FAST_BACKEND", "auto,channel_norm=cuda")
    eng = accelerate(ref, backend="torch")
    assert eng.ops.source == "argument"
    assert all(b == "torch" and "reference ops" in r for b, r in eng.ops.report().values())
    if not torch.cuda.is_available():  # left at "auto": the variable fills it in, and names cuda
        with pytest.raises(BackendUnavailableError, match="CDT_FAST_BACKEND='auto,channel_norm"):
            accelerate(ref)
    monkeypatch.setenv("CDT_FAST_BACKEND", "auto,channel_norm=torch")
    eng = accelerate(ref)
    assert eng.ops.source == "CDT_FAST_BACKEND"
    assert eng.backend_report()["ops"]["channel_norm"][0] == "torch"
    monkeypatch.setenv("CDT_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        accelerate(ref)
    assert accelerate(ref, backend="torch").ops.source == "argument"


@pytest.fixture
def fake_cpp(monkeypatch):
    """A stand-in ``cdt_fast.cpp_ops`` with every op the extension declares (torch's functions):
    its channel_norm notes its calls, its ddim_update is wrong on purpose."""
    calls = []
    lib = types.ModuleType("cdt_fast.cpp_ops")
    for op in implementations("cpp"):
        setattr(lib, op, getattr(CF, op))

    def channel_norm(*args, **kwargs):
        calls.append("channel_norm")
        return CF.channel_norm(*args, **kwargs)

    def ddim_update(x_t, x0, coefficients, *, clamp=False):  # wrong on purpose
        return CF.ddim_update(x_t, x0, coefficients, clamp=clamp) + 1.0

    lib.channel_norm, lib.ddim_update = channel_norm, ddim_update
    monkeypatch.setitem(sys.modules, "cdt_fast.cpp_ops", lib)
    return calls


def test_named_triton_raises_where_its_modules_fail_and_auto_falls_back(monkeypatch):
    """Each backend declares where each op lives. Named explicitly, a declared module that does
    not import or lacks the function stops the build (naming op, backend and why); ops triton
    does not implement by design run on torch. auto, whose table names triton, falls back to its
    next choice instead, with one warning per reason, and records it."""
    pytest.importorskip("triton")
    interp = {"TRITON_INTERPRET": "1"}
    assert backend_status("triton", "cpu", interp).available  # probed with the real modules
    conv = types.ModuleType("cdt_fast.kernels.causal_conv3d")
    conv.causal_conv3d = CF.causal_conv3d  # no causal_conv3d_norm
    monkeypatch.setitem(sys.modules, "cdt_fast.kernels.causal_conv3d", conv)
    monkeypatch.setitem(sys.modules, "cdt_fast.kernels.channel_norm", None)  # hide its kernel
    with pytest.raises(BackendUnavailableError) as caught:
        OpTable("triton", env=interp)
    failures = {op: (b, why) for op, b, why in caught.value.failures}
    assert set(failures) == {"channel_norm", "causal_conv3d_norm"}
    assert "cdt_fast.kernels.channel_norm is not importable" in failures["channel_norm"][1]
    assert "has no function 'causal_conv3d_norm'" in failures["causal_conv3d_norm"][1]
    assert "backend 'triton' cannot serve channel_norm" in str(caught.value)
    table = OpTable("triton,channel_norm=torch,causal_conv3d_norm=torch", env=interp)
    assert table.report()["causal_conv3d"][0] == "triton"
    assert table.report()["conv_transpose_up2x"] == (
        "torch",
        "the triton backend has no conv_transpose_up2x: torch runs it",
    )
    triton_first = {"cpu": {"*": {"*": ["triton", "composed", "torch"]}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = OpTable("auto", env=interp, table=triton_first)
    ours = sorted(str(w.message) for w in caught if w.category is BackendFallbackWarning)
    assert len(ours) == 2  # one per (backend, reason): the hidden module, the missing function
    assert "causal_conv3d_norm (cdt_fast.kernels.causal_conv3d has no function" in ours[0]
    assert "channel_norm (cdt_fast.kernels.channel_norm is not importable" in ours[1]
    assert auto.fallbacks["channel_norm"][:2] == ("triton", "torch")
    assert auto.fallbacks["causal_conv3d_norm"][:2] == ("triton", "composed")
    assert auto.report()["causal_conv3d"][0] == "triton" and "causal_conv3d" not in auto.fallbacks


# auto on CPU with a table that sends every op to the extension where it has one, except ddim.
CPP_TABLE = {"cpu": {"*": {"*": ["cpp", "composed", "torch"]}, "ddim_update": {"*": ["torch"]}}}


def test_auto_follows_its_table_and_records_fallbacks(engines, upstream_io, fake_cpp):
    table = OpTable("auto", env={}, table=CPP_TABLE)
    report = table.report()
    assert report["channel_norm"][0] == "cpp"
    assert report["ddim_update"][0] == "torch"
    assert (
        report["causal_conv3d"][0] == "torch"
        and "does not implement 'causal_conv3d'" in report["causal_conv3d"][1]
    )
    ref, _ = engines["small"]
    z, noise = upstream_io["small.z"], upstream_io["small.s1.noise"]
    eng = AcceleratedCDT(ref, backend="auto", table=CPP_TABLE, env={})
    torch.testing.assert_close(
        eng.decode(z, noise=noise), upstream_io["small.s1.y"], rtol=0, atol=UPSTREAM_TOL
    )
    assert eng.memory_format == torch.channels_last_3d  # a kernel serves ops: NDHWC
    assert engines["small"][1].memory_format == torch.contiguous_format  # torch on CPU: NCDHW
    decided = eng.ops.decided()
    assert {b for (op, _), b in decided.items() if op == "ddim_update"} == {"torch"}
    assert {b for (op, _), b in decided.items() if op == "channel_norm"} == {"cpp"}
    # The extension has no fused Block op: Blocks run as the table's conv, then cpp's norm, and
    # the record counts those parts under their own backends.
    assert {b for (op, _), b in decided.items() if op == "causal_conv3d_norm"} == {"composed"}
    assert not eng.ops.measurements.timings  # auto never times anything
    ran = eng.execution_record()["ops"]
    assert ran["channel_norm"] == {"cpp": len(fake_cpp)} and ran["ddim_update"] == {"torch": 1}
    fake_cpp.clear()
    eng = AcceleratedCDT(ref, backend="cpp,ddim_update=torch", env={})
    torch.testing.assert_close(
        eng.decode(z, noise=noise), upstream_io["small.s1.y"], rtol=0, atol=UPSTREAM_TOL
    )
    assert fake_cpp, "the cpp backend was never called"
    ran = eng.execution_record()["ops"]
    assert ran["channel_norm"] == {"cpp": len(fake_cpp)} and ran["ddim_update"] == {"torch": 1}
    assert set(ran["causal_conv3d"]) == {"torch"} and "causal_conv3d_norm" not in ran
    wrong = AcceleratedCDT(ref, backend="cpp", env={})  # named explicitly: no vetting
    assert not torch.allclose(wrong.decode(z, noise=noise), upstream_io["small.s1.y"], atol=0.5)


def test_tune_measures_rejects_wrong_backends_and_saves_its_table(
    engines, upstream_io, fake_cpp, tmp_path
):
    ref, _ = engines["small"]
    eng = AcceleratedCDT(ref, backend="tune", env={})
    z, noise = upstream_io["small.z"], upstream_io["small.s1.noise"]
    torch.testing.assert_close(
        eng.decode(z, noise=noise), upstream_io["small.s1.y"], rtol=0, atol=UPSTREAM_TOL
    )
    m = eng.ops.measurements
    ddim_keys = [k for k in m.winner if k[1] == "ddim_update"]
    assert ddim_keys and all(m.winner[k] == "torch" for k in ddim_keys)
    assert all("differs from torch" in m.rejected[k]["cpp"] for k in ddim_keys)
    norm_keys = [k for k in m.timings if k[1] == "channel_norm"]
    assert norm_keys and all(set(m.timings[k]) == {"torch", "cpp"} for k in norm_keys)
    path = eng.dispatch_table.save(tmp_path / "table.json", device="cpu")
    loaded = DispatchTable.load(path)
    assert loaded == eng.dispatch_table
    assert {(op, cls) for _, op, cls in m.winner} == {
        (op, cls) for op, classes in loaded.entries["cpu"].items() for cls in classes
    }
    again = accelerate(ref, table=path)  # auto, deciding by what tune measured
    torch.testing.assert_close(
        again.decode(z, noise=noise), upstream_io["small.s1.y"], rtol=0, atol=UPSTREAM_TOL
    )
    tuned = eng.ops.decided()
    assert all(tuned[key] == backend for key, backend in again.ops.decided().items())
    assert not again.ops.measurements.timings


def test_dispatch_table_format_and_bad_tables(tmp_path):
    table = DispatchTable({"cpu": {"channel_norm": {"fp32/c64": ["cpp"], "*": ["torch"]}}})
    assert table.order("cpu", "channel_norm", "fp32/c64") == ("cpp",)
    assert table.order("cpu", "channel_norm", "bf16/c64") == ("torch",)
    assert table.order("cpu", "ddim_update", "fp32") is None
    assert table.order("sm_90", "channel_norm", "fp32/c64") is None
    committed = DispatchTable.default()
    assert committed.order("cpu", "channel_norm", "fp32/c64") == ("cpp", "composed", "torch")
    assert committed.order("sm_90", "causal_conv3d_norm", "bf16/cin64/cout128/k3x3x3") == (
        "triton",
        "composed",
    )
    assert committed.order("sm_90", "causal_conv3d_norm", "bf16/cin64/cout256/k3x3x3") == (
        "composed",
    )
    path = table.save(tmp_path / "t.json")
    assert DispatchTable.load(path) == table and not list(tmp_path.glob(".t.json*"))
    for bad in (
        {"tpu": {}},
        {"cpu": {"conv": {"*": ["torch"]}}},
        {"cpu": {"channel_norm": {"*": ["fast"]}}},
        {"cpu": {"channel_norm": {"*": "torch"}}},
        {"cpu": {"channel_norm": {"*": []}}},
        {"cpu": ["torch"]},
    ):
        with pytest.raises(ValueError, match="table"):
            DispatchTable(bad)
    (tmp_path / "other.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="dispatch table"):
        DispatchTable.load(tmp_path / "other.json")
    with pytest.raises(TypeError, match="table must be"):
        OpTable("auto", env={}, table=3)
    with pytest.raises(ValueError, match="tune"):
        OpTable("tune", env={}, table=table)


def test_committed_table_ranks_cuda_only_for_capture_safe_deterministic_ops():
    """The GPU rows try the CUDA extension for an op only when its call is audited safe inside a
    CUDA graph and deterministic (decisions.CUDA_GRAPH_SAFE_OPS), never through a "*" row that
    would hand it any op; every op the extension has is audited, and each is still tried first."""
    for arch in ("sm_80", "sm_90"):
        for op, classes in DECISIONS[arch].items():
            for cls, order in classes.items():
                assert "cuda" not in order or op in CUDA_GRAPH_SAFE_OPS, (arch, op, cls)
    assert set(implementations("cuda")) == set(CUDA_GRAPH_SAFE_OPS)
    committed = DispatchTable.default()
    for op in CUDA_GRAPH_SAFE_OPS:
        assert committed.order("sm_90", op, "bf16/c64")[0] == "cuda", op
    assert "cuda" not in committed.order("sm_90", "causal_conv3d", "bf16/cin64/cout64/k3x3x3")


def test_composed_candidate_only_where_a_part_has_a_kernel(monkeypatch):
    """tune offers "composed" for a block op when one of its parts has a non-torch backend; with
    torch alone there is nothing to compose (and the CPU engine keeps NCDHW)."""
    monkeypatch.setitem(sys.modules, "cdt_fast.cpp_ops", None)  # no C++ extension here
    interp = {"TRITON_INTERPRET": "1"}
    table = OpTable("tune,causal_conv3d=triton", env=interp)
    names = [c.backend for c in table.candidates["causal_conv3d_norm"]]
    assert names == ["composed", "torch"]  # the interpreter's fused op is never a candidate
    assert "linear_attention_block" not in table.candidates  # its parts are torch here
    with pytest.warns(BackendFallbackWarning, match="cannot use cpp"):
        plain = OpTable("auto", env={})
    assert not plain.candidates
    assert accelerated_layout(plain) == torch.contiguous_format


def test_named_backend_without_a_block_op_composes_its_parts(fake_cpp, monkeypatch):
    """backend="cpp" where the extension has channel_norm but no fused Block: the Block runs as
    torch's conv then cpp's norm (not all-torch); without the extension's module the build
    raises."""
    report = OpTable("cpp", env={}).report()
    for op in ("causal_conv3d_norm", "linear_attention_block"):
        assert report[op][0] == ("composed" if op == "causal_conv3d_norm" else "cpp"), report[op]
    assert "the cpp backend has no causal_conv3d_norm" in report["causal_conv3d_norm"][1]
    monkeypatch.setitem(sys.modules, "cdt_fast.cpp_ops", None)
    with pytest.raises(BackendUnavailableError, match="cdt_fast.cpp_ops is not importable"):
        OpTable("cpp", env={})


def accelerated_layout(table):
    from cdt_fast.engine.accelerated import activation_layout

    return activation_layout(torch.device("cpu"), table)


def test_measurements_pick_fastest_and_skip_raising():
    def slow(x):
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        return sum(x * 1.0 for _ in range(200)) / 200

    def broken(x):
        raise RuntimeError("kernel not built for this shape")

    m = Measurements(repeats=2)
    cands = [
        OpChoice("ddim_update", "torch", slow, ""),
        OpChoice("ddim_update", "cpp", lambda x: x.clone(), ""),
        OpChoice("ddim_update", "cuda", broken, ""),
    ]
    x = torch.ones(64)
    assert m.pick(("k",), cands, (x,), {}).backend == "cpp"
    assert "RuntimeError" in m.rejected[("k",)]["cuda"]


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
    z = _latent(eng, t=4)
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
    eng.encode(_video(t=5, h=16, w=16), chunk_frames=4)  # two chunks
    ran = eng.execution_record()["ops"]
    assert all(set(counts) == {"torch"} for counts in ran.values()), ran
    assert ran["causal_conv3d_norm"]["torch"] > 0 and ran["time_downsample"] == {"torch": 4}
    assert eng.execution_record()["cuda_graphs"]["eager"] == 2
    eng.reset_execution_record()
    assert eng.execution_record()["ops"] == {}


def test_history_buffers_are_reused_across_chunks(engines):
    _, eng = engines["small"]
    z = _latent(eng, t=4)
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
