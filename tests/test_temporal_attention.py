"""The temporal_attention op: its spec, the Triton kernel and the attention libraries against the
spec, and the op in the engine's op table (report, record, named backends raising, auto falling
back once, the autograd and axis rules), plus the deprecated names."""

import copy
import sys
import types
import warnings

import pytest
import torch

triton = pytest.importorskip("triton")
from cdt_fast import attention_libraries
from cdt_fast.attention_libraries import flash, sdpa, xformers
from cdt_fast.availability import BackendFallbackWarning, BackendUnavailableError
from cdt_fast.engine.decision_table import DispatchTable
from cdt_fast.engine.dispatch import OPS, OpTable, implementations
from cdt_fast.engine.registry import CDT_OPS, GENERATOR_OPS
from cdt_fast.functional import temporal_attention as spec
from cdt_fast.generation.attention import BACKENDS, AttentionTable, attention, attention_backends
from cdt_fast.kernels import temporal_attention as ta
from cdt_fast.kernels.temporal_attention import temporal_attention

from .bf16_emulation import emulated_temporal_attention
from .helpers import DEVICE, INTERPRETED, assert_bf16_close

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=4e-3, rtol=4e-3)}
OP = "temporal_attention"


def _qkv(s, heads, tq, tk, d, dtype=torch.float32):
    make = lambda t: torch.randn(s, heads, t, d, device=DEVICE).to(dtype)  # noqa: E731
    return make(tq), make(tk), make(tk)


# -- the spec and its backends ------------------------------------------------------------------
def test_spec_is_plain_causal_softmax():
    q, k, v = _qkv(1, 1, 3, 3, 4)
    out = spec(q, k, v, scale=1.0)
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
def test_triton_matches_spec(dtype, causal, shape):
    q, k, v = _qkv(*shape, dtype=dtype)
    out = temporal_attention(q, k, v, causal=causal)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(
        out.float(),
        spec(q.float(), k.float(), v.float(), causal=causal).float(),
        **TOL[dtype],
    )


def test_triton_long_sequences_use_the_flash_loop():
    # Longer than one packed tile: G = 1 and several key blocks, some skipped by causality.
    q, k, v = _qkv(2, 1, 70, 75, 16)
    for causal in (True, False):
        torch.testing.assert_close(
            temporal_attention(q, k, v, causal=causal, scale=0.3),
            spec(q, k, v, causal=causal, scale=0.3),
            **TOL[torch.float32],
        )


def test_triton_reads_strided_views():
    # [S, T, heads, d] storage viewed as [S, heads, T, d], as a model's qkv projection gives it.
    base = torch.randn(6, 5, 2, 3, 16, device=DEVICE)
    q, k, v = (base[:, :, :, i].transpose(1, 2) for i in range(3))
    torch.testing.assert_close(temporal_attention(q, k, v), spec(q, k, v), **TOL[torch.float32])


def test_chunked_causal_attention_with_cached_keys_equals_whole_clip():
    q, k, v = _qkv(4, 2, 6, 6, 8)
    whole = temporal_attention(q, k, v)
    # The second chunk's queries (frames 4, 5) attend to all keys so far (bottom-right aligned).
    tail = temporal_attention(q[:, :, 4:], k, v)
    torch.testing.assert_close(tail, whole[:, :, 4:], **TOL[torch.float32])
    torch.testing.assert_close(
        sdpa.temporal_attention(q[:, :, 4:], k, v), whole[:, :, 4:], **TOL[torch.float32]
    )


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 2, 5, 8), (2, 3, 7, 7, 16)], ids=["cached", "square"])
def test_sdpa_matches_spec(causal, shape):
    q, k, v = _qkv(*shape)
    torch.testing.assert_close(
        sdpa.temporal_attention(q, k, v, causal=causal, scale=0.4),
        spec(q, k, v, causal=causal, scale=0.4),
        **TOL[torch.float32],
    )


def _fake_libraries(monkeypatch):
    """flash_attn / xformers stand-ins over [S, T, heads, d] that record their batch sizes."""
    seen = []

    def attend(q, k, v, causal, scale):
        seen.append(q.shape[0])
        out = spec(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal, scale=scale
        )
        return out.transpose(1, 2)

    fake_flash = types.ModuleType("flash_attn")
    fake_flash.flash_attn_func = lambda q, k, v, dropout_p, softmax_scale, causal: attend(
        q, k, v, causal, softmax_scale
    )
    xops = types.ModuleType("xformers.ops")
    xops.fmha = types.SimpleNamespace(
        attn_bias=types.SimpleNamespace(LowerTriangularFromBottomRightMask=lambda: "causal")
    )
    xops.memory_efficient_attention = lambda q, k, v, attn_bias, scale: attend(
        q, k, v, attn_bias == "causal", scale
    )
    monkeypatch.setitem(sys.modules, "flash_attn", fake_flash)
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", xops)
    monkeypatch.setattr(attention_libraries, "MAX_BATCH", 2)
    return seen


