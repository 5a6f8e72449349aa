"""The engine streaming: chunked and iterator input and output, rebuffering, bounded state,
interleaved streams, and the out-of-memory fallback that halves chunks."""

from __future__ import annotations

import pytest
import torch

import cdt_fast
from cdt_fast import functional as CF
from cdt_fast.engine.memory import MemoryModel, halve
from cdt_fast.engine.plan import TimeDownsample, UNetPlan

from .conftest import random_latent, random_video, tiny_config
from .helpers import UPSTREAM_TOL


# -- streaming -------------------------------------------------------------------------------------
def test_decode_stream_equals_one_shot(engines):
    _, eng = engines["base"]
    z = random_latent(eng, t=4)
    one = eng.decode(z, generator=torch.Generator().manual_seed(7), chunk_frames=2)
    parts = list(eng.decode_stream(z, generator=torch.Generator().manual_seed(7), chunk_frames=1))
    assert [p.shape[2] for p in parts] == [1, 4, 4, 4]
    torch.testing.assert_close(torch.cat(parts, dim=2), one, rtol=0, atol=UPSTREAM_TOL)


def test_decode_from_latent_iterator(engines):
    _, eng = engines["base"]
    z = random_latent(eng, t=5)
    noise = torch.randn(eng.output_shape(z.shape))
    whole = eng.decode(z, noise=noise, chunk_frames=5)
    pieces = iter([z[:, :, :2], z[:, :, 2:3], z[:, :, 3:]])
    streamed = torch.cat(list(eng.decode_stream(pieces, noise=noise, chunk_frames=2)), dim=2)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=UPSTREAM_TOL)


def test_iterator_without_noise_is_chunk_plan_invariant(engines):
    """Frame-wise noise draws: the same generator seed gives the same video for any split."""
    _, eng = engines["small"]
    z = random_latent(eng, t=4)
    a = eng.decode(iter([z]), generator=torch.Generator().manual_seed(3), chunk_frames=4)
    b = eng.decode(
        iter(z.split(1, dim=2)), generator=torch.Generator().manual_seed(3), chunk_frames=3
    )
    assert a.shape == eng.output_shape(z.shape)
    torch.testing.assert_close(a, b, rtol=0, atol=UPSTREAM_TOL)


def test_stream_state_does_not_grow_with_length(engines):
    _, eng = engines["small"]
    z = random_latent(eng, t=6)
    sizes = []
    for t in (3, 6):
        for _ in eng.decode_stream(iter(z[:, :, :t].split(1, dim=2)), chunk_frames=1):
            pass
        session = eng._sessions[("decode", 1, 4, 4, 1)]
        sizes.append(sum(s.nbytes() for s in session.states))
    assert sizes[0] == sizes[1] > 0


def test_uint8_frames(engines):
    _, eng = engines["small"]
    z = random_latent(eng, t=2)
    noise = torch.randn(eng.output_shape(z.shape))
    frames = torch.cat(list(eng.decode_stream(z, noise=noise, uint8=True)), dim=1)
    assert frames.dtype == torch.uint8 and frames.shape == (1, 5, 32, 32, 3)
    assert torch.equal(frames, CF.to_uint8_frames(eng.decode(z, noise=noise)))


def test_two_streams_interleaved(engines):
    _, eng = engines["small"]
    z1, z2 = random_latent(eng, t=3, seed=1), random_latent(eng, t=3, seed=2)
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
        chunks = list(eng.decode_stream(iter(random_latent(eng).split(1, dim=2))))
        latents = list(eng.encode_stream(iter(random_video(t=5).split(1, dim=2))))
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
    bad = x[:, :, 1:5].clone()
    bad[0, 0, -1, 0, 0] = float("nan")  # past the piece's first frame, which check_video reads
    with pytest.raises(ValueError, match="piece 1.*NaN or infinite"):
        eng.encode(iter([x[:, :, :1], bad]))
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
    z = random_latent(eng, t=5)
    noise = torch.randn(eng.output_shape(z.shape))
    expected = ref.decode(z, noise=noise, chunk_frames=1)
    # chunks of 2 latent frames: video chunks 5, 8, 4 frames; the second runs out of memory
    faults = _oom_when(monkeypatch, UNetPlan, lambda n: n == 8)
    y = eng.decode(z, noise=noise, chunk_frames=2)
    assert faults == [8], "the simulated fault never fired"
    torch.testing.assert_close(y, expected, rtol=0, atol=UPSTREAM_TOL)


def test_encode_oom_halves_chunk_with_identical_output(engines, monkeypatch):
    _, eng = engines["small"]
    x = random_video(t=17)
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
