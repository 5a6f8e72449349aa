"""The engine's backend selection: named backends, ``auto`` and its decision table, ``tune`` and
its measurements, the environment variable, and the Triton backend under the interpreter."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch

from cdt_fast import BackendFallbackWarning, BackendUnavailableError
from cdt_fast import functional as CF
from cdt_fast.availability import backend_status
from cdt_fast.engine import (
    AcceleratedCDT,
    DispatchTable,
    Measurements,
    OpTable,
    accelerate,
)
from cdt_fast.engine.decisions import CUDA_GRAPH_SAFE_OPS, DECISIONS
from cdt_fast.engine.dispatch import OPS, OpChoice, implementations
from cdt_fast.engine.registry import CDT_OPS

from .helpers import UPSTREAM_TOL


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


def test_tune_runs_each_later_call_of_a_class_on_its_winner():
    """A class is measured on its first call; every later call of it runs the winner (here a
    winner given in advance, as measurements shared with another engine would hold it)."""
    if not backend_status("cpp", "cpu"):
        pytest.skip("the C++ extension is not built here")
    m = Measurements()
    x, g, b = torch.randn(1, 64, 2, 3, 3), torch.ones(64), torch.zeros(64)
    m.winner[("cpu", "channel_norm", "fp32/c64")] = "cpp"
    table = OpTable("tune", env={}, measurements=m, ops=("channel_norm",))
    for _ in range(3):
        torch.testing.assert_close(
            table("channel_norm", x, g, b), CF.channel_norm(x, g, b), rtol=1e-4, atol=1e-4
        )
    assert table.record.ops() == {"channel_norm": {"cpp": 3}}
    assert table.decisions.order("cpu", "channel_norm", "fp32/c64") == ("cpp",)


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


def test_auto_sends_float64_calls_to_torch(upstream_model):
    """The extension and the Triton kernels store fp16, bf16 and fp32 only (they raise on float64
    rather than compute it in fp32): auto gives every float64 call to torch (SDPA the attention),
    on every arch and ahead of every other row, so a float64 engine runs where they are built."""
    committed = DispatchTable.default()
    suffixes = ("", "/c64", "/c512", "/cin64/cout64/k3x3x3", "/cin16/cout16/k1x1x1", "/time")
    for arch in DECISIONS:
        for op in OPS:
            want = ("sdpa",) if op == "temporal_attention" else ("torch",)
            for suffix in suffixes:
                assert committed.order(arch, op, "float64" + suffix) == want, (arch, op, suffix)
        assert committed.order(arch, "channel_norm", "fp32/c64")[0] != "torch"
    x = torch.rand(1, 3, 5, 32, 32, dtype=torch.float64) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackendFallbackWarning)
        engine = accelerate(upstream_model, dtype=torch.float64)
    reference = accelerate(upstream_model, backend="torch", dtype=torch.float64)
    with torch.no_grad():
        got = torch.cat(list(engine.encode_params(x)), dim=2)
        want = torch.cat(list(reference.encode_params(x)), dim=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_composed_candidate_only_where_a_part_has_a_kernel(monkeypatch):
    """tune offers "composed" for a block op when one of its parts has a non-torch backend; with
    torch alone there is nothing to compose (and the CPU engine keeps NCDHW)."""
    from cdt_fast import _cpp_lib

    # no C++ extension here (patched on the loader: whether or not it was imported before)
    monkeypatch.setattr(_cpp_lib, "is_available", lambda: False)
    monkeypatch.setattr(_cpp_lib, "unavailable_reason", lambda: "cdt_fast._C is not built")
    interp = {"TRITON_INTERPRET": "1"}
    table = OpTable("tune,causal_conv3d=triton", env=interp)
    names = [c.backend for c in table.candidates["causal_conv3d_norm"]]
    assert names == ["composed", "torch"]  # the interpreter's fused op is never a candidate
    assert "linear_attention_block" not in table.candidates  # its parts are torch here
    with pytest.warns(BackendFallbackWarning, match="cannot use cpp"):
        plain = OpTable("auto", env={}, ops=CDT_OPS)  # the tokenizer engine's table
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
    from cdt_fast.engine.layout import activation_layout

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
