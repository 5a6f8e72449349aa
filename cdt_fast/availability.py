"""Which compute backends can run, and why (not): the one place that decides it.

:func:`backend_status` answers for one backend, for the whole process or for one device; the
public :func:`cdt_fast.backends` and the engine's op table both call it, so a user reading
``cdt_fast.backends()`` sees the reasons the engine acts on. Everything is computed on call (the
environment and the visible devices may change); only the pure, expensive probes (importing
triton, loading the extension) are cached.

Triton counts as available only when its kernel modules import (``cdt_fast.kernels`` and each
module the engine takes a Triton op from), so that ``backends()`` never offers a backend the
engine then cannot load. An engine asked for a backend by name that cannot serve an op raises
:class:`BackendUnavailableError`; only ``backend="auto"`` falls back, with one
:class:`BackendFallbackWarning` per backend and reason.

The supported Triton and torch versions are stated here once (:data:`TRITON_VERSIONS`,
:data:`TORCH_MIN_FOR_TRITON`): outside them the Triton backend reports itself unavailable and says
which versions it needs. Whether Triton runs its interpreter is read here once too
(:func:`triton_interpreted`); the kernels ask this function instead of the environment.

Besides the compute backends that :func:`backends` reports (:data:`BACKEND_NAMES`), the attention
libraries that serve the ``temporal_attention`` op are backends too (:data:`LIBRARY_BACKENDS`:
torch's SDPA, flash-attn, xformers); :func:`backend_status` answers for them alike. Given a
``dtype``, it also says whether the backend computes in it (flash-attn only in fp16/bf16; the
Triton interpreter has no bf16).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch

__all__ = [
    "BackendFallbackWarning",
    "BackendStatus",
    "BackendUnavailableError",
    "BACKEND_NAMES",
    "LIBRARY_BACKENDS",
    "TRITON_VERSIONS",
    "TORCH_MIN_FOR_TRITON",
    "backend_status",
    "backends",
    "triton_interpreted",
    "version_problem",
]

# The compute backends: what backends() reports, and the engine's candidates for every op.
BACKEND_NAMES = ("torch", "triton", "cpp", "cuda")
# Attention libraries, backends of the temporal_attention op only (cdt_fast.attention_libraries).
LIBRARY_BACKENDS = ("sdpa", "flash", "xformers")
# The Python module each library is imported as.
_LIBRARY_MODULES = {"flash": "flash_attn", "xformers": "xformers.ops"}

# The Triton releases the kernels are tested with (interpreter parity on 3.5, 3.6, 3.8, 3.9):
# 3.2-3.3 cannot import the kernel modules without a GPU driver and 3.4's interpreter rejects the
# autotune path; from 3.10 on nothing has been tested (3.9 already changed tile register use and
# interpreter mask rules). [low, high) as (major, minor).
TRITON_VERSIONS = ((3, 5), (3, 10))
# The oldest torch whose CUDA wheels ship a Triton in that range (torch 2.4 brought Triton 3.0,
# its tensor subclass and memory-format behaviour the launchers rely on).
TORCH_MIN_FOR_TRITON = (2, 4)

# What Triton itself accepts as "on" for TRITON_INTERPRET (its env_bool), so this module and
# Triton never disagree about whether a kernel is interpreted.
_TRUE = ("1", "true", "on", "yes")


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot serve some ops here. ``failures``: (op, backend,
    reason) of each."""

    def __init__(self, message: str, failures: Tuple[Tuple[str, str, str], ...] = ()):
        super().__init__(message)
        self.failures = failures


class BackendFallbackWarning(UserWarning):
    """``backend="auto"``: the decision table names a backend that cannot serve some ops here,
    so they run on the table's next choice."""


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why it is unavailable, or what it runs on

    def __bool__(self) -> bool:
        return self.available


def triton_interpreted(env: Optional[Mapping[str, str]] = None) -> bool:
    """True when ``TRITON_INTERPRET`` (in ``env``, default ``os.environ``) asks Triton to run its
    kernels in the interpreter, on CPU tensors."""
    env = os.environ if env is None else env
    return str(env.get("TRITON_INTERPRET", "")).strip().lower() in _TRUE


def _major_minor(version: str) -> Optional[Tuple[int, int]]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _range_text() -> str:
    (lo, hi), tmin = TRITON_VERSIONS, TORCH_MIN_FOR_TRITON
    return f"supported: triton >={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]} with torch >={tmin[0]}.{tmin[1]}"


def version_problem(triton_version: str, torch_version: str) -> Optional[str]:
    """Why these versions are outside the supported ranges, or None when they are inside."""
    (lo, hi), problems = TRITON_VERSIONS, []
    tv = _major_minor(triton_version)
    if tv is None or not lo <= tv < hi:
        problems.append(f"triton {triton_version}")
    pv = _major_minor(torch_version)
    if pv is None or pv < TORCH_MIN_FOR_TRITON:
        problems.append(f"torch {torch_version}")
    if not problems:
        return None
    return f"{' and '.join(problems)} not supported ({_range_text()})"


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


@functools.lru_cache(maxsize=None)
def _triton_kernels_problem() -> Optional[str]:
    """None when ``cdt_fast.kernels`` and every module the engine takes a Triton op from
    import; else the first that does not, and its error."""
    from .engine.registry import implementations

    for name in ("cdt_fast.kernels", *dict.fromkeys(implementations("triton").values())):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken kernel module raises anything
            text = " ".join(str(exc).split())[:300]
            return f"{name} does not import ({type(exc).__name__}: {text})"
    return None


