"""Softmax attention for the video generator: the engine's ``temporal_attention`` op.

Layout: ``q`` [S, heads, Tq, d], ``k``/``v`` [S, heads, Tk, d]. The generator's spatial blocks call
it with ``S = B*T`` (the tokens of one latent frame) and its temporal blocks with ``S = B*h*w``
(the frames at one position: short sequences, very many of them). ``causal`` aligns the last query
with the last key, so a chunk of queries can attend to cached keys of earlier chunks.

The op is served by the engine's op table (:class:`cdt_fast.engine.dispatch.OpTable`), as every op
is: the same availability (:func:`cdt_fast.availability.backend_status`), the same rules (a backend
named explicitly that cannot run raises
:class:`~cdt_fast.availability.BackendUnavailableError`; only ``auto`` falls back, with one
:class:`~cdt_fast.availability.BackendFallbackWarning`), the same report and execution record.
Backends: ``flash`` (flash-attn) and ``xformers`` when importable (optional extras), ``triton``
(the project's kernel, ``cdt_fast.kernels.temporal_attention``: forward only, so it serves
sampling, not training), ``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``) and
``torch`` (the op's spec, :func:`cdt_fast.functional.temporal_attention`: plain fp32 softmax
attention, the oracle). ``auto`` follows the committed decision table, whose classes say the
dtype, the axis (which only the caller knows) and whether autograd records the call.

:class:`AttentionTable` builds the op table once per device; the sampler and the trainer each keep
one for all their calls. :func:`attention` builds one per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional

import torch

from ..availability import BackendStatus, backend_status
from ..deprecation import warn_deprecated
from ..validation import check_attention

if TYPE_CHECKING:
    from ..engine.dispatch import OpTable

__all__ = ["BACKENDS", "AttentionTable", "attention", "attention_backends"]

BACKENDS = ("auto", "flash", "xformers", "triton", "sdpa", "torch")
# Deprecated names of backends -> their names.
_RENAMED = {"math": "torch"}
_OP = "temporal_attention"


def _backend_name(backend: str) -> str:
    """``backend`` checked against :data:`BACKENDS` (a deprecated name warns and gives the name)."""
    if backend in _RENAMED:
        warn_deprecated(f"attention backend {backend!r}", repr(_RENAMED[backend]))
        return _RENAMED[backend]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class AttentionTable:
    """The generator's attention: the engine's op table for ``temporal_attention`` with
    ``backend`` ("auto" or one of :data:`BACKENDS`), built on the first call on each device and
    kept (``tables``: device -> :class:`~cdt_fast.engine.dispatch.OpTable`, with its ``report()``,
    ``record`` and ``fallbacks``). ``env``: where availability reads ``TRITON_INTERPRET``
    (default ``os.environ``); ``CDT_FAST_BACKEND`` is the tokenizer engine's and is not read."""

    def __init__(self, backend: str = "auto", env=None):
        self.backend = _backend_name(backend)
        self.env = env
        self.tables: Dict[torch.device, OpTable] = {}

    def table(self, device) -> OpTable:
        """The op table for ``device``; building it raises when a backend named explicitly
        cannot run there, and warns once when auto falls back."""
        device = torch.device(device)
        if device not in self.tables:
            # Imported here: the engine is heavier than the generator's model code needs to load.
            from ..engine.dispatch import OpTable
            from ..engine.registry import GENERATOR_OPS

            self.tables[device] = OpTable(
                self.backend, device, env=self.env, ops=GENERATOR_OPS, env_var=None
            )
        return self.tables[device]

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool = False,
        scale: Optional[float] = None,
        axis: str = "space",
    ) -> torch.Tensor:
        """``softmax(q k^T * scale [+ causal mask]) v`` over [S, heads, T, d] tensors; ``axis``
        ("space" or "time") is what the call attends over, which decides auto's choice."""
        from ..engine.decisions import AXES, attention_class

        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        scale = check_attention(q, k, v, causal=causal, scale=scale)
        kwargs = {"causal": causal, "scale": scale}
        return self.table(q.device).call(_OP, (q, k, v), kwargs, attention_class(q, k, v, axis))

    def __getstate__(self) -> dict:
        # The built tables hold imported modules; a copy (a deep-copied trainer, a pickled loss)
        # builds its own on first use.
        return dict(self.__dict__, tables={})

    def __repr__(self) -> str:
        return f"AttentionTable(backend={self.backend!r}, devices={list(self.tables)})"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    backend="auto",
    axis: str = "space",
) -> torch.Tensor:
    """``softmax(q k^T * scale [+ causal mask]) v`` over [S, heads, T, d] tensors.

    ``backend``: "auto" (on CUDA: flash-attn for fp16/bf16, then xformers, then — for
    ``axis="time"`` without autograd — the Triton kernel, then SDPA; on CPU: SDPA), one of
    "flash", "xformers", "triton", "sdpa", "torch" (one that cannot run here raises
    :class:`~cdt_fast.availability.BackendUnavailableError`, a RuntimeError), or an
    :class:`AttentionTable` to reuse. ``axis`` ("space" or "time") only informs the automatic
    choice. ``scale`` defaults to ``d ** -0.5``.
    """
    table = backend if isinstance(backend, AttentionTable) else AttentionTable(backend)
    return table(q, k, v, causal=causal, scale=scale, axis=axis)


def attention_backends(
    device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> Dict[str, BackendStatus]:
    """name -> :class:`~cdt_fast.availability.BackendStatus` (available, and why or why not) for
    tensors on ``device`` (default CPU) of ``dtype`` (default float32). A deprecated name looks up
    its backend's entry, with a warning."""
    device = torch.device("cpu" if device is None else device)
    dtype = torch.float32 if dtype is None else dtype
    return _Statuses((name, backend_status(name, device, dtype=dtype)) for name in BACKENDS[1:])


class _Statuses(dict):
    """The backends' statuses under their names; ``[old name]`` warns and gives the new name's."""

    def __missing__(self, name):
        if name in _RENAMED:
            return self[_backend_name(name)]
        raise KeyError(name)

    def get(self, name, default=None):
        # dict.get skips __missing__: without this, get("math") would answer None
        return self[name] if name in self or name in _RENAMED else default