@pytest.mark.parametrize("library", [flash, xformers], ids=["flash", "xformers"])
def test_libraries_get_their_layout_and_batch_limit(monkeypatch, library):
    seen = _fake_libraries(monkeypatch)
    q, k, v = _qkv(5, 2, 3, 4, 8, torch.float16)
    for causal in (True, False):
        torch.testing.assert_close(
            library.temporal_attention(q, k, v, causal=causal, scale=0.5),
            spec(q, k, v, causal=causal, scale=0.5),
            **TOL[torch.float16],
        )
    assert seen == [2, 2, 1, 2, 2, 1]
    if library is flash:
        with pytest.raises(TypeError, match="float16 or bfloat16"):
            flash.temporal_attention(q.float(), k.float(), v.float())


def test_bad_inputs_are_clear():
    q, k, v = _qkv(2, 1, 3, 3, 8)
    for run in (spec, temporal_attention, attention):
        with pytest.raises(ValueError, match="keys"):
            run(q, k[:, :, :2], v[:, :, :2], causal=True)
        with pytest.raises(ValueError, match="k and v"):
            run(q, k, v[..., :4])
        with pytest.raises(ValueError, match="scale"):
            run(q, k, v, scale=float("inf"))


# -- the op in the engine's op table --------------------------------------------------------------
def test_temporal_attention_is_an_op_of_the_table():
    """One op among the others: the registry names its backends, a table serves, reports and
    records it, the generator's attention goes through such a table, and a tokenizer engine's
    table does not carry it."""
    assert OP in OPS and OP in GENERATOR_OPS and OP not in CDT_OPS
    backends = {"torch", "triton", "cuda", "cpp", "sdpa", "flash", "xformers"}
    assert {b for b in backends if OP in implementations(b)} == backends - {"cuda", "cpp"}
    assert implementations("torch")[OP] == "cdt_fast.functional"
    table = OpTable("auto", DEVICE, env={}, ops=GENERATOR_OPS)
    assert set(table.report()) == {OP}
    backend, reason = table.report()[OP]
    assert reason.startswith("auto") and (DEVICE != "cpu" or backend == "sdpa")
    q, k, v = _qkv(3, 2, 4, 5, 8)
    torch.testing.assert_close(table(OP, q, k, v, causal=True), spec(q, k, v), **TOL[torch.float32])
    assert table.record.ops() == {OP: {table.choice(OP, (q, k, v)).backend: 1}}
    generator = AttentionTable("torch")
    generator(q, k, v, causal=True, axis="time")
    generator(q, k, v, causal=True, axis="time")
    (built,) = generator.tables.values()
    assert built.report()[OP][0] == "torch" and built.record.ops() == {OP: {"torch": 2}}
    assert copy.deepcopy(generator).tables == {}  # a copied trainer builds its own table
    assert OP not in OpTable("torch", env={}, ops=CDT_OPS).report()


@pytest.mark.skipif(torch.cuda.is_available(), reason="flash-attn and xformers may run on a GPU")
@pytest.mark.parametrize("name", ["flash", "xformers"])
def test_a_named_attention_backend_that_cannot_run_raises(name):
    q, k, v = _qkv(2, 1, 3, 3, 8)
    with pytest.raises(BackendUnavailableError, match=f"backend '{name}' cannot serve {OP}"):
        attention(q, k, v, backend=name)
    with pytest.raises(BackendUnavailableError) as caught:
        OpTable(name, "cpu", env={}, ops=GENERATOR_OPS)
    assert [(op, backend) for op, backend, _ in caught.value.failures] == [(OP, name)]
    with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
        OpTable("triton", "cpu", env={}, ops=GENERATOR_OPS)


def _cpu_table(**classes) -> DispatchTable:
    return DispatchTable({"cpu": {OP: classes}})


