"""Which function runs each op: :class:`OpTable`, from op name to (backend, function, reason).

One dispatcher serves every op, the tokenizer's and the generator's (``temporal_attention``) alike.
Which ops a backend implements, and in which module, is the registry's
(:mod:`cdt_fast.engine.registry`); whether a backend can run, availability's
(:func:`cdt_fast.availability.backend_status`); auto's choices, a decision table
(:mod:`cdt_fast.engine.decision_table`); tune's timings, :mod:`cdt_fast.engine.tuning`. Modules are
imported lazily, when a table is built. Calls are never wrapped in try/except: the table is decided
before the first call, and a backend's error at call time propagates.

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
when the caller left it at ``"auto"``: an argument the caller wrote wins. It speaks for the
tokenizer's engine; the generator's table is built with ``env_var=None`` and reads no variable.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import replace
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..availability import BackendFallbackWarning, BackendUnavailableError
from ..devices import arch_family
from .decision_table import COMPOSED, DispatchTable, as_table
from .decisions import shape_class
from .record import ExecutionRecord
from .registry import BACKENDS, OPS, OpChoice, implementations, resolve
from .tuning import Measurements, tune_order

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

ENV_VAR = "CDT_FAST_BACKEND"
TUNE = "tune"


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


def parse_backend_spec(spec: str, where: str = f"{ENV_VAR}/backend") -> Tuple[str, Dict[str, str]]:
    """``"auto"`` / ``"triton"`` / ``"auto,causal_conv3d=torch"`` -> (default, per-op overrides);
    ``where`` names the spec's source in errors."""
    default, per_op = "auto", {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if "=" in part:
            op, backend = (s.strip() for s in part.split("=", 1))
            if op not in OPS:
                raise ValueError(f"{where} names an unknown op {op!r}; ops: {OPS}")
            per_op[op] = _check_backend_name(backend, allow_auto=False)
        else:
            default = _check_backend_name(part, allow_auto=True)
    return default, per_op


def _check_backend_name(name: str, allow_auto: bool) -> str:
    allowed = BACKENDS + (("auto", TUNE) if allow_auto else ())
    if name not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {name!r}")
    return name


# -- the engine's table -----------------------------------------------------------------------


class OpTable:
    """The dispatch table of one engine (or of the generator's attention): op -> :class:`OpChoice`,
    plus the other choices ``auto`` or ``tune`` may make per shape class (``candidates``).

    ``backend``: "auto", "tune", a backend name, or a spec like "auto,causal_conv3d=torch"; when
    it is "auto", the variable ``env_var`` (default ``CDT_FAST_BACKEND``; None: no variable) in
    ``env`` (default ``os.environ``) may replace it. ``table``: auto's decisions (a
    :class:`DispatchTable`, a path to a saved one, or None for the committed table).
    ``measurements``: where ``tune`` records its timings. ``ops``: the ops the table serves
    (default :data:`OPS`; an accelerated CDT serves ``CDT_OPS``, the generator
    ``GENERATOR_OPS``); a block op needs its parts among them.

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
        ops: Optional[Sequence[str]] = None,
        env_var: Optional[str] = ENV_VAR,
    ):
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        self.env = env = os.environ if env is None else env
        self.device = torch.device(device)
        self.ops = _served(ops)
        from_env = backend == "auto" and env_var is not None and bool(env.get(env_var))
        self.requested = env[env_var] if from_env else backend
        self.source = env_var if from_env else "argument"
        default, per_op = parse_backend_spec(
            self.requested, f"{env_var}/backend" if env_var else "backend"
        )
        unknown = [op for op in per_op if op not in self.ops]
        if unknown:
            raise ValueError(
                f"{self._asked()} names {', '.join(unknown)}, which this table does not serve; "
                f"it serves {', '.join(self.ops)}"
            )
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
        self.record = ExecutionRecord(self.ops)
        self._memo: Dict[str, tuple] = {}  # backend statuses and module imports, this build
        self._options: Dict[str, Dict[str, OpChoice]] = {}  # auto/tune: backend -> choice
        self._decided: Dict[Tuple[str, str], OpChoice] = {}  # (op, class) -> choice
        self.table: Dict[str, OpChoice] = {}
        self.candidates: Dict[str, List[OpChoice]] = {}
        self.fallbacks: Dict[str, Tuple[str, str, str]] = {}
        unserved: List[Tuple[str, str, str]] = []  # named: (op, backend, why)
        passed_over: Dict[str, List[Tuple[str, str]]] = {}  # auto: op -> [(backend, why)]
        # Block ops last: their composed choice depends on how their parts are served.
        for op in sorted(self.ops, key=lambda name: name in _COMPOSITES):
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

    def _asked(self) -> str:
        """What the caller asked for, as they wrote it."""
        if self.source == "argument":
            return f"backend={self.requested!r}"
        return f"{self.source}={self.requested!r}"

    def _unserved_message(self, unserved: List[Tuple[str, str, str]]) -> str:
        groups: Dict[Tuple[str, str], List[str]] = {}
        for op, backend, why in unserved:
            groups.setdefault((backend, why), []).append(op)
        problems = "; ".join(
            f"backend {backend!r} cannot serve {', '.join(ops)} on {self.device.type}: {why}"
            for (backend, why), ops in groups.items()
        )
        return (
            f"{self._asked()} names a backend explicitly, unavailable here, and a named backend does not "
            f"fall back: {problems}. "
            'Name another backend, or use backend="auto" to fall back with a warning.'
        )

    def _fill_decided(
        self, op: str, wanted: str, passed_over: Dict[str, List[Tuple[str, str]]]
    ) -> None:
        """auto's or tune's options for ``op``; auto notes in ``passed_over`` each backend its
        table names for the op that implements it but cannot serve it here."""
        torch_choice = self._torch_choice(op)
        names = tune_order(op, self.device) if wanted == TUNE else self._named(op)
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
        return self.call(op, args, kwargs)

    def call(self, op: str, args, kwargs, cls: Optional[str] = None):
        """:meth:`__call__` with the call's shape class given by the caller (None: the one
        :func:`~cdt_fast.engine.decisions.shape_class` reads off the arguments), for a caller
        that knows what the tensors do not show (the generator's attention: its axis)."""
        choice = self.choice(op, args, kwargs, cls)
        out = choice.fn(*args, **kwargs)
        if choice.backend != COMPOSED:
            self.record.count(op, choice.backend)
        return out

    def choice(self, op: str, args=(), kwargs=None, cls: Optional[str] = None) -> OpChoice:
        candidates = self.candidates.get(op)
        if not candidates:
            return self.table[op]
        if cls is None:
            cls = shape_class(op, args, kwargs or {})
        # A class is decided once (auto: the table's order; tune: measured); later calls of it
        # cost one lookup.
        decided = self._decided.get((op, cls))
        if decided is not None:
            return decided
        if self.tuning:
            key = (self.arch, op, cls)
            if key not in self.measurements.winner and _capturing(self.device):
                return self._first(op, self.committed.order(self.arch, op, cls) or ("torch",))
            decided = self.measurements.pick(key, candidates, args, kwargs or {})
            self.decisions.record(self.arch, op, cls, decided.backend)
        else:
            decided = self._first(op, self._order(op, cls))
        self._decided[(op, cls)] = decided
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


def _served(ops: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The ops a table serves: ``ops`` checked (known, and each block op with its parts)."""
    if ops is None:
        return OPS
    if isinstance(ops, str) or not ops or not all(op in OPS for op in ops):
        raise ValueError(f"ops must be a non-empty sequence of ops from {OPS}, got {ops!r}")
    for op in ops:
        parts = _COMPOSITES[op][0] if op in _COMPOSITES else ()
        if not all(p in ops for p in parts):
            raise ValueError(f"ops: the block op {op} needs its parts {', '.join(parts)} too")
    return tuple(dict.fromkeys(ops))


def _capturing(device: torch.device) -> bool:
    # Measuring syncs the device, which a CUDA graph capture forbids; a class first met inside a
    # capture takes the committed table's decision.
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()
