"""cdt_fast.backends(): every backend reports availability and a reason, computed on call; a
missing or mismatched extension is one warning and an unavailable backend, never an import error."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings

import pytest
import torch

import cdt_fast
from cdt_fast import _cpp_lib
from cdt_fast.backends import BACKEND_NAMES, BackendStatus, _arch_runs


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
    with pytest.raises(RuntimeError, match=cause):
        _cpp_lib.channel_norm(torch.zeros(1, 2, 1, 1, 1), torch.ones(2), torch.zeros(2))


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
