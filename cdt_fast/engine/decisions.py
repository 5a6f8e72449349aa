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

__all__ = ["ARCH_FAMILIES", "CUDA_GRAPH_SAFE_OPS", "DECISIONS", "arch_family", "shape_class"]

ARCH_FAMILIES = ("cpu", "sm_80", "sm_90")

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
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
    ``"bf16/cin64/cout128/k3x3x3"``, ``"fp32/c256"``, ``"bf16"``. Never a raw voxel count."""
    x = args[0]
    dtype = _DTYPES.get(x.dtype, str(x.dtype).replace("torch.", ""))
    if op in _CONV_OPS or op == "conv_transpose_up2x":
        w = args[1]
        cout, cin = (w.shape[1], w.shape[0]) if op == "conv_transpose_up2x" else w.shape[:2]
        kernel = "x".join(str(k) for k in w.shape[2:])
        return f"{dtype}/cin{_bucket(cin)}/cout{_bucket(cout)}/k{kernel}"
    if op in _CHANNEL_OPS:
        return f"{dtype}/c{_bucket(x.shape[1])}"
    return dtype


def arch_family(device) -> str:
    """The arch family of ``device``: "cpu", "sm_80" (Ampere/Ada, and older CUDA GPUs) or
    "sm_90" (Hopper and newer)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    if not torch.cuda.is_available():  # a table built for a device this process cannot see
        return "sm_80"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm_90" if major >= 9 else "sm_80"


def _frozen(table) -> Mapping:
    return MappingProxyType(
        {
            arch: MappingProxyType({op: MappingProxyType(dict(c)) for op, c in ops.items()})
            for arch, ops in table.items()
        }
    )


# Where the entries come from:
# - cpu: measured on this project's shared 2-core CPU machine (docs/engine.md, "auto on CPU"):
#   decodes of CDT-small and CDT-base at 9x64x64 took 20-35% less CPU time and less median wall
#   time with the C++ extension's ops (Blocks as torch's conv then the extension's norm) than
#   with torch's, the engine then working channels-last (CDT-base's best single call: a tie).
#   So the extension where it has the op, torch elsewhere.
# - sm_80 / sm_90: no GPU has timed these kernels yet. The order is the one auto used when it did
#   not measure (compiled code first: the CUDA extension, then Triton, then torch), with two
#   facts from the code: the Triton Block op fuses the norm into the conv's epilogue only up to
#   128 output channels (FUSED_NORM_MAX_CHANNELS; wider it runs the conv and a norm pass, which
#   "composed" does with the table's own parts), and the CUDA extension has no conv or fused
#   Block. Replace these with a measured table (backend="tune", then save) once a GPU has run.
#   The CUDA extension is ranked per op, only for CUDA_GRAPH_SAFE_OPS, never through "*".

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
}
DECISIONS: Mapping[str, Mapping[str, Mapping[str, Tuple[str, ...]]]] = _frozen(
    {
        "cpu": {"*": {"*": ("cpp", "composed", "torch")}},
        "sm_80": _GPU,
        "sm_90": _GPU,
    }
)
