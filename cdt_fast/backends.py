"""Which compute backends this process can use: ``cdt_fast.backends()``.

Each entry says whether the backend can run here and why (not): the engine dispatches on this, and
users read it when a backend they asked for is missing. Everything is computed on call (the
environment and the visible devices may change); only the pure, expensive probes (importing triton,
loading the extension) are cached.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

__all__ = ["BackendStatus", "BACKEND_NAMES", "backends"]

BACKEND_NAMES = ("torch", "triton", "cpp", "cuda")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why it is unavailable, or what it runs on

    def __bool__(self) -> bool:
        return self.available


@functools.lru_cache(maxsize=None)
def _triton_version() -> Tuple[Optional[str], str]:
    """(version, "") when triton imports, else (None, why)."""
    try:
        import triton
    except ImportError as exc:
        return None, f"triton is not installed ({exc}); pip install triton"
    except Exception as exc:  # a broken install raises anything
        return None, f"triton fails to import: {type(exc).__name__}: {exc}"
    return getattr(triton, "__version__", "?"), ""


def _torch() -> BackendStatus:
    where = "CUDA and CPU" if torch.cuda.is_available() else "CPU"
    return BackendStatus("torch", True, f"torch {torch.__version__} reference ops on {where}")


def _triton() -> BackendStatus:
    version, why = _triton_version()
    if version is None:
        return BackendStatus("triton", False, why)
    if torch.cuda.is_available():
        return BackendStatus("triton", True, f"triton {version} on CUDA")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return BackendStatus(
            "triton",
            True,
            f"triton {version} under the interpreter (TRITON_INTERPRET=1; for tests, slow)",
        )
    return BackendStatus(
        "triton",
        False,
        f"triton {version} needs a CUDA GPU (torch sees none) or TRITON_INTERPRET=1",
    )


def _cpp() -> BackendStatus:
    from . import _cpp_lib

    if not _cpp_lib.is_available():
        return BackendStatus("cpp", False, _cpp_lib.unavailable_reason())
    lib = _cpp_lib.library()
    threads = "OpenMP" if lib.WITH_OPENMP else "single-threaded (built without OpenMP)"
    return BackendStatus("cpp", True, f"cdt_fast._C ABI {lib.ABI_VERSION}, CPU, {threads}")


def _arch_runs(archs: str, major: int, minor: int) -> bool:
    """SASS for sm_XY runs on X.Z >= Y of the same major; PTX of the newest arch JITs upward."""
    built = sorted(int(a) for a in archs.replace(",", ";").split(";") if a.strip().isdigit())
    cap = 10 * major + minor
    return any(a // 10 == major and a <= cap for a in built) or (bool(built) and cap >= built[-1])


def _cuda() -> BackendStatus:
    from . import _cpp_lib

    if not _cpp_lib.is_available():
        return BackendStatus("cuda", False, _cpp_lib.unavailable_reason())
    lib = _cpp_lib.library()
    if not lib.WITH_CUDA:
        return BackendStatus(
            "cuda",
            False,
            "cdt_fast._C was built without CUDA (nvcc was not found "
            "or CDT_FAST_SKIP_CUDA_BUILD=1); rebuild where nvcc is",
        )
    if not torch.cuda.is_available():
        return BackendStatus(
            "cuda", False, "no CUDA device visible to torch (a CPU build of torch, or no GPU)"
        )
    runtime = lib.cuda_runtime_status()
    if runtime:
        return BackendStatus(
            "cuda",
            False,
            f"cdt_fast._C's CUDA runtime (static, from the nvcc "
            f"that built it) cannot use the GPU: {runtime}",
        )
    major, minor = torch.cuda.get_device_capability()
    if not _arch_runs(lib.CUDA_ARCHS, major, minor):
        return BackendStatus(
            "cuda",
            False,
            f"cdt_fast._C holds code for sm_{lib.CUDA_ARCHS}, not "
            f"this GPU's sm_{major}{minor}; rebuild with "
            f"CDT_FAST_CUDA_ARCHS={major}{minor}",
        )
    return BackendStatus(
        "cuda",
        True,
        f"cdt_fast._C CUDA kernels (sm_{lib.CUDA_ARCHS}) on {torch.cuda.get_device_name()}",
    )


def backends() -> Dict[str, BackendStatus]:
    """Per backend name ('torch', 'triton', 'cpp', 'cuda'): ``.available`` and ``.reason``."""
    return {"torch": _torch(), "triton": _triton(), "cpp": _cpp(), "cuda": _cuda()}
