"""Which function runs each op: a table from op name to (backend, function, reason).

Every backend implements the signatures of :mod:`cdt_fast.functional` under the same names; which
ops a backend implements, and in which module, is declared here (:func:`implementations`).
Modules are imported lazily, when a table is built. Calls are never wrapped in try/except: the
table is decided before the first call, and a backend's error at call time propagates.

``backend`` is "auto" (the default), a backend name, "tune", or a spec such as
"auto,causal_conv3d=torch".

- A named backend serves every op it implements, or the table is not built: when the backend is
  unavailable (per :func:`cdt_fast.availability.backend_status`), its module does not import or
  lacks the function, the build raises :class:`~cdt_fast.availability.BackendUnavailableError`
  naming each op, the backend and why. Ops the backend does not implement by design (the C++
  extension has no conv) run on torch, a block op as its parts (``"composed"``); the execution
  record shows it. An op named per op (``"auto,causal_conv3d=cpp"``) must be implemented by that
  backend. A named backend is not vetted: asking for it means wanting its errors.
- ``auto`` decides from availability and a committed decision table (:class:`DispatchTable`,
  default :data:`cdt_fast.engine.decisions.DECISIONS`), keyed by arch family, op and shape class:
  the same inputs, device, versions and table give the same choices, hence the same output, in
  every process. Nothing is timed or vetted. Only ``auto`` falls back: where its table names a
  backend that cannot serve an op here, the op takes the table's next choice, the table records
  it (``fallbacks``) and the build issues one
  :class:`~cdt_fast.availability.BackendFallbackWarning` per (backend, reason).
- ``tune`` measures instead: on the first call of each (op, shape class) it runs every available
  backend, drops those that raise or disagree with torch, times the rest and keeps the fastest.
  Its winners form a :class:`DispatchTable` (``engine.dispatch_table``) that can be saved and
  given back to ``auto`` (``accelerate(model, table=path)``).

For the block ops (``causal_conv3d_norm``, ``linear_attention_block``) there is one more choice,
``"composed"``: the table's own choices for the block's parts, run one after the other.

Every call the table serves is counted under the backend that served it
(:class:`~cdt_fast.engine.record.ExecutionRecord`, ``OpTable.record``).

``CDT_FAST_BACKEND`` (e.g. ``torch`` or ``auto,causal_conv3d=triton``) fills in the backend only
when the caller left it at ``"auto"``: an argument the caller wrote wins.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..availability import BackendFallbackWarning, BackendUnavailableError
from ..availability import backend_status as _availability
from .decisions import ARCH_FAMILIES, DECISIONS, arch_family, shape_class
from .record import ExecutionRecord

__all__ = [
    "OPS",
    "BACKENDS",
    "ENV_VAR",
    "COMPOSED",
    "OpChoice",
    "OpTable",
    "DispatchTable",
    "Measurements",
    "implementations",
    "resolve",
    "parse_backend_spec",
]

OPS = (
    "causal_conv3d",
    "causal_conv3d_history",
    "causal_conv3d_norm",
    "channel_norm",
    "linear_attention",
    "linear_attention_block",
    "time_downsample",
    "time_upsample",
    "conv_transpose_up2x",
    "ddim_update",
    "to_uint8_frames",
)
BACKENDS = ("torch", "triton", "cuda", "cpp")
ENV_VAR = "CDT_FAST_BACKEND"
# A block op as the table's own choices for its parts, run one after the other.
COMPOSED = "composed"
TUNE = "tune"

_FUNCTIONAL = "cdt_fast.functional"
_CPP_MODULE = "cdt_fast.cpp_ops"
# Which ops each backend implements, and where. Triton: one module per op family.
_TRITON_MODULES = MappingProxyType(
    {
        "causal_conv3d": "cdt_fast.kernels.causal_conv3d",
        "causal_conv3d_norm": "cdt_fast.kernels.causal_conv3d",
        "channel_norm": "cdt_fast.kernels.channel_norm",
        "linear_attention": "cdt_fast.kernels.linear_attention",
        "linear_attention_block": "cdt_fast.kernels.linear_attention",
        "time_downsample": "cdt_fast.kernels.time_resample",
        "time_upsample": "cdt_fast.kernels.time_resample",
        "ddim_update": "cdt_fast.kernels.denoise",
        "to_uint8_frames": "cdt_fast.kernels.denoise",
    }
)
# The C++ extension (CPU) and its CUDA build share one module; it has no conv.
_CPP_OPS = (
    "causal_conv3d_history",
    "channel_norm",
    "linear_attention",
    "linear_attention_block",
    "time_downsample",
    "time_upsample",
    "ddim_update",
    "to_uint8_frames",
)
_IMPLEMENTATIONS = MappingProxyType(
    {
        "torch": MappingProxyType({op: _FUNCTIONAL for op in OPS}),
        "triton": _TRITON_MODULES,
        "cpp": MappingProxyType({op: _CPP_MODULE for op in _CPP_OPS}),
        "cuda": MappingProxyType({op: _CPP_MODULE for op in _CPP_OPS}),
    }
)


def implementations(backend: str) -> Mapping[str, str]:
    """op -> module that implements it, for ``backend`` (the op contract: same name, same
    parameters as :mod:`cdt_fast.functional`)."""
    if backend not in _IMPLEMENTATIONS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _IMPLEMENTATIONS[backend]


def _conv_then_norm(
    table: "OpTable",
    x,
    weight,
    bias,
    g,
    b,
    eps=1e-5,
    *,
    relu=False,
    time_bias=None,
    residual=None,
    **conv,
):
    y = table("causal_conv3d", x, weight, bias, **conv)
    return table("channel_norm", y, g, b, eps, relu=relu, time_bias=time_bias, residual=residual)


def _norm_then_attention(
    table: "OpTable", x, g, b, w_qkv, w_out, b_out, *, heads=1, scale=None, eps=1e-5
):
    normed = table("channel_norm", x, g, b, eps)
    return table("linear_attention", normed, w_qkv, w_out, b_out, heads=heads, scale=scale) + x


# Block ops (defined in ``functional`` as compositions of other ops) -> (their parts, the same
# composition through a table).
_COMPOSITES = MappingProxyType(
    {
        "causal_conv3d_norm": (("causal_conv3d", "channel_norm"), _conv_then_norm),
        "linear_attention_block": (("channel_norm", "linear_attention"), _norm_then_attention),
    }
)


def resolve(
    backend: str,
    op: str,
    device: torch.device,
    env: Optional[Mapping[str, str]] = None,
    memo: Optional[Dict[str, tuple]] = None,
) -> Tuple[Optional[Callable], str]:
    """The function implementing ``op`` in ``backend`` on ``device``, or None and the reason.
    ``memo`` (a dict owned by the caller) keeps statuses and imports for the ops that follow."""
    memo = {} if memo is None else memo
    if backend not in memo:
        status = _availability(backend, device, env)
        memo[backend] = (status.available, status.reason)
    ok, reason = memo[backend]
    if not ok:
        return None, reason
    name = implementations(backend).get(op)
    if name is None:
        return None, f"the {backend} backend does not implement {op!r}"
    if name not in memo:
        try:
            memo[name] = (importlib.import_module(name), None)
        except Exception as err:  # noqa: BLE001 - a backend not built is a fallback, not an error
            memo[name] = (None, f"{name} is not importable ({type(err).__name__}: {err})")
    module, error = memo[name]
    fn = getattr(module, op, None) if module is not None else None
    if callable(fn):
        return fn, reason
    return None, error or f"{name} has no function {op!r}"


def parse_backend_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """``"auto"`` / ``"triton"`` / ``"auto,causal_conv3d=torch"`` -> (default, per-op overrides)."""
    default, per_op = "auto", {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if "=" in part:
            op, backend = (s.strip() for s in part.split("=", 1))
            if op not in OPS:
                raise ValueError(f"{ENV_VAR}/backend names an unknown op {op!r}; ops: {OPS}")
            per_op[op] = _check_backend_name(backend, allow_auto=False)
        else:
            default = _check_backend_name(part, allow_auto=True)
    return default, per_op


def _check_backend_name(name: str, allow_auto: bool) -> str:
    allowed = BACKENDS + (("auto", TUNE) if allow_auto else ())
    if name not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {name!r}")
    return name


def _tune_order(device: torch.device) -> Tuple[str, ...]:
    """The backends ``tune`` times, compiled code first. Triton under the CPU interpreter is far
    slower than torch, so it is never a candidate there."""
    if device.type == "cuda":
        return ("cuda", "triton", "torch")
    return ("cpp", "torch")


# -- the decision table -----------------------------------------------------------------------

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
            for order in ops.get(key, {}).values():
                seen += [b for b in order if b not in seen]
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


# -- choices and measurements -----------------------------------------------------------------


@dataclass(frozen=True)
class OpChoice:
    op: str
    backend: str
    fn: Callable
    reason: str


class Measurements:
    """``tune``'s record: timings of each candidate per (arch, op, shape class), the rejected
    candidates (raised, or disagreed with torch) and the winner. Owned by an engine (or shared
    between engines on purpose); nothing global."""

    def __init__(self, repeats: int = 3):
        self.repeats = repeats
        self.timings: Dict[tuple, Dict[str, float]] = {}
        self.winner: Dict[tuple, str] = {}
        self.rejected: Dict[tuple, Dict[str, str]] = {}

    def pick(self, key: tuple, candidates: List[OpChoice], args, kwargs) -> OpChoice:
        """The fastest of the candidates that agree with torch on this call (measured once per
        ``key``)."""
        if key not in self.winner:
            self._select(key, candidates, args, kwargs)
        name = self.winner[key]
        return next(c for c in candidates if c.backend == name)

    def _select(self, key, candidates: List[OpChoice], args, kwargs) -> None:
        torch_choice = next(c for c in candidates if c.backend == "torch")
        expected = torch_choice.fn(*args, **kwargs)
        times, rejected = {}, {}
        for choice in candidates:
            if choice.backend != "torch":
                try:  # vetting a candidate once per shape class, not guarding calls
                    out = choice.fn(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - any failure disqualifies it
                    rejected[choice.backend] = f"{type(err).__name__}: {err}"
                    continue
                if not _close(out, expected):
                    rejected[choice.backend] = "result differs from torch beyond tolerance"
                    continue
            times[choice.backend] = self._time(choice.fn, args, kwargs)
        self.timings[key], self.rejected[key] = times, rejected
        self.winner[key] = min(times, key=times.get)

    def _time(self, fn, args, kwargs) -> float:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        sync = (
            torch.cuda.synchronize
            if device is not None and device.type == "cuda"
            else (lambda: None)
        )
        fn(*args, **kwargs)
        sync()
        start = time.perf_counter()
        for _ in range(self.repeats):
            fn(*args, **kwargs)
        sync()
        return (time.perf_counter() - start) / self.repeats


def _close(out, expected) -> bool:
    if out.shape != expected.shape or out.dtype != expected.dtype:
        return False
    tol = 1e-3 if expected.dtype == torch.float32 else 5e-2
    return bool(torch.allclose(out.float(), expected.float(), rtol=tol, atol=tol))


# -- the engine's table -----------------------------------------------------------------------


class OpTable:
    """The dispatch table of one engine: op -> :class:`OpChoice`, plus the other choices ``auto``
    or ``tune`` may make per shape class (``candidates``).

    ``backend``: "auto", "tune", a backend name, or a spec like "auto,causal_conv3d=torch"; when
    it is "auto", ``CDT_FAST_BACKEND`` in ``env`` (default ``os.environ``) may replace it.
    ``table``: auto's decisions (a :class:`DispatchTable`, a path to a saved one, or None for
    the committed table). ``measurements``: where ``tune`` records its timings.

    Raises :class:`~cdt_fast.availability.BackendUnavailableError` when a backend named in
    ``backend`` cannot serve an op it implements (or an op named for it per op). ``fallbacks``:
    op -> (backend auto's table wanted, backend the op's default class runs on, why) for each op
    auto could not give to a backend its table names. ``record``: the calls served, per (op,
    backend).
    """

    def __init__(
        self,
        backend: str = "auto",
        device="cpu",
        table=None,
        measurements: Optional[Measurements] = None,
        env: Optional[Mapping[str, str]] = None,
    ):
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        self.env = env = os.environ if env is None else env
        self.device = torch.device(device)
        from_env = backend == "auto" and bool(env.get(ENV_VAR))
        self.requested = env[ENV_VAR] if from_env else backend
        self.source = ENV_VAR if from_env else "argument"
        default, per_op = parse_backend_spec(self.requested)
        self.arch = arch_family(self.device)
        given = as_table(table)
        self.committed = DispatchTable.default()
        self.tuning = default == TUNE
        if self.tuning and given is not None:
            raise ValueError(
                'table= is what backend="auto" decides by; backend="tune" measures and builds '
                "its own (engine.dispatch_table)"
            )
        # tune's winners go to a table of their own (what ``save`` writes); auto reads the given
        # table, falling back to the committed one where it is silent.
        self.decisions = DispatchTable() if self.tuning else (given or self.committed)
        self.measurements = measurements if measurements is not None else Measurements()
        self.record = ExecutionRecord(OPS)
        self._memo: Dict[str, tuple] = {}  # backend statuses and module imports, this build
        self._options: Dict[str, Dict[str, OpChoice]] = {}  # auto/tune: backend -> choice
        self._decided: Dict[Tuple[str, str], OpChoice] = {}  # auto: (op, class) -> choice
        self.table: Dict[str, OpChoice] = {}
        self.candidates: Dict[str, List[OpChoice]] = {}
        self.fallbacks: Dict[str, Tuple[str, str, str]] = {}
        unserved: List[Tuple[str, str, str]] = []  # named: (op, backend, why)
        passed_over: Dict[str, List[Tuple[str, str]]] = {}  # auto: op -> [(backend, why)]
        # Block ops last: their composed choice depends on how their parts are served.
        for op in sorted(OPS, key=lambda name: name in _COMPOSITES):
            wanted = per_op.get(op, default)
            if wanted in ("auto", TUNE):
                self._fill_decided(op, wanted, passed_over)
            else:
                self.table[op] = self._named_choice(op, wanted, op in per_op, unserved)
        if unserved:
            raise BackendUnavailableError(self._unserved_message(unserved), tuple(unserved))
        self._note_fallbacks(passed_over)

    def _order(self, op: str, cls: str) -> Tuple[str, ...]:
        order = self.decisions.order(self.arch, op, cls)
        if order is None and self.decisions is not self.committed:
            order = self.committed.order(self.arch, op, cls)
        return order or ("torch",)

    def _named(self, op: str) -> Tuple[str, ...]:
        named = self.decisions.named(self.arch, op)
        if self.decisions is not self.committed:
            named += tuple(b for b in self.committed.named(self.arch, op) if b not in named)
        return named

    def _torch_choice(self, op: str) -> OpChoice:
        fn, reason = resolve("torch", op, self.device, self.env, self._memo)
        return OpChoice(op, "torch", fn, reason)

    def _named_choice(
        self, op: str, backend: str, per_op: bool, unserved: List[Tuple[str, str, str]]
    ) -> OpChoice:
        """``op`` on the backend the caller named. An op the backend does not implement by
        design runs on torch (a block op as its parts), unless it was named for it per op; any
        other failure is noted in ``unserved`` (the build raises)."""
        torch_choice = self._torch_choice(op)
        if backend == "torch":
            return torch_choice
        if op not in implementations(backend):
            if per_op:
                unserved.append((op, backend, f"the {backend} backend does not implement {op}"))
                return torch_choice
            composed = self._composed(op)
            if composed is not None:
                why = f"the {backend} backend has no {op}: its parts run as the table chose them"
                return replace(composed, reason=why)
            return replace(torch_choice, reason=f"the {backend} backend has no {op}: torch runs it")
        fn, reason = resolve(backend, op, self.device, self.env, self._memo)
        if fn is None:
            unserved.append((op, backend, reason))
            return torch_choice
        return OpChoice(op, backend, fn, reason)

    def _unserved_message(self, unserved: List[Tuple[str, str, str]]) -> str:
        groups: Dict[Tuple[str, str], List[str]] = {}
        for op, backend, why in unserved:
            groups.setdefault((backend, why), []).append(op)
        asked = (
            f"{ENV_VAR}={self.requested!r}"
            if self.source == ENV_VAR
            else f"backend={self.requested!r}"
        )
        problems = "; ".join(
            f"backend {backend!r} cannot serve {', '.join(ops)} on {self.device.type}: {why}"
            for (backend, why), ops in groups.items()
        )
        return (
            f"{asked} names a backend explicitly, so it does not fall back: {problems}. "
            'Name another backend, or use backend="auto" to fall back with a warning.'
        )

    def _fill_decided(
        self, op: str, wanted: str, passed_over: Dict[str, List[Tuple[str, str]]]
    ) -> None:
        """auto's or tune's options for ``op``; auto notes in ``passed_over`` each backend its
        table names for the op that implements it but cannot serve it here."""
        torch_choice = self._torch_choice(op)
        names = _tune_order(self.device) if wanted == TUNE else self._named(op)
        options, missing = {"torch": torch_choice}, []
        for name in names:
            if name in (COMPOSED, "torch"):
                continue
            fn, reason = resolve(name, op, self.device, self.env, self._memo)
            if fn is None:
                missing.append(f"{name}: {reason}")
                if wanted == "auto" and op in implementations(name):
                    passed_over.setdefault(op, []).append((name, reason))
            else:
                options[name] = OpChoice(op, name, fn, reason)
        composed = self._composed(op)
        if composed is not None and (wanted == TUNE or COMPOSED in names):
            options[COMPOSED] = composed
        self._options[op] = options
        why = ("tune, measured per shape class" if wanted == TUNE else "auto, decision table") + (
            f" ({'; '.join(missing)})" if missing else ""
        )
        first = self._first(op, self._order(op, "*"))
        self.table[op] = replace(first, reason=why)
        if len(options) > 1:
            # torch last: a tuned call's reference, an auto call's fallback
            self.candidates[op] = [c for n, c in options.items() if n != "torch"] + [torch_choice]

    def _note_fallbacks(self, passed_over: Dict[str, List[Tuple[str, str]]]) -> None:
        """Record auto's fallbacks and say so once per (backend, reason), naming the ops."""
        groups: Dict[Tuple[str, str], List[str]] = {}
        for op, skipped in passed_over.items():
            why = "; ".join(f"{b}: {r}" for b, r in skipped) if len(skipped) > 1 else skipped[0][1]
            self.fallbacks[op] = (skipped[0][0], self.table[op].backend, why)
            for backend, reason in skipped:
                groups.setdefault((backend, reason), []).append(op)
        for (backend, reason), ops in groups.items():
            used = ", ".join(sorted({self.table[op].backend for op in ops}))
            warnings.warn(
                f"cdt_fast: backend='auto' cannot use {backend} for {', '.join(ops)} "
                f"({reason}); they run on the decision table's next choice ({used}). "
                "engine.ops.fallbacks lists them.",
                BackendFallbackWarning,
                stacklevel=2,
            )

    def _first(self, op: str, order: Tuple[str, ...]) -> OpChoice:
        options = self._options[op]
        return next((options[n] for n in order if n in options), options["torch"])

    def _composed(self, op: str) -> Optional[OpChoice]:
        """A block op as the table's own choices for its parts, run one after the other; None for
        an op that is not a block, or whose parts all run on torch (then it is torch's)."""
        if op not in _COMPOSITES:
            return None
        parts, compose = _COMPOSITES[op]
        if not any(self.table[p].backend != "torch" or p in self.candidates for p in parts):
            return None
        return OpChoice(
            op,
            COMPOSED,
            functools.partial(compose, self),
            f"the table's choices for {' then '.join(parts)}",
        )

    def __call__(self, op: str, *args, **kwargs):
        """Run ``op`` with the function the table chooses for this call, and count the call
        under its backend once it returned (a composed block's parts count themselves)."""
        choice = self.choice(op, args, kwargs)
        out = choice.fn(*args, **kwargs)
        if choice.backend != COMPOSED:
            self.record.count(op, choice.backend)
        return out

    def choice(self, op: str, args=(), kwargs=None) -> OpChoice:
        candidates = self.candidates.get(op)
        if not candidates:
            return self.table[op]
        cls = shape_class(op, args, kwargs or {})
        if self.tuning:
            key = (self.arch, op, cls)
            if key not in self.measurements.winner and _capturing(self.device):
                return self._first(op, self.committed.order(self.arch, op, cls) or ("torch",))
            chosen = self.measurements.pick(key, candidates, args, kwargs or {})
            if self.decisions.order(self.arch, op, cls) != (chosen.backend,):
                self.decisions.record(self.arch, op, cls, chosen.backend)
            return chosen
        decided = self._decided.get((op, cls))
        if decided is None:
            decided = self._decided[(op, cls)] = self._first(op, self._order(op, cls))
        return decided

    def report(self) -> Dict[str, Tuple[str, str]]:
        """op -> (backend, reason) of the static table (per-shape-class choices: ``decided()``)."""
        return {op: (c.backend, c.reason) for op, c in self.table.items()}

    def decided(self) -> Dict[Tuple[str, str], str]:
        """(op, shape class) -> backend, for every class met so far (auto and tune)."""
        if self.tuning:
            return {(op, cls): b for (_, op, cls), b in self.measurements.winner.items()}
        return {key: c.backend for key, c in self._decided.items()}

    def __repr__(self) -> str:
        rows = ", ".join(f"{op}={c.backend}" for op, c in self.table.items())
        return f"OpTable(requested={self.requested!r} via {self.source}, {rows})"


def _capturing(device: torch.device) -> bool:
    # Measuring syncs the device, which a CUDA graph capture forbids; a class first met inside a
    # capture takes the committed table's decision.
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()