def test_auto_falls_back_once_per_table():
    """A table that wants a backend that cannot run here: one BackendFallbackWarning when the
    generator's op table is built, none on the calls after, the fallback recorded."""
    q, k, v = _qkv(2, 1, 3, 3, 8)
    wants_cuda_only = _cpu_table(**{"*": ("xformers", "sdpa")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = OpTable("auto", "cpu", table=wants_cuda_only, env={}, ops=GENERATOR_OPS)
        for _ in range(3):
            table(OP, q, k, v, causal=True)
    (warning,) = [w for w in caught if issubclass(w.category, BackendFallbackWarning)]
    assert "cannot use xformers for temporal_attention" in str(warning.message)
    assert table.fallbacks[OP][:2] == ("xformers", "sdpa")
    assert table.record.ops() == {OP: {"sdpa": 3}}


@pytest.mark.skipif(
    not INTERPRETED, reason="the Triton kernel on CPU tensors needs the interpreter"
)
def test_auto_keeps_the_forward_only_kernel_to_time_without_autograd():
    """The autograd and axis rules are the decision table's classes: Triton serves the time axis
    without autograd; with autograd, or across a frame, the next choice does; Triton named with
    autograd raises."""
    prefers_triton = _cpu_table(**{"*/time": ("triton", "sdpa"), "*": ("sdpa",)})
    generator = AttentionTable("auto")
    generator.tables[torch.device("cpu")] = OpTable(
        "auto", "cpu", table=prefers_triton, ops=GENERATOR_OPS, env_var=None
    )
    q, k, v = _qkv(2, 2, 3, 3, 8)
    generator(q, k, v, causal=True, axis="time")
    generator(q, k, v, causal=True, axis="space")
    q.requires_grad_(True)
    out = generator(q, k, v, causal=True, axis="time")
    out.sum().backward()
    assert q.grad is not None
    (table,) = generator.tables.values()
    assert table.decided() == {
        (OP, "fp32/time"): "triton",
        (OP, "fp32/space"): "sdpa",
        (OP, "fp32/time/grad"): "sdpa",
    }
    assert table.record.ops() == {OP: {"sdpa": 2, "triton": 1}}
    with pytest.raises(RuntimeError, match="no backward pass"):
        attention(q, k, v, backend="triton", axis="time")


def test_committed_gpu_decisions_keep_the_order_of_backends():
    """On GPUs auto tries flash-attn (fp16/bf16 only), xformers, the Triton kernel (time axis,
    no autograd), SDPA, and float64 goes to SDPA alone (no other backend computes in it); on
    CPU, SDPA."""
    committed = DispatchTable.default()
    for arch in ("sm_80", "sm_90"):
        order = lambda cls, arch=arch: committed.order(arch, OP, cls)  # noqa: E731
        assert order("bf16/time") == order("fp16/time") == ("flash", "xformers", "triton", "sdpa")
        assert order("bf16/time/grad") == order("bf16/space") == ("flash", "xformers", "sdpa")
        assert order("fp32/time") == ("xformers", "triton", "sdpa")
        assert order("fp32/time/grad") == order("fp32/space") == ("xformers", "sdpa")
        assert order("float64/time") == order("float64/space/grad") == ("sdpa",)
    assert committed.order("cpu", OP, "bf16/time") == ("sdpa",)


# -- deprecated names ---------------------------------------------------------------------------
def test_deprecated_names_still_work():
    q, k, v = _qkv(2, 1, 3, 4, 8)
    with pytest.deprecated_call():
        assert ta.temporal_attention_reference is spec
    with pytest.deprecated_call():
        assert ta.temporal_attention_triton is temporal_attention
    with pytest.deprecated_call():
        assert ta.attention_backends("cpu", torch.float32)["sdpa"][0]
    with pytest.deprecated_call():
        assert "reference" in ta.BACKENDS
    with pytest.deprecated_call():
        old = ta.temporal_attention(q, k, v, backend="reference")
    torch.testing.assert_close(old, spec(q, k, v), rtol=0, atol=0)
    with pytest.deprecated_call(), pytest.raises(ValueError, match="backend"):
        ta.temporal_attention(q, k, v, backend="cudnn")
    with pytest.deprecated_call():
        math = attention(q, k, v, causal=True, backend="math")
    torch.testing.assert_close(math, spec(q, k, v), rtol=0, atol=0)
    statuses = attention_backends()
    assert "math" not in statuses and list(statuses) == list(BACKENDS[1:])
    with pytest.deprecated_call():
        assert statuses["math"] is statuses["torch"]
    with pytest.deprecated_call():
        assert statuses.get("math") is statuses["torch"]
    assert statuses.get("cudnn") is None and statuses.get("cudnn", 1) == 1
    with pytest.raises(KeyError):
        statuses["cudnn"]  # noqa: B018
    with pytest.raises(AttributeError):
        ta.no_such_name  # noqa: B018


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("frames", [8, 100])
def test_gpu_triton_parity(dtype, frames):
    q, k, v = _qkv(4099, 2, frames, frames, 64, dtype)
    out = temporal_attention(q, k, v)
    if dtype == torch.bfloat16:
        ref = spec(q.float(), k.float(), v.float())
        assert_bf16_close(out, ref, emulated_temporal_attention(q, k, v))
    else:
        ref = spec(q, k, v)
        torch.testing.assert_close(out.float(), ref.float(), atol=5e-3, rtol=5e-3)


def test_a_generator_called_with_a_backend_name_keeps_its_table():
    """A loop of forward calls naming a backend builds that backend's table once per model (a
    copy of the model builds its own)."""
    from cdt_fast.generation.model import GenConfig, VideoDiT

    model = VideoDiT(GenConfig.preset("tiny", in_channels=4)).eval()
    x, t = torch.randn(1, 4, 2, 4, 4), torch.rand(1)
    with torch.no_grad():
        model(x, t, backend="torch")
        first = model._attention("torch")
        model(x, t, backend="torch")
    assert model._attention("torch") is first and len(first.tables) == 1
    (table,) = first.tables.values()
    assert sum(table.record.ops()[OP].values()) > 2  # both calls went through the kept table
    assert copy.deepcopy(model)._attention("torch").tables == {}
