"""CUDA graphs of chunk steps: which calls capture, which replay, and that replays, captures that
run out of memory and captures that fail all give the eager output.

On CPU a stand-in capture (:class:`tests.graph_stand_in.RecordingCapture`) plays the graph: its
capture records the aten ops the step runs, and its replays re-execute only those on the same
tensors, never the Python step; so a value the step took on the host at capture is replayed
stale, as on a GPU, and the engine's replays must still equal its eager runs bit for bit. The
``gpu`` tests run the real thing and compare replays with eager runs bitwise.
"""

from __future__ import annotations

import pytest
import torch

from cdt_fast import CDT, CDTConfig, chunking
from cdt_fast.engine import MemoryModel, accelerate
from cdt_fast.engine import memory as memory_mod
from cdt_fast.engine.graphs import ChunkGraphs, CudaGraphCapture, graph_key
from cdt_fast.engine.plan import UNetPlan
from cdt_fast.engine.sessions import DecodeSession
from cdt_fast.engine.state import StreamState
from cdt_fast.functional import ddim_coefficients
from cdt_fast.reference import DDIMSchedule, randomize_

from .conftest import PRESETS, tiny_config, upstream_cdt
from .conftest import random_latent as _latent
from .conftest import random_video as _video
from .graph_stand_in import RecordingCapture


@pytest.fixture(scope="module")
def reference():
    return {preset: upstream_cdt(preset) for preset in PRESETS}


def _counts(eng, key):
    g = eng._sessions[key].graphs
    return g.captures, g.replays


# -- the key: from the second call of a shape on, replay ---------------------------------------------
def test_second_decode_of_a_clip_shape_replays_one_chunk(reference):
    ref = reference["small"]
    fake = RecordingCapture()
    eng = accelerate(ref, backend="torch", cuda_graphs=fake)
    z = _latent(ref, t=3)  # 9 frames: one chunk, the common case of a generation pipeline
    noise = torch.randn(eng.output_shape(z.shape))
    key = ("decode", 1, 4, 4, 1)
    y1 = eng.decode(z, noise=noise)
    # first call: eager, as the capture object's warm-up (on CUDA: on the capture's stream)
    assert _counts(eng, key) == (0, 0) and fake.warm_ups == 1
    y2 = eng.decode(z, noise=noise)
    assert _counts(eng, key) == (1, 1)  # second call: captured, and computed by the graph
    assert fake.warm_ups == 1
    y3 = eng.decode(z, noise=noise)
    assert _counts(eng, key) == (1, 2)  # third call: replay only
    assert torch.equal(y2, y1) and torch.equal(y3, y1)
    torch.testing.assert_close(y1, ref.decode(z, noise=noise), rtol=0, atol=1e-4)
    # new noise through the same graph: the static inputs are refreshed on every replay
    noise2 = torch.randn_like(noise)
    y4 = eng.decode(z, noise=noise2)
    assert _counts(eng, key) == (1, 3)
    torch.testing.assert_close(y4, ref.decode(z, noise=noise2), rtol=0, atol=1e-4)
    assert eng.backend_report()["graphs"][key] == ("enabled", 1, 3)


def test_execution_record_counts_each_chunk_step_once(reference):
    """Eager, captured and replayed decodes record the same op calls (a replay adds what its
    capture counted, though no Python runs in it), and the graph state of each call."""
    ref = reference["small"]
    eng = accelerate(ref, backend="torch", cuda_graphs=RecordingCapture())
    z = _latent(ref, t=3)
    noise = torch.randn(eng.output_shape(z.shape))
    records = []
    for _ in range(3):
        eng.reset_execution_record()
        eng.decode(z, noise=noise)
        records.append(eng.execution_record())
    ops = records[0]["ops"]
    assert ops["ddim_update"] == {"torch": 1} and ops["causal_conv3d_norm"]["torch"] > 1
    assert records[1]["ops"] == ops and records[2]["ops"] == ops
    warm_up = "warm-up: a chunk step is captured the second time its key is seen"
    assert [r["cuda_graphs"] for r in records] == [
        {"state": "off", "reason": warm_up, "captures": 0, "replays": 0, "eager": 1},
        {"state": "captured", "reason": None, "captures": 1, "replays": 0, "eager": 0},
        {"state": "replayed", "reason": None, "captures": 0, "replays": 1, "eager": 0},
    ]
    off = accelerate(ref, backend="torch", cuda_graphs=False)
    off.decode(z, noise=noise)
    assert off.execution_record()["ops"] == ops
    assert off.execution_record()["cuda_graphs"]["reason"] == "CUDA graphs disabled by the caller"


