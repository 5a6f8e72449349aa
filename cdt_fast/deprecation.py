"""Names kept for one release after they change: each use warns once per call site with a
:class:`DeprecationWarning` that says what to use instead."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Tuple

__all__ = ["deprecated_names", "warn_deprecated"]


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``stacklevel`` 3: the caller of the
    function that calls this)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def deprecated_names(
    module: str, aliases: Mapping[str, Tuple[str, Callable[[], Any]]]
) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for the old names of ``module``: ``aliases`` maps each to
    (what to use instead, a function returning the value), looked up and warned about on use."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, value = aliases[name]
        warn_deprecated(f"{module}.{name}", new)
        return value()

    return __getattr__
