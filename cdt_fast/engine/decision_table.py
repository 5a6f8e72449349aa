"""``auto``'s decisions as data: :class:`DispatchTable`, arch family -> op -> shape class -> the
backends to try in order, and its JSON form.

The committed table is :data:`cdt_fast.engine.decisions.DECISIONS`; ``backend="tune"`` fills a new
one from measurements, which ``save`` writes and ``accelerate(model, table=path)`` reads back.
"""

from __future__ import annotations

import json
import os
import tempfile
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from ..devices import ARCH_FAMILIES
from .decisions import DECISIONS
from .registry import BACKENDS, OPS

__all__ = ["COMPOSED", "DispatchTable", "as_table"]

# A block op as the table's own choices for its parts, run one after the other.
COMPOSED = "composed"
_FORMAT = 1
_CHOICES = BACKENDS + (COMPOSED,)


class DispatchTable:
    """``auto``'s decisions: arch family -> op -> shape class (or glob, or "*") -> the backends
    to try in order. :meth:`default` is the committed table; ``tune`` fills a new one.

    ``save(path)`` writes JSON (atomically); ``DispatchTable.load(path)`` reads it back. A table
    given to an engine is consulted first; where it has no entry for a call, the committed table
    decides.
    """

    def __init__(self, entries: Optional[Mapping] = None):
        self.entries: Dict[str, Dict[str, Dict[str, Tuple[str, ...]]]] = {}
        for arch, ops in _check_mapping(entries or {}, "entries").items():
            if arch not in ARCH_FAMILIES:
                raise ValueError(f"table arch must be one of {ARCH_FAMILIES}, got {arch!r}")
            for op, classes in _check_mapping(ops, f"entries[{arch!r}]").items():
                for cls, order in _check_mapping(classes, f"entries[{arch!r}][{op!r}]").items():
                    self._set(arch, op, cls, order)

    @classmethod
    def default(cls) -> "DispatchTable":
        return cls(DECISIONS)

    def _set(self, arch: str, op: str, cls: str, order) -> None:
        if arch not in ARCH_FAMILIES:
            raise ValueError(f"table arch must be one of {ARCH_FAMILIES}, got {arch!r}")
        if op != "*" and op not in OPS:
            raise ValueError(f"table names an unknown op {op!r}; ops: {OPS}")
        if not isinstance(cls, str) or not cls:
            raise ValueError(f"table shape class must be a non-empty str, got {cls!r}")
        if isinstance(order, str) or not all(b in _CHOICES for b in order) or not order:
            raise ValueError(
                f"table entry {arch}/{op}/{cls} must be a list of backends from {_CHOICES}, "
                f"got {order!r}"
            )
        self.entries.setdefault(arch, {}).setdefault(op, {})[cls] = tuple(order)

    def record(self, arch: str, op: str, cls: str, backend: str) -> None:
        """Make ``backend`` the decision for exactly this shape class."""
        self._set(arch, op, cls, (backend,))

    def order(self, arch: str, op: str, cls: str) -> Optional[Tuple[str, ...]]:
        """The backends to try for a call of class ``cls``, or None when the table is silent."""
        ops = self.entries.get(arch, {})
        for key in (op, "*"):
            classes = ops.get(key)
            if not classes:
                continue
            if cls in classes:
                return classes[cls]
            for pattern, order in classes.items():
                if pattern != "*" and fnmatchcase(cls, pattern):
                    return order
            if "*" in classes:
                return classes["*"]
        return None

    def named(self, arch: str, op: str) -> Tuple[str, ...]:
        """Every backend any entry for ``op`` on ``arch`` may choose, in first-seen order."""
        ops = self.entries.get(arch, {})
        seen: List[str] = []
        for key in (op, "*"):
            classes = ops.get(key, {})
            for order in classes.values():
                seen += [b for b in order if b not in seen]
            if "*" in classes:  # every class of the op has an answer: the arch's "*" is not read
                break
        return tuple(seen)

    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "entries": {
                arch: {op: {c: list(o) for c, o in classes.items()} for op, classes in ops.items()}
                for arch, ops in self.entries.items()
            },
        }

    def save(self, path: Union[str, os.PathLike], **metadata) -> Path:
        """Write the table as JSON (with ``metadata``, e.g. the device and versions, kept for
        readers and ignored by :meth:`load`), atomically: a reader never sees half a file."""
        path = Path(path)
        payload = dict(self.to_dict(), **({"metadata": metadata} if metadata else {}))
        fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(payload, handle, indent=1, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "DispatchTable":
        with open(path) as handle:
            payload = json.load(handle)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(
                f"{path}: not a cdt_fast dispatch table (format {_FORMAT}): "
                f"got format {payload.get('format') if isinstance(payload, dict) else None!r}"
            )
        return cls(payload.get("entries", {}))

    def __eq__(self, other) -> bool:
        return isinstance(other, DispatchTable) and self.entries == other.entries

    def __repr__(self) -> str:
        n = sum(len(c) for ops in self.entries.values() for c in ops.values())
        return f"DispatchTable({n} entries for {sorted(self.entries)})"


def _check_mapping(value, name: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"table {name} must be a mapping, got {type(value).__name__}")
    return value


def as_table(table) -> Optional[DispatchTable]:
    """``table`` argument -> DispatchTable: None, a DispatchTable, a path to a saved one, or a
    mapping of entries."""
    if table is None or isinstance(table, DispatchTable):
        return table
    if isinstance(table, (str, os.PathLike)):
        return DispatchTable.load(table)
    if isinstance(table, Mapping):
        return DispatchTable(table)
    raise TypeError(
        f"table must be a DispatchTable, a path to a saved one, a mapping or None, "
        f"got {type(table).__name__}"
    )