def test_multi_chunk_decode_replays_every_chunk_from_the_second_call(reference):
    ref = reference["small"]
    eng = accelerate(ref, backend="torch", cuda_graphs=RecordingCapture())
    z = _latent(ref, t=6)
    noise = torch.randn(eng.output_shape(z.shape))
    key = ("decode", 1, 4, 4, 2)
    expected = eng.decode(z, steps=2, noise=noise, chunk_frames=2)  # chunks of 2, 2, 2 latents
    # the steady key (histories full) repeats within the first call: warm-up at chunk 1,
    # capture at chunk 2
    assert _counts(eng, key) == (1, 1)
    y = eng.decode(z, steps=2, noise=noise, chunk_frames=2)
    assert torch.equal(y, expected)
    assert _counts(eng, key) == (2, 4)  # the first chunk's key captured now; all 3 via graphs
    parts = list(eng.decode_stream(z, steps=2, noise=noise, chunk_frames=2))
    assert _counts(eng, key) == (2, 7)
    assert torch.equal(torch.cat(parts, 2), expected)
    torch.testing.assert_close(
        expected, ref.decode(z, steps=2, noise=noise, chunk_frames=2), rtol=0, atol=1e-4
    )


def test_encode_replays_from_the_second_call(reference):
    ref = reference["small"]
    eng = accelerate(ref, backend="torch", cuda_graphs=RecordingCapture())
    x = _video(t=17)
    key = ("encode", 1, 32, 32)
    z1 = eng.encode(x, chunk_frames=8)  # chunks: 1 + 8 + 8 frames
    c1 = _counts(eng, key)
    z2 = eng.encode(x, chunk_frames=8)
    c2 = _counts(eng, key)
    z3 = eng.encode(x, chunk_frames=8)
    c3 = _counts(eng, key)
    assert c2[0] > c1[0] and c3[0] == c2[0]  # nothing new to capture on the third call
    assert c3[1] - c2[1] == 3  # every chunk of the third call replays
    assert torch.equal(z2, z1) and torch.equal(z3, z1)
    torch.testing.assert_close(z1, ref.encode(x, chunk_frames=8), rtol=0, atol=1e-4)


def test_keys_separate_steps_chunk_plans_and_layouts(reference):
    ref = reference["small"]
    fake = RecordingCapture()
    eng = accelerate(ref, backend="torch", cuda_graphs=fake)
    z = _latent(ref, t=4)
    noise = torch.randn(eng.output_shape(z.shape))
    for _ in range(2):
        eng.decode(z, noise=noise, chunk_frames=4)
    assert fake.captured == 1
    for _ in range(2):  # another chunk plan of the same shape: its own keys
        y = eng.decode(z, noise=noise, chunk_frames=2)
    assert fake.captured == 3  # chunk 0 (fresh stream) and chunk 1 (histories full)
    torch.testing.assert_close(y, ref.decode(z, noise=noise), rtol=0, atol=1e-4)
    for _ in range(2):  # other steps: another session
        eng.decode(z, steps=2, noise=noise, chunk_frames=4)
    assert fake.captured == 4 and fake.pools == 2  # one pool per session
    zt = z.transpose(3, 4).contiguous().transpose(3, 4)  # same values, other strides
    y = eng.decode(zt, noise=noise, chunk_frames=4)  # a new key: eager warm-up, not a replay
    assert fake.captured == 4
    torch.testing.assert_close(y, ref.decode(z, noise=noise), rtol=0, atol=1e-4)


def test_graph_key_is_the_same_before_and_after_buffers_exist():
    """A fresh stream's first chunk has one key whether or not its history buffers have been
    allocated yet (else the second call of a shape could never hit the first call's key)."""
    state, args = StreamState(), (torch.zeros(1, 2, 3, 4, 4),)
    empty = graph_key([state], args)
    hist = state.history(object(), 2)
    hist.past(args[0])  # allocates
    assert graph_key([state], args) == empty
    hist.advance(args[0], None, None)
    state.commit()
    assert graph_key([state], args) != empty


