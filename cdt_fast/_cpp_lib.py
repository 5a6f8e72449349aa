"""Loads the compiled extension (``cdt_fast._C``, built from ``csrc/``) and reports whether it can
run; its ops, as torch functions, are the ``cpp``/``cuda`` backend :mod:`cdt_fast.cpp_ops`.

Loading follows xformers: a missing, broken or mismatched extension gives ONE warning line naming
the cause and reports itself unavailable (:func:`is_available`, :func:`unavailable_reason`);
importing ``cdt_fast`` never fails because of it.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType
from typing import Optional, Tuple

import torch

from .deprecation import warn_deprecated

__all__ = ["ABI_VERSION", "is_available", "unavailable_reason", "cuda_available", "library"]

# Must equal cdt_fast::kAbiVersion (csrc/include/cdt_fast/ops.h) of the loaded build.
ABI_VERSION = 4


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[Optional[ModuleType], str]:
    """(module, "") or (None, reason); warns once per process with the reason."""
    try:
        from . import _C
    except ImportError as exc:
        reason = (
            f"cdt_fast._C is not built or does not load ({exc}); build it with "
            "`pip install -e .` or `python setup.py build_ext --inplace`"
        )
    else:
        found = getattr(_C, "ABI_VERSION", None)
        if found == ABI_VERSION:
            return _C, ""
        reason = (
            f"cdt_fast._C has ABI version {found}, this cdt_fast needs {ABI_VERSION} "
            "(a stale build: rebuild with `pip install -e .`)"
        )
    warnings.warn(f"cdt_fast: C++/CUDA backend unavailable: {reason}", RuntimeWarning, stacklevel=3)
    return None, reason


def is_available() -> bool:
    return _load()[0] is not None


def unavailable_reason() -> str:
    """Why the extension cannot be used ("" when it can)."""
    return _load()[1]


def cuda_available() -> bool:
    """The extension holds CUDA kernels and torch sees a GPU."""
    lib = _load()[0]
    return lib is not None and bool(lib.WITH_CUDA) and torch.cuda.is_available()


def library() -> ModuleType:
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"cdt_fast C++/CUDA backend unavailable: {reason}")
    return lib


def __getattr__(name: str):
    # The ops' old home: each of cdt_fast.cpp_ops's names still resolves here, with a
    # DeprecationWarning, for one release.
    from . import cpp_ops

    if name in cpp_ops.__all__:
        warn_deprecated(f"{__name__}.{name}", f"cdt_fast.cpp_ops.{name}", stacklevel=3)
        return getattr(cpp_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
