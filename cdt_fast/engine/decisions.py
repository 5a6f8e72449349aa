"""auto's committed decision table, and the shape classes and arch families it is keyed by.

``DECISIONS[arch][op][shape class]`` is the order in which ``auto`` tries backends for a call (the
first one available runs it; torch when none is). ``op`` and ``shape class`` may be ``"*"``, and a
shape class may be a glob (:mod:`fnmatch`) over :func:`shape_class`'s text; within one op an exact
class wins, then the patterns in the order written, then the op's ``"*"``, then the arch's ``"*"``
op. The table is data: a run of ``backend="tune"`` measures the same keys and saves a table of
the same form (``cdt_fast.engine.DispatchTable``) that can replace or extend this one.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Tuple

import torch

from ..devices import ARCH_FAMILIES, arch_family
from ..dtypes import dtype_name

__all__ = [
    "ARCH_FAMILIES",
    "AXES",
    "CUDA_GRAPH_SAFE_OPS",
    "DECISIONS",
    "arch_family",
    "attention_class",
    "shape_class",
]

# What the generator's attention attends over: the tokens of one frame, or the frames at one place.
AXES = ("space", "time")
# Ops whose cost is a conv: classed by input/output channels and kernel (weight [Cout, Cin, *k];
# the transposed conv's weight is [Cin, Cout, *k]).
_CONV_OPS = ("causal_conv3d", "causal_conv3d_norm", "time_downsample", "time_upsample")
# Per-voxel ops: classed by channels.
_CHANNEL_OPS = ("channel_norm", "linear_attention", "linear_attention_block")


def _bucket(n: int) -> str:
    for bound in (16, 32, 64, 128, 256, 512):
        if n <= bound:
            return str(bound)
    return "big"


def shape_class(op: str, args, kwargs) -> str:
    """The class of a call that the table is keyed by: dtype, and channel buckets (powers of two
    up to 512) and kernel size where they decide which implementation is fastest, e.g.
    ``"bf16/cin64/cout128/k3x3x3"``, ``"fp32/c256"``, ``"bf16"``. Never a raw voxel count.
    ``temporal_attention``: :func:`attention_class` along time."""
    x = args[0]
    if op == "temporal_attention":
        return attention_class(*args[:3], axis="time")
    dtype = dtype_name(x.dtype)
    if op in _CONV_OPS or op == "conv_transpose_up2x":
        w = args[1]
        cout, cin = (w.shape[1], w.shape[0]) if op == "conv_transpose_up2x" else w.shape[:2]
        kernel = "x".join(str(k) for k in w.shape[2:])
        return f"{dtype}/cin{_bucket(cin)}/cout{_bucket(cout)}/k{kernel}"
    if op in _CHANNEL_OPS:
        return f"{dtype}/c{_bucket(x.shape[1])}"
    return dtype


def attention_class(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, axis: str) -> str:
    """The class of an attention call: dtype, the axis it attends over ("space" or "time", which
    the tensors do not show: the caller says it), and "/grad" when autograd records the call
    (the Triton kernel has no backward pass), e.g. ``"bf16/time"``, ``"fp32/space/grad"``."""
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return f"{dtype_name(q.dtype)}/{axis}" + ("/grad" if grad else "")


def _frozen(table) -> Mapping:
    return MappingProxyType(
        {
            arch: MappingProxyType({op: MappingProxyType(dict(c)) for op, c in ops.items()})
            for arch, ops in table.items()
        }
    )


# Where the entries come from:
# - cpu: measured on a shared 2-core CPU machine (docs/engine.md, "auto on CPU"):
#   decodes of CDT-small and CDT-base at 9x64x64 took 20-35% less CPU time and less median wall
#   time with the C++ extension's ops (Blocks as torch's conv then the extension's norm) than
#   with torch's, the engine then working channels-last (CDT-base's best single call: a tie).
#   So the extension where it has the op, torch elsewhere.
# - sm_80 / sm_90: no GPU has timed these kernels. The order is a fixed preference, compiled
#   code first (the CUDA extension, then Triton, then torch), with two
#   facts from the code: the Triton Block op fuses the norm into the conv's epilogue only up to
#   128 output channels (FUSED_NORM_MAX_CHANNELS; wider it runs the conv and a norm pass, which
#   "composed" does with the table's own parts), and the CUDA extension has no conv or fused
#   Block. Replace these with a measured table (backend="tune", then save) once a GPU has run.
#   The CUDA extension is ranked per op, only for CUDA_GRAPH_SAFE_OPS, never through "*".
# - float64 calls, on every arch: the extension and the Triton kernels store fp16, bf16 and fp32
#   only (they raise on float64, whose products they would compute in fp32), so torch serves
#   them (SDPA the attention: flash-attn and xformers have no float64 kernels either).

# The CUDA extension's ops whose whole call (the cpp_ops wrapper and its kernels) is safe inside a
# captured CUDA graph -- no host sync or host read of a device value (the DDIM coefficients are
# read by the kernel), no allocation but torch's allocator (the attention's scratch), launches on
# torch's current stream -- and deterministic: no atomics (the attention sums its per-split
# partial contexts in a fixed order), so the same inputs give the same bits in every run and
# process. Audited from csrc/cuda and cdt_fast/cpp_ops.py; that is every op the extension has.
CUDA_GRAPH_SAFE_OPS = (
    "causal_conv3d_history",
    "channel_norm",
    "linear_attention",
    "time_downsample",
    "time_upsample",
    "ddim_update",
    "to_uint8_frames",
    "linear_attention_block",
)
FLOAT64 = "float64*"


def _float64_first(table):
    """``table`` (op -> class pattern -> order) with float64 classes sent to torch (SDPA for the
    attention), ahead of every other pattern of each op."""
    return {
        op: {FLOAT64: ("sdpa",) if op == "temporal_attention" else ("torch",), **classes}
        for op, classes in table.items()
    }


_GPU = {
    "*": {"*": ("triton", "torch")},
    **{
        op: {"*": ("cuda", "triton", "torch")}
        for op in CUDA_GRAPH_SAFE_OPS
        if op != "linear_attention_block"  # below: it composes its parts when neither kernel runs
    },
    "causal_conv3d_norm": {
        "*/cout16/*": ("triton", "composed"),
        "*/cout32/*": ("triton", "composed"),
        "*/cout64/*": ("triton", "composed"),
        "*/cout128/*": ("triton", "composed"),
        "*": ("composed",),
    },
    "linear_attention_block": {"*": ("cuda", "triton", "composed")},
    # flash-attn computes in fp16/bf16 only; the Triton kernel, built for many short sequences,
    # serves the time axis and has no backward pass; SDPA serves every call.
    "temporal_attention": {
        "fp16/time": ("flash", "xformers", "triton", "sdpa"),
        "bf16/time": ("flash", "xformers", "triton", "sdpa"),
        "fp16/*": ("flash", "xformers", "sdpa"),
        "bf16/*": ("flash", "xformers", "sdpa"),
        "*/time": ("xformers", "triton", "sdpa"),
        "*": ("xformers", "sdpa"),
    },
}
DECISIONS: Mapping[str, Mapping[str, Mapping[str, Tuple[str, ...]]]] = _frozen(
    {
        "cpu": _float64_first(
            {
                "*": {"*": ("cpp", "composed", "torch")},
                # torch's fused kernel; the Triton interpreter is for tests, not for speed
                "temporal_attention": {"*": ("sdpa",)},
            }
        ),
        "sm_80": _float64_first(_GPU),
        "sm_90": _float64_first(_GPU),
    }
)