def test_replay_restores_the_python_state_a_capture_left():
    """A replay runs no Python: the stream state after a replayed chunk must come from the
    capture's record."""
    fake = RecordingCapture()
    graphs = ChunkGraphs("cpu", capture=fake)
    state = StreamState()
    layer = object()
    buf = torch.zeros(3)

    def step(x):
        hist = state.history(layer, 1)
        hist.past(x)
        hist.next_valid = 1
        state.first_call(layer)
        state.commit()
        buf.add_(x[0, 0, 0, 0, 0])
        return buf * 1

    x = torch.ones(1, 1, 1, 1, 1)
    for _ in range(3):
        state.reset()
        graphs(step, (x,), [state])
        assert state.histories[layer].valid == 1 and state.started == {layer}
        assert state.chunks == 1
    assert (graphs.captures, graphs.replays) == (1, 2)
    assert buf.tolist() == [3.0, 3.0, 3.0]


# -- replays run the recorded tensor work only: a value frozen at capture shows ---------------------
def test_stand_in_replays_the_recorded_tensor_work_without_the_step():
    """An allocation, an ``out=`` op, an in-place update of a tensor from before the capture, views
    and functional ops all replay from the record; the Python step runs at the warm-up and the
    capture only, and each call changes the persistent tensor exactly once."""
    fake = RecordingCapture(host_reads="raise")
    graphs = ChunkGraphs("cpu", capture=fake)
    calls, acc, acc_eager = [], torch.zeros(2, 3), torch.zeros(2, 3)

    def step(x):
        calls.append(1)
        y = torch.empty(2, 3)
        torch.mul(x, 2, out=y)
        acc.add_(y)
        return (acc.t() + x.t()).t()

    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(2, 3, generator=g)
        out = graphs(step, (x,), [])
        acc_eager.add_(x * 2)
        assert torch.equal(out, acc_eager + x)
        assert torch.equal(acc, acc_eager)
    assert len(calls) == 2
    assert (fake.warm_ups, fake.captured, graphs.replays) == (1, 1, 3)


def _ddim_step(read_on_host: bool):
    def step(x_t, x0, coefficients):
        if read_on_host:  # the bug: .item() takes the step's coefficients to the host
            a, b, c, d = (float(v) for v in coefficients)
        else:
            a, b, c, d = coefficients
        return c * x0 + d * ((a * x_t - x0) / b)

    return step


def _assert_replays_equal_eager(step, calls, host_reads: str) -> None:
    graphs = ChunkGraphs("cpu", capture=RecordingCapture(host_reads=host_reads))
    for i, args in enumerate(calls):
        assert torch.equal(graphs(step, args, []), step(*args)), f"call {i} differs from eager"
    assert graphs.replays == len(calls) - 1, f"not replayed: {graphs.report()}"


@pytest.mark.parametrize("host_reads", ["record", "raise"])
def test_stand_in_catches_a_ddim_coefficient_read_on_the_host(host_reads):
    """One graph of a sampler step reused across timesteps, its coefficients an input: the step
    that keeps them on the device replays each timestep's values; the one that reads them with
    .item() replays the capture's (or, reads refused, cannot be captured) and must fail."""
    schedule = DDIMSchedule.create(1000, 4)
    g = torch.Generator().manual_seed(0)
    x_t, x0 = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    calls = [
        (x_t, x0, ddim_coefficients(schedule.coefficients(s), "cpu")) for s in reversed(range(4))
    ]
    _assert_replays_equal_eager(_ddim_step(read_on_host=False), calls, host_reads)
    failure = "call 2 differs" if host_reads == "record" else "not replayed.*capture failed"
    with pytest.raises(AssertionError, match=failure):
        _assert_replays_equal_eager(_ddim_step(read_on_host=True), calls, host_reads)


def _assert_engine_replays_equal_eager(ref, on_noise=lambda noise: None) -> None:
    """Three encode and decode calls of several chunks each (warm-up, capture, replays), new
    inputs every call, through the stand-in with host reads refused: bitwise the eager engine's."""
    graphed = accelerate(ref, backend="torch", cuda_graphs=RecordingCapture(host_reads="raise"))
    eager = accelerate(ref, backend="torch", cuda_graphs=False)
    g = torch.Generator().manual_seed(3)
    for call in range(3):
        x = _video(t=13, seed=call)
        z = eager.encode(x, chunk_frames=4)  # chunks of 1, 4, 4, 4 frames
        assert torch.equal(graphed.encode(x, chunk_frames=4), z), f"encode call {call}"
        noise = torch.randn(eager.output_shape(z.shape), generator=g)
        on_noise(noise)
        y = eager.decode(z, steps=2, noise=noise, chunk_frames=1)  # 4 chunks
        decoded = graphed.decode(z, steps=2, noise=noise, chunk_frames=1)
        assert torch.equal(decoded, y), f"decode call {call} differs from eager"
    for key, (state, captures, replays) in graphed.backend_report()["graphs"].items():
        assert state == "enabled" and replays > captures >= 1, (key, state, captures, replays)


