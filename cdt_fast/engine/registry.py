"""Which backend implements which op, and in which module: the op table's registry.

Every backend implements the signatures of :mod:`cdt_fast.functional` under the same names
(``tests/test_op_contract.py`` holds them to it); :func:`implementations` says which ops each
backend has and where, and :func:`resolve` finds the function for an op on a device, or says why
there is none. Modules are imported only when resolved.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch

from ..availability import BACKEND_NAMES, LIBRARY_BACKENDS
from ..availability import backend_status as _availability

__all__ = [
    "OPS",
    "CDT_OPS",
    "GENERATOR_OPS",
    "BACKENDS",
    "OpChoice",
    "implementations",
    "resolve",
]

# The tokenizer's ops (what an accelerated CDT runs).
CDT_OPS = (
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
# The latent video generator's ops.
GENERATOR_OPS = ("temporal_attention",)
OPS = CDT_OPS + GENERATOR_OPS
BACKENDS = ("torch", "triton", "cuda", "cpp") + LIBRARY_BACKENDS
assert set(BACKENDS) == set(BACKEND_NAMES + LIBRARY_BACKENDS)

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
        "temporal_attention": "cdt_fast.kernels.temporal_attention",
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
        **{
            library: MappingProxyType(
                {"temporal_attention": f"cdt_fast.attention_libraries.{library}"}
            )
            for library in LIBRARY_BACKENDS
        },
    }
)


@dataclass(frozen=True)
class OpChoice:
    """The function that runs ``op`` on ``backend``, and why it was chosen (or what it runs on)."""

    op: str
    backend: str
    fn: Callable
    reason: str


def implementations(backend: str) -> Mapping[str, str]:
    """op -> module that implements it, for ``backend`` (the op contract: same name, same
    parameters as :mod:`cdt_fast.functional`)."""
    if backend not in _IMPLEMENTATIONS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _IMPLEMENTATIONS[backend]


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
