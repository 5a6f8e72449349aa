"""Which implementation runs a causal conv: measured per shape, kept in an explicit selector.

Backends:

- ``"triton"``: :mod:`cdt_fast.kernels.causal_conv3d`, the implicit GEMM that reads padding and
  cached frames in place (CUDA, or CPU under ``TRITON_INTERPRET=1``);
- ``"cudnn"``: ``F.conv3d`` on ``channels_last_3d`` activations with zero spatial padding given to
  the conv (cuDNN on CUDA; the same torch op on CPU, which keeps the path testable);
- ``"torch"``: the reference op, :func:`cdt_fast.functional.causal_conv3d` (upstream's
  cat + pad + conv arrangement).

A :class:`ConvSelector` with ``backend="auto"`` times every available backend the first time it
sees a problem key (shape, dtype, device, conv geometry) on CUDA and keeps the fastest for that key;
the reference arrangement is always a candidate, so ``auto`` never keeps a path slower than it
(as measured). On CPU ``auto`` is the reference op, or Triton when ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import functional as CF

__all__ = [
    "BACKENDS",
    "ConvSelector",
    "causal_conv3d",
    "conv_transpose_up2x",
    "time_downsample",
    "apply_epilogue",
    "triton_conv_module",
]

BACKENDS = ("triton", "cudnn", "torch")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_conv_module():
    """The Triton conv module, or a string saying why it cannot be used."""
    try:
        from ..kernels import causal_conv3d as module
    except Exception as exc:  # triton missing or broken: the other backends still work
        return f"triton kernel unavailable: {type(exc).__name__}: {exc}"
    return module


def apply_epilogue(y: torch.Tensor, epilogue) -> torch.Tensor:
    """The Triton kernel's epilogue (:class:`cdt_fast.kernels.causal_conv3d.Epilogue`) in torch,
    for the backends that cannot fuse it."""
    if epilogue is None:
        return y
    if epilogue.norm_weight is not None:
        return CF.channel_norm(
            y,
            epilogue.norm_weight,
            epilogue.norm_bias,
            epilogue.eps,
            relu=epilogue.relu,
            time_bias=epilogue.channel_bias,
            residual=epilogue.residual,
        )
    if epilogue.relu:
        y = torch.relu(y)
    if epilogue.channel_bias is not None:
        cb = epilogue.channel_bias
        y = y + cb.reshape(cb.shape[0], y.shape[1], 1, 1, 1).to(y.dtype)
    if epilogue.residual is not None:
        y = y + epilogue.residual
    return y


def _finish(y: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    if out is None:
        return y
    if out.shape != y.shape or out.dtype != y.dtype:
        raise ValueError(
            f"out must be {tuple(y.shape)} {y.dtype}, got {tuple(out.shape)} {out.dtype}"
        )
    return out.copy_(y)


class ConvSelector:
    """Picks a backend per problem key and remembers it (and the timings that decided it).

    ``backend``: ``"auto"`` (measure on CUDA, reference on CPU unless ``TRITON_INTERPRET=1``) or
    one of :data:`BACKENDS` to force it. ``warmup``/``reps``: launches per candidate when timing.
    """

    def __init__(self, backend: str = "auto", *, warmup: int = 2, reps: int = 5):
        if backend not in ("auto",) + BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if int(warmup) < 0 or int(reps) < 1:
            raise ValueError(f"warmup must be >= 0 and reps >= 1, got {warmup}, {reps}")
        self.backend = backend
        self.warmup, self.reps = int(warmup), int(reps)
        self._choices: Dict[Hashable, str] = {}
        self.timings: Dict[Hashable, Dict[str, float]] = {}

    def __repr__(self) -> str:
        return f"ConvSelector(backend={self.backend!r}, keys={len(self._choices)})"

    def available(self, device: torch.device) -> Dict[str, Optional[str]]:
        """Per backend: None when usable on ``device``, else the reason it is not."""
        module = triton_conv_module()
        triton_reason = module if isinstance(module, str) else None
        if triton_reason is None and device.type != "cuda" and not _interpreting():
            triton_reason = "triton needs CUDA (or TRITON_INTERPRET=1 on CPU)"
        return {"triton": triton_reason, "cudnn": None, "torch": None}

    def choice(self, key: Hashable) -> Optional[str]:
        """The backend remembered for ``key`` (None if it was never decided)."""
        return self._choices.get(key)

    def pick(
        self, key: Hashable, device: torch.device, candidates: Dict[str, Callable[[], torch.Tensor]]
    ) -> str:
        """The backend for ``key``; ``candidates`` run one conv each (used only for timing)."""
        reasons = self.available(device)
        if self.backend != "auto":
            if reasons[self.backend] is not None:
                raise RuntimeError(
                    f"backend {self.backend!r} requested but {reasons[self.backend]}"
                )
            return self.backend
        if key in self._choices:
            return self._choices[key]
        if device.type != "cuda":
            choice = "triton" if _interpreting() and reasons["triton"] is None else "torch"
        else:
            usable = [n for n in BACKENDS if n in candidates and reasons[n] is None]
            times = {n: self._time(candidates[n]) for n in usable}
            self.timings[key] = times
            choice = min(times, key=times.get)
        self._choices[key] = choice
        return choice

    def _time(self, fn: Callable[[], torch.Tensor]) -> float:
        """Median ms of ``fn`` on the current CUDA stream (a failing candidate is infinitely slow)."""
        try:
            for _ in range(self.warmup):
                fn()
            times: List[float] = []
            for _ in range(self.reps):
                start, stop = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
        except Exception:  # e.g. no cuDNN algorithm for a layout: never pick it
            return float("inf")
        return sorted(times)[len(times) // 2]


# -- the functional-signature launcher --------------------------------------------------------


def _cudnn_causal_conv3d(
    x, weight, bias, *, past, history, space_padding, stride, pad_mode, upsample2x
):
    """cuDNN on channels-last: temporal [pad | past | x] still assembled (separate tensors come
    in), spatial zero padding given to the conv instead of materialised."""
    fmt = torch.channels_last_3d
    if pad_mode != "zeros" or upsample2x:
        return CF.causal_conv3d(
            x.contiguous(memory_format=fmt),
            weight,
            bias,
            past=past,
            history=history,
            space_padding=space_padding,
            stride=stride,
            pad_mode=pad_mode,
            upsample2x=upsample2x,
        )
    front = history
    if past is not None and history:
        x = torch.cat([past[:, :, -history:], x], dim=2)
        front -= min(past.shape[2], history)
    if front:
        x = F.pad(x, (0, 0, 0, 0, front, 0))
    x = x.contiguous(memory_format=fmt)
    return F.conv3d(
        x,
        CF.cast_like(weight, x).contiguous(memory_format=fmt),
        CF.cast_like(bias, x),
        tuple(stride),
        (0, *space_padding),
    )


def causal_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    past: Optional[torch.Tensor] = None,
    history: int = 0,
    space_padding: Tuple[int, int] = (0, 0),
    stride: Sequence[int] = (1, 1, 1),
    pad_mode: str = "zeros",
    upsample2x: bool = False,
    out: Optional[torch.Tensor] = None,
    epilogue=None,
    selector: Optional[ConvSelector] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.causal_conv3d` on the backend ``selector`` picks (or
    ``backend``, which forces one). Pass the same selector across calls to keep its measurements;
    without one a fresh selector is made per call."""
    if selector is None:
        selector = ConvSelector(backend or "auto")
    elif backend is not None and backend != selector.backend:
        raise ValueError(
            f"backend={backend!r} conflicts with selector.backend={selector.backend!r}"
        )
    kw = dict(
        past=past,
        history=history,
        space_padding=space_padding,
        stride=stride,
        pad_mode=pad_mode,
        upsample2x=upsample2x,
    )

    def run_triton():
        return triton_conv_module().causal_conv3d(x, weight, bias, out=out, epilogue=epilogue, **kw)

    def run_cudnn():
        return _finish(apply_epilogue(_cudnn_causal_conv3d(x, weight, bias, **kw), epilogue), out)

    def run_torch():
        return _finish(apply_epilogue(CF.causal_conv3d(x, weight, bias, **kw), epilogue), out)

    runners = {"triton": run_triton, "cudnn": run_cudnn, "torch": run_torch}
    key = (
        "conv",
        tuple(x.shape),
        tuple(past.shape) if past is not None else None,
        tuple(weight.shape),
        x.dtype,
        x.device,
        history,
        tuple(space_padding),
        tuple(stride),
        pad_mode,
        bool(upsample2x),
        _epilogue_key(epilogue),
    )
    return runners[selector.pick(key, x.device, runners)]()