def test_engine_replays_equal_eager_bitwise_over_many_chunks(reference):
    _assert_engine_replays_equal_eager(reference["small"])


def test_stand_in_catches_an_engine_step_that_reads_a_frame_offset(reference, monkeypatch):
    """A broken engine whose decode step slices its noise itself, at the stream position (a
    Python int): right when eager, stale once replayed. The check above must fail for it."""
    ref = reference["small"]
    real_step, whole = DecodeSession.step, {}

    def step_at_frame_offset(self, z, noise):
        k = self.states[0].chunks  # the chunk's position in the stream
        a, b = chunking.video_span(k, k + z.shape[2], ref.config.time_factor)
        return real_step(self, z, whole["noise"][:, :, a:b])

    monkeypatch.setattr(DecodeSession, "step", step_at_frame_offset)
    with pytest.raises(AssertionError, match="decode call 1 differs"):
        _assert_engine_replays_equal_eager(ref, on_noise=lambda noise: whole.update(noise=noise))


# -- failures at capture end in the eager output --------------------------------------------------
def test_out_of_memory_at_capture_falls_back_to_eager_for_that_key(reference, monkeypatch):
    ref = reference["base"]
    eng = accelerate(ref, backend="torch", cuda_graphs=RecordingCapture(fail="oom"))
    z = _latent(ref, t=4)
    noise = torch.randn(eng.output_shape(z.shape))
    expected = ref.decode(z, noise=noise, chunk_frames=2)
    key = ("decode", 1, 4, 4, 1)
    ys = [eng.decode(z, noise=noise, chunk_frames=2) for _ in range(3)]
    for y in ys:
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-4)
        assert torch.equal(y, ys[0])
    graphs = eng._sessions[key].graphs
    assert graphs.enabled and graphs.captures == 0 and graphs.replays == 0
    assert len(graphs.eager) == 2  # both keys tried once and stay eager
    state = eng.backend_report()["graphs"][key][0]
    assert state.startswith("enabled; out of memory at capture"), state


def test_out_of_memory_half_way_through_a_capture_leaves_no_state_behind(reference, monkeypatch):
    """The OOM fires inside the captured step after the context decoder and a U-Net level ran
    (their Python state advanced): the eager rerun must start from the chunk's start."""
    ref = reference["small"]
    fake = RecordingCapture()
    eng = accelerate(ref, backend="torch", cuda_graphs=fake)
    z = _latent(ref, t=3)
    noise = torch.randn(eng.output_shape(z.shape))
    expected = eng.decode(z, noise=noise)
    eager_ops = eng.execution_record()["ops"]
    eng.reset_execution_record()
    original = UNetPlan.__call__
    fired = []

    def faulty(self, *args, **kwargs):
        if fake.capturing:
            fired.append(1)
            raise torch.OutOfMemoryError("simulated CUDA out of memory at capture")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UNetPlan, "__call__", faulty)
    y = eng.decode(z, noise=noise)
    assert fired == [1], "the simulated fault never fired"
    assert torch.equal(y, expected)
    assert eng.execution_record()["ops"] == eager_ops  # the failed capture's calls are not kept
    graphs = eng._sessions[("decode", 1, 4, 4, 1)].graphs
    assert graphs.captures == 0 and len(graphs.eager) == 1


def test_failed_capture_turns_graphs_off_with_identical_output(reference):
    ref = reference["small"]
    eng = accelerate(ref, backend="torch", cuda_graphs=RecordingCapture(fail="error"))
    x = _video(t=9)
    z1, z2, z3 = (eng.encode(x, chunk_frames=4) for _ in range(3))
    assert torch.equal(z1, z2) and torch.equal(z1, z3)
    graphs = eng._sessions[("encode", 1, 32, 32)].graphs
    assert not graphs.enabled and graphs.reason.startswith("capture failed (RuntimeError")
    assert graphs.captures == 0 and not graphs.graphs


