"""cdt_fast.backends(): every backend reports availability and a reason, computed on call; a
missing or mismatched extension is one warning and an unavailable backend, never an import error;
Triton is available only when its kernel modules import. The engine's op table asks the same
function (cdt_fast.availability.backend_status): a backend named explicitly that cannot serve
raises with that reason, and only auto falls back, with one warning per backend and reason."""

from __future__ import annotations

import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import cdt_fast
from cdt_fast import _cpp_lib, availability
from cdt_fast.availability import (
    BACKEND_NAMES,
    BackendFallbackWarning,
    BackendStatus,
    BackendUnavailableError,
    _arch_runs,
    backend_status,
    triton_interpreted,
    version_problem,
)
from cdt_fast.engine.dispatch import OpTable, implementations

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_backend_reports():
    report = cdt_fast.backends()
    assert tuple(report) == BACKEND_NAMES
    for name, status in report.items():
        assert isinstance(status, BackendStatus) and status.name == name
        assert isinstance(status.available, bool)
        assert isinstance(status.reason, str) and status.reason
    assert report["torch"].available
    assert report["cpp"].available == _cpp_lib.is_available()


def test_cuda_needs_a_device_and_a_cuda_build():
    status = cdt_fast.backends()["cuda"]
    if not torch.cuda.is_available():
        assert not status.available
        assert "CUDA" in status.reason or "not built" in status.reason