def _epilogue_key(epilogue) -> Optional[Tuple[bool, ...]]:
    if epilogue is None:
        return None
    return (
        epilogue.norm_weight is not None,
        bool(epilogue.relu),
        epilogue.channel_bias is not None,
        epilogue.residual is not None,
    )


def time_downsample(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    past: Optional[torch.Tensor] = None,
    pad_mode: str = "zeros",
    selector: Optional[ConvSelector] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.time_downsample` as a causal conv with time stride 2: the first
    chunk has 2 frames of padding (history 2, no past), a later one its ``past`` frames."""
    if weight.dim() != 3 or weight.shape[2] != 3:
        raise ValueError(
            f"weight must be a Conv1d weight [C_out, C_in, 3], got {tuple(weight.shape)}"
        )
    history = past.shape[2] if past is not None else 2
    return causal_conv3d(
        x,
        weight[..., None, None],
        bias,
        past=past,
        history=history,
        stride=(2, 1, 1),
        pad_mode=pad_mode,
        selector=selector,
        backend=backend,
    )


def conv_transpose_up2x(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """CDT-small's upsample (:func:`cdt_fast.functional.conv_transpose_up2x`) on channels-last
    activations and weight, where cuDNN has its fast transposed-conv kernels."""
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        weight = weight.contiguous(memory_format=torch.channels_last_3d)
    return CF.conv_transpose_up2x(x, weight, bias)