def test_opt_out_and_bad_argument(reference):
    ref = reference["small"]
    eng = accelerate(ref, backend="torch", cuda_graphs=False)
    z = _latent(ref, t=3)
    for _ in range(3):
        eng.decode(z)
    graphs = eng._sessions[("decode", 1, 4, 4, 1)].graphs
    assert graphs.reason == "CUDA graphs disabled by the caller" and graphs.captures == 0
    default = accelerate(ref, backend="torch")
    for steps in (1, 2):  # two sessions, one capture object (one side stream per device)
        default.decode(z, steps=steps)
    captures = {id(s.graphs.backend) for s in default._sessions.values()}
    assert len(default._sessions) == 2 and len(captures) == 1
    assert isinstance(default._sessions[("decode", 1, 4, 4, 2)].graphs.backend, CudaGraphCapture)
    with pytest.raises(TypeError, match="cuda_graphs"):
        accelerate(ref, backend="torch", cuda_graphs="yes")

    class NoWarmUp:  # a capture object of the interface before warm-ups ran on its stream
        unavailable = new_pool = capture = RecordingCapture.capture

    with pytest.raises(TypeError, match="warm_up"):
        accelerate(ref, backend="torch", cuda_graphs=NoWarmUp())
    assert CudaGraphCapture().unavailable(torch.device("cpu")) == "no CUDA graphs on cpu"


# -- memory ---------------------------------------------------------------------------------------
def test_memory_model_counts_graph_static_tensors():
    for preset in ("base", "small"):
        m = MemoryModel(CDTConfig.preset(preset))
        for fn in (m.decode_bytes_per_latent_frame, m.encode_bytes_per_frame):
            plain = fn(1, 256, 256, torch.bfloat16)
            with_graphs = fn(1, 256, 256, torch.bfloat16, graphs=True)
            assert plain < with_graphs < 2 * plain


def test_session_keeps_its_first_chunk_size(reference, monkeypatch):
    """Free memory drops once a session's graphs hold their pool; later streams must still pick
    the first stream's chunk size, or their keys would never match."""
    ref = reference["small"]
    fake = RecordingCapture()
    eng = accelerate(ref, backend="torch", cuda_graphs=fake)
    free = {"bytes": 1 << 40}
    monkeypatch.setattr(memory_mod, "free_memory", lambda device: free["bytes"])
    z = _latent(ref, t=4)
    noise = torch.randn(eng.output_shape(z.shape))
    y = eng.decode(z, noise=noise)
    session = eng._sessions[("decode", 1, 4, 4, 1)]
    assert session.chunk == eng.memory.max_latent_frames
    per = eng.memory.decode_bytes_per_latent_frame(1, 32, 32, eng.dtype, graphs=True)
    free["bytes"] = int(2.5 * per / eng.memory.budget_fraction)  # would now give 2
    assert eng.memory.decode_chunk(1, 32, 32, eng.dtype, eng.device, graphs=True) == 2
    for _ in range(2):
        assert torch.equal(eng.decode(z, noise=noise), y)
    assert session.chunk == eng.memory.max_latent_frames
    assert (session.graphs.captures, session.graphs.replays) == (1, 2)


def test_out_of_memory_in_a_stream_drops_idle_sessions_graphs(reference):
    ref = reference["small"]
    eng = accelerate(ref, backend="torch", cuda_graphs=RecordingCapture())
    z = _latent(ref, t=3)
    for _ in range(2):
        eng.decode(z)
    eng.decode(z, steps=2)
    idle = eng._sessions[("decode", 1, 4, 4, 1)]
    assert idle.graphs.graphs
    eng._after_oom(eng._sessions[("decode", 1, 4, 4, 2)])  # that stream ran out of memory
    assert not idle.graphs.graphs and idle.graphs.pool is None