def _torch(device: Optional[torch.device]) -> BackendStatus:
    where = device.type if device is not None else None
    if where is None:
        where = "CUDA and CPU" if torch.cuda.is_available() else "CPU"
    return BackendStatus("torch", True, f"torch {torch.__version__} reference ops on {where}")


def _triton(
    device: Optional[torch.device], env: Optional[Mapping[str, str]], dtype: Optional[torch.dtype]
) -> BackendStatus:
    version, why = _triton_version()
    if version is None:
        return BackendStatus("triton", False, why)
    problem = version_problem(version, torch.__version__)
    if problem is not None:
        return BackendStatus("triton", False, problem)
    on_cpu = device is not None and device.type == "cpu"
    on_cuda = torch.cuda.is_available() and not on_cpu
    interpreted = triton_interpreted(env) and (device is None or on_cpu)
    if on_cuda or interpreted:
        problem = _triton_kernels_problem()
        if problem is not None:
            return BackendStatus("triton", False, problem)
    if on_cuda:
        return BackendStatus("triton", True, f"triton {version} on CUDA")
    if interpreted and dtype == torch.bfloat16:
        return BackendStatus(
            "triton", False, "the Triton interpreter (CPU) cannot compute in bfloat16"
        )
    if interpreted:
        return BackendStatus(
            "triton",
            True,
            f"triton {version} under the interpreter (TRITON_INTERPRET=1; for tests, slow)",
        )
    if on_cpu:
        return BackendStatus(
            "triton",
            False,
            f"triton {version} needs a CUDA device (or TRITON_INTERPRET=1 on CPU)",
        )
    return BackendStatus(
        "triton",
        False,
        f"triton {version} needs a CUDA device (torch sees none) or TRITON_INTERPRET=1",
    )


def _cpp(device: Optional[torch.device]) -> BackendStatus:
    from . import _cpp_lib

    if device is not None and device.type != "cpu":
        return BackendStatus("cpp", False, "the C++ extension runs on CPU tensors only")
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


def _cuda(device: Optional[torch.device]) -> BackendStatus:
    from . import _cpp_lib

    if device is not None and device.type != "cuda":
        return BackendStatus("cuda", False, "the CUDA extension runs on CUDA tensors only")
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
    major, minor = torch.cuda.get_device_capability(device)
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
        f"cdt_fast._C CUDA kernels (sm_{lib.CUDA_ARCHS}) on {torch.cuda.get_device_name(device)}",
    )


@functools.lru_cache(maxsize=None)
def _import_problem(module: str) -> Optional[str]:
    """None when ``module`` imports; else why not. Cached: a failed import searches the file
    system every time."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        return f"{module} is not installed ({exc})"
    except Exception as exc:  # noqa: BLE001 - e.g. an extension built against another torch
        text = " ".join(str(exc).split())[:300]
        return f"{module} is installed but does not import ({type(exc).__name__}: {text})"
    return None


def _sdpa(device: Optional[torch.device]) -> BackendStatus:
    where = device.type if device is not None else "every device"
    return BackendStatus(
        "sdpa", True, f"torch {torch.__version__} scaled_dot_product_attention on {where}"
    )


def _library(
    name: str, device: Optional[torch.device], dtype: Optional[torch.dtype]
) -> BackendStatus:
    """flash-attn or xformers: installed, importable, and (on CUDA tensors only) asked for a
    dtype it computes in."""
    problem = _import_problem(_LIBRARY_MODULES[name])
    if problem is not None:
        return BackendStatus(name, False, problem)
    if device is not None and device.type != "cuda":
        return BackendStatus(name, False, f"{name} runs on CUDA tensors only")
    if device is None and not torch.cuda.is_available():
        return BackendStatus(name, False, f"{name} needs a CUDA device (torch sees none)")
    if name == "flash":
        from .attention_libraries.flash import COMPUTE_DTYPES

        if dtype is not None and dtype not in COMPUTE_DTYPES:
            return BackendStatus(name, False, f"flash-attn computes in fp16/bf16, not {dtype}")
    return BackendStatus(name, True, f"{_LIBRARY_MODULES[name]} on CUDA")


def backend_status(
    name: str,
    device=None,
    env: Optional[Mapping[str, str]] = None,
    dtype: Optional[torch.dtype] = None,
) -> BackendStatus:
    """Whether backend ``name`` (:data:`BACKEND_NAMES` or :data:`LIBRARY_BACKENDS`) can run, and
    why (not).

    ``device``: None asks about this process (any device it sees); a device asks whether the
    backend runs on tensors there. ``env``: where ``TRITON_INTERPRET`` is read (default
    ``os.environ``). ``dtype``: None for any dtype; a dtype asks whether the backend computes in
    it.
    """
    if not isinstance(name, str) or name not in BACKEND_NAMES + LIBRARY_BACKENDS:
        raise ValueError(f"backend must be one of {BACKEND_NAMES + LIBRARY_BACKENDS}, got {name!r}")
    device = torch.device(device) if device is not None else None
    if name == "torch":
        return _torch(device)
    if name == "triton":
        return _triton(device, env, dtype)
    if name == "cpp":
        return _cpp(device)
    if name == "cuda":
        return _cuda(device)
    if name == "sdpa":
        return _sdpa(device)
    return _library(name, device, dtype)


def backends(device=None) -> Dict[str, BackendStatus]:
    """Per compute backend name ('torch', 'triton', 'cpp', 'cuda'): ``.available`` and
    ``.reason``; with ``device``, whether it runs on tensors on that device. (The attention
    libraries' status: ``backend_status(name, device, dtype=...)``, or
    ``cdt_fast.generation.attention_backends``.)"""
    return {name: backend_status(name, device) for name in BACKEND_NAMES}
