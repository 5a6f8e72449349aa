"""Which function runs each op: a table from op name to (backend, function, reason).

Every backend implements the signatures of :mod:`cdt_fast.functional` under the same names, so a
backend is just "where to look the name up". Modules are imported lazily, when a table is built;
an op whose module or function is missing falls back to torch and the table records why. Calls are
never wrapped in try/except: the table is decided before the first call.

``auto`` picks, per op, the fastest backend from timings measured on the real call shapes and kept
in an explicit :class:`Measurements` object (or, when measuring is off, the first available backend
in a fixed preference order). Either way a non-torch candidate is vetted once per call signature
(it must run and agree with torch), so a kernel lacking a case falls back for that case only. An
explicitly named backend is not vetted: asking for it means wanting its errors. For the block ops
(``causal_conv3d_norm``, ``linear_attention_block``) ``auto`` also tries ``"composed"``: the
table's own choices for the block's parts run one after the other, so a fused kernel is only kept
where it beats the best unfused arrangement; a named backend that lacks a block op runs it the
same way, as its parts, rather than falling back to torch for the whole block.
``CDT_FAST_BACKEND`` overrides the requested backend, e.g.
``CDT_FAST_BACKEND=torch`` or ``CDT_FAST_BACKEND=auto,causal_conv3d=triton``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import time
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

__all__ = [
    "OPS",
    "BACKENDS",
    "ENV_VAR",
    "OpChoice",
    "OpTable",
    "Measurements",
    "backend_status",
    "resolve",
    "parse_backend_spec",
    "COMPOSED",
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
    "upsample_nearest2x",
    "conv_transpose_up2x",
    "ddim_update",
    "to_uint8_frames",
)
BACKENDS = ("torch", "triton", "cuda", "cpp")
ENV_VAR = "CDT_FAST_BACKEND"
# auto's extra candidate for a block op: the table's own choices for its parts, run one after the
# other (e.g. cuDNN's conv, then the Triton norm pass), so a fused kernel is kept only where it
# beats the best unfused arrangement.
COMPOSED = "composed"

# Where each backend keeps each op. Triton: one module per op family (issue 3 / issue 4 kernels).
_TRITON_MODULES = MappingProxyType(
    {
        "causal_conv3d": "cdt_fast.kernels.causal_conv3d",
        "causal_conv3d_history": "cdt_fast.kernels.causal_conv3d",
        "causal_conv3d_norm": "cdt_fast.kernels.causal_conv3d",
        "channel_norm": "cdt_fast.kernels.channel_norm",
        "linear_attention": "cdt_fast.kernels.linear_attention",
        "linear_attention_block": "cdt_fast.kernels.linear_attention",
        "time_downsample": "cdt_fast.kernels.time_resample",
        "time_upsample": "cdt_fast.kernels.time_resample",
        "upsample_nearest2x": "cdt_fast.kernels.time_resample",
        "conv_transpose_up2x": "cdt_fast.kernels.time_resample",
        "ddim_update": "cdt_fast.kernels.denoise",
        "to_uint8_frames": "cdt_fast.kernels.denoise",
    }
)
_CPP_MODULE = "cdt_fast._cpp_lib"


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


def _modules_of(backend: str, op: str) -> Tuple[str, ...]:
    """Where to look ``op`` up, in order: for Triton the op's own module first, then the other
    kernel modules (a kernel may live beside a sibling op, e.g. the transposed conv)."""
    if backend == "torch":
        return ("cdt_fast.functional",)
    if backend == "triton":
        own = _TRITON_MODULES[op]
        return (own,) + tuple(sorted(set(_TRITON_MODULES.values()) - {own}))
    return (_CPP_MODULE,)


def backend_status(
    backend: str, device: torch.device, env: Optional[Mapping[str, str]] = None
) -> Tuple[bool, str]:
    """Whether ``backend`` can run on ``device`` at all, and why (not) -- before any op lookup."""
    env = os.environ if env is None else env
    if backend == "torch":
        return True, "reference ops (cdt_fast.functional), always available"
    if backend == "triton":
        interpreted = env.get("TRITON_INTERPRET") == "1"
        if device.type != "cuda" and not interpreted:
            return False, "Triton needs a CUDA device (or TRITON_INTERPRET=1 on CPU)"
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed (pip install cdt_fast[triton])"
        return True, "Triton kernels" + (" under the interpreter" if interpreted else "")
    if backend == "cuda" and device.type != "cuda":
        return False, "the CUDA extension runs on CUDA tensors only"
    if backend == "cpp" and device.type != "cpu":
        return False, "the C++ extension runs on CPU tensors only"
    if backend in ("cuda", "cpp"):
        declared = _declared_status(backend)
        if declared is not None and not declared[0]:
            return False, declared[1]
        return True, f"{_CPP_MODULE} ({backend})"
    raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {backend!r}")


def _declared_status(backend: str) -> Optional[Tuple[bool, str]]:
    """What ``cdt_fast.backends()`` (the extension's own report, when present) says."""
    try:
        report = importlib.import_module("cdt_fast.backends").backends()
        info = report[backend]
        return bool(info.available), str(info.reason)
    except Exception:  # noqa: BLE001 - no report (yet) means: find out by importing the ops
        return None


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
        memo[backend] = backend_status(backend, device, env)
    ok, reason = memo[backend]
    if not ok:
        return None, reason
    missing = []
    for name in _modules_of(backend, op):
        if name not in memo:
            try:
                memo[name] = (importlib.import_module(name), None)
            except Exception as err:  # noqa: BLE001 - a backend not built/merged yet is fine
                memo[name] = (None, f"{name} is not importable ({type(err).__name__}: {err})")
        module, error = memo[name]
        fn = getattr(module, op, None) if module is not None else None
        if callable(fn):
            return fn, reason
        missing.append(error or f"{name} has no function {op!r}")
    return None, "; ".join(missing)


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
    allowed = BACKENDS + (("auto",) if allow_auto else ())
    if name not in allowed:
        raise ValueError(f"backend must be one of {allowed}, got {name!r}")
    return name


def preference(device: torch.device) -> Tuple[str, ...]:
    """Fixed order used by ``auto`` when it does not measure: compiled code first, torch last.
    Triton under the CPU interpreter is far slower than torch, so it is never auto-picked there."""
    if device.type == "cuda":
        return ("cuda", "triton", "torch")
    return ("cpp", "torch")


@dataclass(frozen=True)
class OpChoice:
    op: str
    backend: str
    fn: Callable
    reason: str


class Measurements:
    """Timings of each candidate backend per (op, call signature, dtype, device), and the winner.

    Owned by an engine (or shared between engines on purpose); nothing global. ``rejected``
    records candidates that raised or disagreed with torch on the measured call.
    """

    def __init__(self, repeats: int = 3):
        self.repeats = repeats
        self.timings: Dict[tuple, Dict[str, float]] = {}
        self.winner: Dict[tuple, str] = {}
        self.rejected: Dict[tuple, Dict[str, str]] = {}

    def pick(
        self, key: tuple, candidates: List[OpChoice], args, kwargs, timed: bool = True
    ) -> OpChoice:
        """The winner for ``key``: fastest of the candidates that agree with torch (``timed``), or
        the first one that agrees, in the candidates' (preference) order."""
        if key not in self.winner:
            self._select(key, candidates, args, kwargs, timed)
        name = self.winner[key]
        return next(c for c in candidates if c.backend == name)

    def _select(self, key, candidates: List[OpChoice], args, kwargs, timed: bool) -> None:
        torch_choice = next(c for c in candidates if c.backend == "torch")
        expected = torch_choice.fn(*args, **kwargs)
        times, rejected, first_ok = {}, {}, None
        for choice in candidates:
            if choice.backend != "torch":
                try:  # vetting a candidate once per call signature, not guarding calls
                    out = choice.fn(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - any failure disqualifies it
                    rejected[choice.backend] = f"{type(err).__name__}: {err}"
                    continue
                if not _close(out, expected):
                    rejected[choice.backend] = "result differs from torch beyond tolerance"
                    continue
            if not timed:
                first_ok = choice.backend
                break
            times[choice.backend] = self._time(choice.fn, args, kwargs)
        self.timings[key], self.rejected[key] = times, rejected
        self.winner[key] = first_ok if not timed else min(times, key=times.get)

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


def call_key(op: str, args, kwargs) -> tuple:
    """What decides an op's speed: shapes, dtype, device and the static keyword arguments."""
    parts = [op]
    for value in list(args) + [kwargs[k] for k in sorted(kwargs)]:
        if isinstance(value, torch.Tensor):
            parts.append((tuple(value.shape), value.dtype, str(value.device)))
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            parts.append(len(value))
        else:
            parts.append(value)
    return tuple(parts)


class OpTable:
    """The dispatch table of one engine: op -> :class:`OpChoice`, plus ``auto``'s candidates.

    ``backend``: "auto", a backend name, or a spec like "auto,causal_conv3d=torch";
    ``env`` (default ``os.environ``) may override it through ``CDT_FAST_BACKEND``.
    ``measure``: None measures on CUDA only; True/False force it.
    """

    def __init__(
        self,
        backend: str = "auto",
        device="cpu",
        measure: Optional[bool] = None,
        measurements: Optional[Measurements] = None,
        env: Optional[Mapping[str, str]] = None,
    ):
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        self.env = env = os.environ if env is None else env
        self.device = torch.device(device)
        self.requested = env.get(ENV_VAR) or backend
        self.source = ENV_VAR if env.get(ENV_VAR) else "argument"
        default, per_op = parse_backend_spec(self.requested)
        self.measure = (self.device.type == "cuda") if measure is None else bool(measure)
        self.measurements = measurements if measurements is not None else Measurements()
        self._memo: Dict[str, tuple] = {}  # backend statuses and module imports, this build
        self.table: Dict[str, OpChoice] = {}
        self.candidates: Dict[str, List[OpChoice]] = {}
        # Block ops last: their composed candidate depends on how their parts are served.
        for op in sorted(OPS, key=lambda name: name in _COMPOSITES):
            self._fill(op, per_op.get(op, default))

    def _fill(self, op: str, wanted: str) -> None:
        torch_fn, torch_reason = resolve("torch", op, self.device, self.env, self._memo)
        torch_choice = OpChoice(op, "torch", torch_fn, torch_reason)
        if wanted == "torch":
            self.table[op] = torch_choice
            return
        if wanted != "auto":
            fn, reason = resolve(wanted, op, self.device, self.env, self._memo)
            if fn is not None:
                self.table[op] = OpChoice(op, wanted, fn, reason)
            else:  # a block op the backend lacks runs as its parts, served as far as it can
                self.table[op] = replace(
                    self._composed(op) or torch_choice, reason=f"fallback from {wanted}: {reason}"
                )
            return
        found, missing = [], []
        for name in preference(self.device):
            fn, reason = (
                (torch_fn, torch_reason)
                if name == "torch"
                else resolve(name, op, self.device, self.env, self._memo)
            )
            if fn is None:
                missing.append(f"{name}: {reason}")
            else:
                found.append(OpChoice(op, name, fn, reason))
        composed = self._composed(op)
        if composed is not None:
            found.insert(len(found) - 1, composed)
        first = found[0]
        why = "auto, first available in preference order" + (
            f" ({'; '.join(missing)})" if missing else ""
        )
        self.table[op] = OpChoice(op, first.backend, first.fn, why)
        if len(found) > 1:  # vetted (and, if measuring, timed) per call signature
            self.candidates[op] = found

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
        """Run ``op`` with the table's function (auto-measured per call signature if enabled)."""
        return self.choice(op, args, kwargs).fn(*args, **kwargs)

    def choice(self, op: str, args=(), kwargs=None) -> OpChoice:
        candidates = self.candidates.get(op)
        if not candidates:
            return self.table[op]
        key = call_key(op, args, kwargs or {})
        if key not in self.measurements.winner and _capturing(self.device):
            return self.table[op]
        return self.measurements.pick(key, candidates, args, kwargs or {}, timed=self.measure)

    def report(self) -> Dict[str, Tuple[str, str]]:
        """op -> (backend, reason) of the static table (auto's measured winners are in
        ``self.measurements.winner``)."""
        return {op: (c.backend, c.reason) for op, c in self.table.items()}

    def __repr__(self) -> str:
        rows = ", ".join(f"{op}={c.backend}" for op, c in self.table.items())
        return f"OpTable(requested={self.requested!r} via {self.source}, {rows})"


def _capturing(device: torch.device) -> bool:
    # Measuring syncs the device, which a CUDA graph capture forbids; captured shapes were
    # measured in the eager warm-up chunk anyway.
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()