def test_out_of_memory_beside_held_graphs_retries_the_same_chunk_without_them(
    reference, monkeypatch
):
    """An eager chunk (a new key) that runs out of memory while the session's graphs hold their
    pool is retried at the same size once the graphs are dropped: the chunk plan is kept."""
    ref = reference["small"]
    fake = RecordingCapture()
    eng = accelerate(ref, backend="torch", cuda_graphs=fake)
    z = _latent(ref, t=4)
    for _ in range(2):
        eng.decode(z)
    session = eng._sessions[("decode", 1, 4, 4, 1)]
    chunk, captures = session.chunk, session.graphs.captures
    assert session.graphs.graphs and captures == 1
    original = UNetPlan.__call__
    faults = []

    def faulty(self, *args, **kwargs):
        if not faults:
            faults.append(1)
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UNetPlan, "__call__", faulty)
    z3 = _latent(ref, t=3, seed=5)  # a new chunk shape in the same session: eager
    noise = torch.randn(eng.output_shape(z3.shape))
    y = eng.decode(z3, noise=noise)
    assert faults == [1], "the simulated fault never fired"
    assert session.chunk == chunk and not session.graphs.graphs
    monkeypatch.setattr(UNetPlan, "__call__", original)
    torch.testing.assert_close(y, ref.decode(z3, noise=noise), rtol=0, atol=1e-4)


# -- CUDA ------------------------------------------------------------------------------------------
def _cuda_model(preset):
    ref = randomize_(CDT(tiny_config(preset)), seed=0).cuda().eval()
    return ref


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("preset", ["base", "small"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_replay_equals_eager_bitwise(preset, dtype):
    """One engine (so one set of backend choices): its first call of a shape runs eagerly, the
    second captures and replays, the third only replays; all three must agree bit for bit."""
    ref = _cuda_model(preset)
    eng = accelerate(ref, dtype=dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(1, 3, 17, 64, 64, device="cuda", generator=g) * 2 - 1
    z = eng.encode(x)  # eager
    noise = torch.randn(eng.output_shape(z.shape), device="cuda", generator=g)
    y = eng.decode(z, noise=noise)  # eager
    for call in (2, 3):
        assert torch.equal(eng.encode(x), z), f"encode call {call}"
        assert torch.equal(eng.decode(z, noise=noise), y), f"decode call {call}"
    report = eng.backend_report()["graphs"]
    for key, (state, captures, replays) in report.items():
        assert state == "enabled" and captures >= 1 and replays >= 2, (key, report)
    # many chunks, and new inputs through the captured graphs
    noise2 = torch.randn_like(noise)
    ys = [eng.decode(z, noise=noise2, chunk_frames=2) for _ in range(3)]
    assert torch.equal(ys[1], ys[0]) and torch.equal(ys[2], ys[0])
    session = eng._sessions[("decode", 1, 8, 8, ref.sample_steps)]
    assert session.graphs.replays >= 2 + 3
    eager = accelerate(ref, dtype=dtype, cuda_graphs=False)
    torch.testing.assert_close(eager.decode(z, noise=noise2), ys[0], rtol=0, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_out_of_memory_at_capture_gives_eager_output():
    class OomCapture(CudaGraphCapture):
        def capture(self, fn, pool, device):
            raise torch.OutOfMemoryError("simulated CUDA out of memory at capture")

    ref = _cuda_model("small")
    graphed = accelerate(ref, dtype=torch.bfloat16, cuda_graphs=OomCapture())
    eager = accelerate(ref, dtype=torch.bfloat16, cuda_graphs=False)
    z = torch.randn(1, ref.config.latent_dim, 5, 8, 8, device="cuda")
    noise = torch.randn(eager.output_shape(z.shape), device="cuda")
    expected = eager.decode(z, noise=noise)
    for _ in range(3):
        assert torch.equal(graphed.decode(z, noise=noise), expected)
    state = graphed.backend_report()["graphs"][("decode", 1, 8, 8, ref.sample_steps)][0]
    assert "out of memory at capture" in state


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_warm_up_and_capture_run_on_the_capture_stream():
    """A key's first, eager call runs on the side stream its capture then uses (cuBLAS's
    per-stream workspace and that stream's allocator blocks exist before capture), ordered with
    the caller's stream; replays run no Python and compute the new inputs."""
    capture = CudaGraphCapture()
    graphs = ChunkGraphs("cuda", capture=capture)
    side = capture.stream(torch.device("cuda"))
    streams = []
    w = torch.randn(64, 64, device="cuda")

    def step(x):
        streams.append(torch.cuda.current_stream())
        return torch.relu(x @ w)

    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(4):
        x = torch.randn(32, 64, device="cuda", generator=g)
        out = graphs(step, (x,), [])
        torch.testing.assert_close(out, torch.relu(x @ w), rtol=1e-5, atol=1e-5)
    assert streams == [side, side]  # the warm-up and the capture
    assert torch.cuda.current_stream() != side
    assert (graphs.captures, graphs.replays) == (1, 3)
