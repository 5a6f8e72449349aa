"""Causal temporal softmax attention: the Triton kernel and every dispatcher path vs the reference."""

import sys
import types

import pytest
import torch

triton = pytest.importorskip("triton")
from cdt_fast.kernels import temporal_attention as ta
from cdt_fast.kernels.temporal_attention import temporal_attention, temporal_attention_reference

from .bf16_emulation import emulated_temporal_attention
from .helpers import DEVICE, assert_bf16_close

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=4e-3, rtol=4e-3)}


def _qkv(s, heads, tq, tk, d, dtype=torch.float32):
    make = lambda t: torch.randn(s, heads, t, d, device=DEVICE).to(dtype)  # noqa: E731
    return make(tq), make(tk), make(tk)


def test_reference_is_plain_causal_softmax():
    q, k, v = _qkv(1, 1, 3, 3, 4)
    out = temporal_attention_reference(q, k, v, scale=1.0)
    # Frame 0 sees only key 0; the last frame sees all keys.
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])
    w = torch.softmax(q[0, 0, 2] @ k[0, 0].T, dim=-1)
    torch.testing.assert_close(out[0, 0, 2], w @ v[0, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "shape",
    [(5, 2, 3, 3, 8), (3, 1, 1, 4, 20), (7, 3, 9, 9, 40)],
    ids=["packed", "one-query-cached-keys", "d-not-pow2"],
)
def test_triton_matches_reference(dtype, causal, shape):
    q, k, v = _qkv(*shape, dtype=dtype)
    out = temporal_attention(q, k, v, causal=causal, backend="triton")
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(
        out.float(),
        temporal_attention_reference(q.float(), k.float(), v.float(), causal=causal).float(),
        **TOL[dtype],
    )


def test_triton_long_sequences_use_the_flash_loop():
    # Longer than one packed tile: G = 1 and several key blocks, some skipped by causality.
    q, k, v = _qkv(2, 1, 70, 75, 16)
    for causal in (True, False):
        torch.testing.assert_close(
            temporal_attention(q, k, v, causal=causal, backend="triton", scale=0.3),
            temporal_attention_reference(q, k, v, causal=causal, scale=0.3),
            **TOL[torch.float32],
        )


def test_triton_reads_strided_views():
    # [S, T, heads, d] storage viewed as [S, heads, T, d], as a model's qkv projection gives it.
    base = torch.randn(6, 5, 2, 3, 16, device=DEVICE)
    q, k, v = (base[:, :, :, i].transpose(1, 2) for i in range(3))
    torch.testing.assert_close(
        temporal_attention(q, k, v, backend="triton"),
        temporal_attention_reference(q, k, v),
        **TOL[torch.float32],
    )


def test_chunked_causal_attention_with_cached_keys_equals_whole_clip():
    q, k, v = _qkv(4, 2, 6, 6, 8)
    whole = temporal_attention(q, k, v, backend="triton")
    # The second chunk's queries (frames 4, 5) attend to all keys so far (bottom-right aligned).
    tail = temporal_attention(q[:, :, 4:], k, v, backend="triton")
    torch.testing.assert_close(tail, whole[:, :, 4:], **TOL[torch.float32])
    torch.testing.assert_close(
        temporal_attention(q[:, :, 4:], k, v, backend="sdpa"), whole[:, :, 4:], **TOL[torch.float32]
    )


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_and_auto_backends(causal):
    q, k, v = _qkv(3, 2, 2, 5, 8)
    ref = temporal_attention_reference(q, k, v, causal=causal)
    torch.testing.assert_close(
        temporal_attention(q, k, v, causal=causal, backend="sdpa"), ref, **TOL[torch.float32]
    )
    torch.testing.assert_close(
        temporal_attention(q, k, v, causal=causal), ref, **TOL[torch.float32]
    )


def _fake_library(monkeypatch):
    """flash_attn / xformers stand-ins over [S, T, heads, d] that record their batch sizes."""
    seen = []

    def attend(q, k, v, causal, scale):
        seen.append(q.shape[0])
        out = temporal_attention_reference(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal, scale=scale
        )
        return out.transpose(1, 2)

    flash = types.ModuleType("flash_attn")
    flash.flash_attn_func = lambda q, k, v, dropout_p, softmax_scale, causal: attend(
        q, k, v, causal, softmax_scale
    )
    xops = types.ModuleType("xformers.ops")
    xops.fmha = types.SimpleNamespace(
        attn_bias=types.SimpleNamespace(LowerTriangularFromBottomRightMask=lambda: "causal")
    )
    xops.memory_efficient_attention = lambda q, k, v, attn_bias, scale: attend(
        q, k, v, attn_bias == "causal", scale
    )
    monkeypatch.setitem(sys.modules, "flash_attn", flash)
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", xops)
    monkeypatch.setattr(ta, "_MAX_LIBRARY_BATCH", 2)
    return seen


@pytest.mark.parametrize("library", ["flash", "xformers"])
def test_library_backends_get_their_layout_and_batch_limit(monkeypatch, library):
    seen = _fake_library(monkeypatch)
    q, k, v = _qkv(5, 2, 3, 4, 8)
    run = {"flash": ta._flash, "xformers": ta._xformers}[library]
    for causal in (True, False):
        torch.testing.assert_close(
            run(q, k, v, causal, 0.5),
            temporal_attention_reference(q, k, v, causal=causal, scale=0.5),
            **TOL[torch.float32],
        )
    assert seen == [2, 2, 1, 2, 2, 1]


def test_backend_errors_are_clear():
    q, k, v = _qkv(2, 1, 3, 3, 8)
    with pytest.raises(ValueError, match="backend"):
        temporal_attention(q, k, v, backend="cudnn")
    with pytest.raises(ValueError, match="keys"):
        temporal_attention(q, k[:, :, :2], v[:, :, :2])
    with pytest.raises(ValueError, match="k and v"):
        temporal_attention(q, k, v[..., :4])
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="flash"):
            temporal_attention(q, k, v, backend="flash")
    assert ta.attention_backends("cpu", torch.float32)["sdpa"][0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("frames", [8, 100])
def test_gpu_triton_parity(dtype, frames):
    q, k, v = _qkv(4099, 2, frames, frames, 64, dtype)
    out = temporal_attention(q, k, v, backend="triton")
    if dtype == torch.bfloat16:
        ref = temporal_attention_reference(q.float(), k.float(), v.float())
        assert_bf16_close(out, ref, emulated_temporal_attention(q, k, v))
    else:
        ref = temporal_attention_reference(q, k, v)
        torch.testing.assert_close(out.float(), ref.float(), atol=5e-3, rtol=5e-3)