def test_triton_is_recomputed_on_call(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    status = cdt_fast.backends()["triton"]
    assert not status.available and "TRITON_INTERPRET=1" in status.reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    status = cdt_fast.backends()["triton"]
    assert status.available and "interpreter" in status.reason


@pytest.mark.parametrize(
    "archs,cap,runs",
    [
        ("80;90", (8, 0), True),
        ("80;90", (8, 6), True),
        ("80;90", (8, 9), True),
        ("80;90", (9, 0), True),
        ("80;90", (12, 0), True),  # PTX of sm_90 JITs forward
        ("80;90", (7, 5), False),
        ("90", (8, 0), False),
        ("86", (8, 0), False),
        ("80,90", (9, 0), True),
    ],
)  # CMake builds separate with commas
def test_arch_compatibility(archs, cap, runs):
    assert _arch_runs(archs, *cap) is runs


@pytest.fixture
def fresh_loader():
    _cpp_lib._load.cache_clear()
    yield
    _cpp_lib._load.cache_clear()


@pytest.mark.parametrize(
    "module,cause", [(None, "not built"), (types.SimpleNamespace(ABI_VERSION=-7), "ABI version -7")]
)
def test_missing_or_mismatched_extension_warns_once(monkeypatch, fresh_loader, module, cause):
    # sys.modules[name] = None makes `from . import _C` raise ImportError, as a missing build does.
    monkeypatch.setitem(sys.modules, "cdt_fast._C", module)
    monkeypatch.delattr(cdt_fast, "_C", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = cdt_fast.backends(), cdt_fast.backends()
    ours = [w for w in caught if "cdt_fast: C++/CUDA backend unavailable" in str(w.message)]
    assert len(ours) == 1 and cause in str(ours[0].message)
    assert "\n" not in str(ours[0].message)
    for report in (first, second):
        assert not report["cpp"].available and cause in report["cpp"].reason
        assert not report["cuda"].available
        assert report["torch"].available
    from cdt_fast.cpp_ops import channel_norm

    with pytest.raises(RuntimeError, match=cause):
        channel_norm(torch.zeros(1, 2, 1, 1, 1), torch.ones(2), torch.zeros(2))


def test_import_never_fails_without_the_extension():
    code = (
        "import sys; sys.modules['cdt_fast._C'] = None\n"
        "import warnings; warnings.simplefilter('error')\n"  # nothing warns at import
        "import cdt_fast\n"
        "warnings.simplefilter('ignore')\n"
        "print(cdt_fast.backends()['cpp'].available)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_backends_is_a_function_not_a_module():
    assert callable(cdt_fast.backends) and cdt_fast.backends is availability.backends
    import importlib.util

    assert importlib.util.find_spec("cdt_fast.backends") is None


def test_per_device_status():
    cpu, cuda = cdt_fast.backends("cpu"), cdt_fast.backends(torch.device("cuda"))
    assert not cpu["cuda"].available and "CUDA tensors only" in cpu["cuda"].reason
    assert not cuda["cpp"].available and "CPU tensors only" in cuda["cpp"].reason
    assert cpu["cpp"].available == _cpp_lib.is_available()
    with pytest.raises(ValueError, match="backend must be one of"):
        backend_status("fast")


def _switch_off_cpp(monkeypatch):
    monkeypatch.setattr(
        availability, "_cpp", lambda device: BackendStatus("cpp", False, "switched off for a test")
    )


def test_a_named_backend_that_cannot_serve_raises_with_the_status_reason(monkeypatch):
    """One source of truth and no silent fallback: a backend named explicitly (argument, per-op
    spec or CDT_FAST_BACKEND) that backends() reports unavailable stops the build with that
    reason, naming each op; the convs the extension lacks by design are no failure."""
    _switch_off_cpp(monkeypatch)
    assert cdt_fast.backends()["cpp"].reason == "switched off for a test"
    with pytest.raises(BackendUnavailableError) as caught:
        OpTable("cpp", env={})
    failures = caught.value.failures
    assert sorted(op for op, _, _ in failures) == sorted(implementations("cpp"))
    assert {(b, why) for _, b, why in failures} == {("cpp", "switched off for a test")}
    message = str(caught.value)
    assert "backend 'cpp' cannot serve causal_conv3d_history, channel_norm" in message
    assert "switched off for a test" in message and "causal_conv3d," not in message
    assert isinstance(caught.value, RuntimeError)
    with pytest.raises(BackendUnavailableError) as caught:
        OpTable("auto,channel_norm=cpp", env={})
    assert caught.value.failures == (("channel_norm", "cpp", "switched off for a test"),)
    with pytest.raises(BackendUnavailableError, match="CDT_FAST_BACKEND='cpp'"):
        OpTable("auto", env={"CDT_FAST_BACKEND": "cpp"})


def test_a_per_op_backend_must_implement_the_op():
    with pytest.raises(BackendUnavailableError, match="does not implement causal_conv3d"):
        OpTable("auto,causal_conv3d=cpp", env={})


def test_auto_falls_back_with_one_warning_per_backend_and_reason(monkeypatch):
    """The CPU table picks cpp for 8 ops: without it, one warning names them all, the table
    records each fallback, the ops run on the next choice; a second build repeats the same
    warning, which Python's registry shows once. tune drops it without a warning."""
    _switch_off_cpp(monkeypatch)
    cpp_ops = set(implementations("cpp"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = OpTable("auto", env={})
    (warning,) = [w for w in caught if issubclass(w.category, BackendFallbackWarning)]
    text = str(warning.message)
    assert "cannot use cpp" in text and "switched off for a test" in text
    assert all(op in text for op in cpp_ops) and "causal_conv3d," not in text
    assert table.fallbacks == {op: ("cpp", "torch", "switched off for a test") for op in cpp_ops}
    assert all(table.table[op].backend == "torch" for op in cpp_ops)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        OpTable("auto", env={})
        OpTable("auto", env={})
    assert sum(issubclass(w.category, BackendFallbackWarning) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        assert not OpTable("tune", env={}).fallbacks


def test_without_the_extension_cpp_raises_and_auto_warns_once(monkeypatch, fresh_loader):
    """A CPU user without cdt_fast._C: backend="cpp" raises saying it is not built; auto runs
    on torch after a single BackendFallbackWarning (beside the loader's own one)."""
    monkeypatch.setitem(sys.modules, "cdt_fast._C", None)
    monkeypatch.delattr(cdt_fast, "_C", raising=False)
    model = cdt_fast.CDT(tiny_config("small")).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BackendUnavailableError, match="cdt_fast._C is not built"):
            cdt_fast.accelerate(model, backend="cpp")
        engine = cdt_fast.accelerate(model)
    ours = [w for w in caught if issubclass(w.category, BackendFallbackWarning)]
    assert len(ours) == 1 and "cdt_fast._C is not built" in str(ours[0].message)
    assert set(engine.ops.fallbacks) == set(implementations("cpp"))
    assert {b for b, _ in engine.ops.report().values()} == {"torch"}


@pytest.fixture
def fresh_triton_probe():
    availability._triton_kernels_problem.cache_clear()
    yield
    availability._triton_kernels_problem.cache_clear()


def test_triton_is_unavailable_when_its_kernels_do_not_import(monkeypatch, fresh_triton_probe):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    env = {"TRITON_INTERPRET": "1"}
    assert backend_status("triton", "cpu", env).available  # the real kernels import
    availability._triton_kernels_problem.cache_clear()
    monkeypatch.setitem(sys.modules, "cdt_fast.kernels.channel_norm", None)
    status = backend_status("triton", "cpu", env)
    assert not status.available
    assert "cdt_fast.kernels.channel_norm does not import (ModuleNotFoundError" in status.reason
    with pytest.raises(BackendUnavailableError, match="cdt_fast.kernels.channel_norm does not"):
        OpTable("triton", env=env)
    availability._triton_kernels_problem.cache_clear()
    monkeypatch.setitem(sys.modules, "cdt_fast.kernels", None)
    status = cdt_fast.backends()["triton"]
    assert not status.available and "cdt_fast.kernels does not import" in status.reason


@pytest.mark.parametrize(
    "value,on",
    [("1", True), ("true", True), ("ON", True), ("yes", True), ("0", False), ("", False)],
)
def test_triton_interpreted_parses_as_triton_does(value, on):
    assert triton_interpreted({"TRITON_INTERPRET": value}) is on
    assert triton_interpreted({}) is False


@pytest.mark.parametrize(
    "triton_v,torch_v,bad",
    [
        ("3.6.0", "2.13.0+cpu", None),
        ("3.5.0", "2.4.0", None),
        ("3.9.1", "2.11.0+cu128", None),
        ("3.10.0", "2.13.0", "triton 3.10.0"),
        ("3.4.0", "2.13.0", "triton 3.4.0"),
        ("3.6.0", "2.3.1", "torch 2.3.1"),
    ],
)
def test_supported_version_ranges(triton_v, torch_v, bad):
    problem = version_problem(triton_v, torch_v)
    if bad is None:
        assert problem is None
    else:
        assert bad in problem and "supported: triton >=3.5,<3.10 with torch >=2.4" in problem


def test_unsupported_triton_is_unavailable_with_the_ranges(monkeypatch):
    monkeypatch.setattr(availability, "_triton_version", lambda: ("3.10.0", ""))
    status = backend_status("triton", "cpu", env={"TRITON_INTERPRET": "1"})
    assert not status.available
    assert "triton 3.10.0 not supported (supported: triton >=3.5,<3.10" in status.reason


def test_triton_interpret_is_read_in_one_place():
    """Every other reader in the package calls availability.triton_interpreted()."""
    readers = []
    for path in sorted((ROOT / "cdt_fast").rglob("*.py")) + sorted(
        (ROOT / "kernels").rglob("*.py")
    ):
        text = path.read_text()
        if re.search(
            r"(environ|getenv|\.get\()[^\n]*TRITON_INTERPRET|knobs\.runtime\.interpret", text
        ):
            readers.append(path.relative_to(ROOT).as_posix())
    assert readers == ["cdt_fast/availability.py"]
