"""Shared plumbing of the Triton launchers: where they may run, how they address tensors, and
layouts (they read any strides but write channels-last results when the input is channels-last,
so a chain of kernels never converts layouts).

The per-voxel kernels (channel norm, linear attention) address a ``[B, C, T, H, W]`` tensor

as ``B * T*H*W`` rows of ``C`` channels, given by three strides (sample, voxel, channel).

Channels-last (``torch.channels_last_3d``) and contiguous tensors both qualify, as does any layout
whose T, H, W dims collapse into one stride; anything else is copied to channels-last first.
"""

from __future__ import annotations

import contextlib
from types import MappingProxyType
from typing import Sequence, Tuple

import torch
import triton.language as tl

from cdt_fast.availability import triton_interpreted

__all__ = [
    "voxel_rows",
    "MAX_GRID",
    "check_grid",
    "check_launchable",
    "on_device",
    "KERNEL_DTYPES",
    "check_kernel_dtype",
    "check_activation",
    "interpreting",
    "loop_arg",
    "param_vector",
    "empty_like_layout",
    "check_out",
    "cudnn_conv_tf32",
    "exact_fp32",
    "same_data",
]


def _collapsed_voxel_stride(t: torch.Tensor):
    """The stride of the flattened T*H*W index, or None when T, H, W do not collapse."""
    stride = None
    expected = None
    for size, step in zip(reversed(t.shape[2:]), reversed(t.stride()[2:])):
        if size == 1:
            continue
        if expected is not None and step != expected:
            return None
        if stride is None:
            stride = step
        expected = step * size
    return 1 if stride is None else stride


def voxel_rows(t: torch.Tensor) -> Tuple[torch.Tensor, int, int, int]:
    """``(tensor, stride_sample, stride_voxel, stride_channel)``; ``tensor`` is ``t`` itself when
    its layout allows, else a channels-last copy."""
    voxel = _collapsed_voxel_stride(t)
    if voxel is None:
        t = t.contiguous(memory_format=torch.channels_last_3d)
        voxel = _collapsed_voxel_stride(t)
    return t, t.stride(0), voxel, t.stride(1)


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels then run on CPU tensors)."""
    return triton_interpreted()


# CUDA's limits on a launch grid: 2**31 - 1 blocks along x, 65535 along y and z (CUDA C++
# Programming Guide, "Technical Specifications per Compute Capability", every arch since 3.0).
MAX_GRID = (2**31 - 1, 65535, 65535)


def check_grid(grid: Sequence[int], kernel: str) -> Tuple[int, ...]:
    """``grid`` as a tuple, after checking it against :data:`MAX_GRID`: beyond it CUDA refuses the
    launch with an error that names neither the kernel nor the axis (and the interpreter would
    just run it)."""
    grid = tuple(int(g) for g in grid)
    if not 1 <= len(grid) <= 3:
        raise ValueError(f"{kernel}: a grid has 1 to 3 axes, got {grid}")
    for axis, (blocks, limit) in enumerate(zip(grid, MAX_GRID)):
        if blocks > limit:
            raise ValueError(
                f"{kernel}: grid {grid} has {blocks} programs along axis {'xyz'[axis]}, beyond "
                f"CUDA's {limit}; split the call (fewer frames or a smaller frame)"
            )
    return grid


def check_launchable(x: torch.Tensor, op: str, instead: str = "cdt_fast.functional") -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors under the interpreter only: a clear
    error instead of Triton's."""
    if not x.is_cuda and not interpreting():
        raise RuntimeError(
            f"{op}: the Triton kernel needs a CUDA tensor (got device {x.device}); "
            f"on CPU use {instead}, or set TRITON_INTERPRET=1 before importing "
            "triton to run the kernel in the interpreter"
        )


# The context that makes a tensor's device current, per device type (none needed elsewhere).
_DEVICE_GUARDS = MappingProxyType({"cuda": torch.cuda.device})


def on_device(x: torch.Tensor):
    """The context a launch on ``x`` runs in: Triton launches on the *current* CUDA device and
    its current stream (not on its arguments' device), so ``x``'s GPU is made current for the
    launch, as torch's own ops do; a launch on a tensor of another GPU would otherwise run on the
    wrong device with foreign pointers. The guard gets the device's index: ``torch.cuda.device``
    resolves an int in about a sixth of the time it takes to parse a ``torch.device``, and this
    runs on every launch."""
    device = x.device
    guard = _DEVICE_GUARDS.get(device.type)
    return guard(device.index) if guard is not None else contextlib.nullcontext()


# The storage dtypes the kernels read and write (they compute in fp32).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_kernel_dtype(t: torch.Tensor, name: str, op: str) -> None:
    """``t`` is stored in one of :data:`KERNEL_DTYPES`, else a TypeError naming it: a float64
    tensor would be computed in fp32 (less than the caller asked for), and ``tl.dot`` of float64
    operands beside an fp32 accumulator does not compile for a GPU."""
    if t.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: {name} must be float16, bfloat16 or float32, got {t.dtype}")


def check_activation(x, name: str, op: str) -> torch.Tensor:
    """``x`` is a [B, C, T, H, W] tensor in one of :data:`KERNEL_DTYPES`, else a TypeError or
    ValueError naming ``name``: the check every launcher makes of its activations."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, C, T, H, W], got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{name} must have rank 5 [B, C, T, H, W], got shape {tuple(x.shape)}")
    check_kernel_dtype(x, name, op)
    return x


def loop_arg(value: int):
    """A kernel argument that bounds a ``range`` loop. The interpreter hands int arguments to the
    kernel as one-element arrays, which NumPy >= 2.4 refuses to turn into the Python int ``range``
    needs; a ``tl.constexpr`` reaches it as a plain int. Compiled kernels get the int itself (no
    recompilation per value). Kernels must use such arguments after a tensor operand in arithmetic
    (``pid * N``, not ``N * pid``): a constexpr on the left would wrap the tensor."""
    return tl.constexpr(value) if interpreting() else value


def param_vector(p: torch.Tensor, c: int, name: str) -> torch.Tensor:
    """A per-channel parameter ([C] or [1, C, 1, 1, 1]) as a contiguous [C] vector."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of {c} elements, got {type(p).__name__}")
    if p.numel() != c:
        raise ValueError(
            f"{name} must hold C={c} elements ([C] or [1, C, 1, 1, 1]), got shape {tuple(p.shape)}"
        )
    return p.reshape(c).contiguous()


def empty_like_layout(
    x: torch.Tensor, shape: Sequence[int], dtype: torch.dtype = None
) -> torch.Tensor:
    """An uninitialised [B, C, T, H, W] tensor in ``x``'s memory format (channels-last 3D or
    contiguous) and device."""
    fmt = (
        torch.channels_last_3d
        if x.dim() == 5
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        else torch.contiguous_format
    )
    return torch.empty(tuple(shape), dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


def check_out(
    out: torch.Tensor,
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    name: str = "out",
) -> torch.Tensor:
    """Validates a caller-provided output buffer (any strides)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(
            f"{name} must be a {dtype} tensor of shape {list(shape)} on {device}, "
            f"got {out.dtype} {list(out.shape)} on {out.device}"
        )
    return out


def cudnn_conv_tf32() -> bool:
    """Whether torch's cuDNN convolutions may use TF32 for fp32 tensors (what the reference conv
    does on a GPU). torch >= 2.9 sets this per op (``torch.backends.cudnn.conv.fp32_precision``);
    ``"none"`` there defers to ``torch.backends.cudnn.fp32_precision``, then to
    ``torch.backends.fp32_precision``, and nothing but ``"tf32"`` allows TF32. The legacy
    ``torch.backends.cudnn.allow_tf32`` raises once conv and RNN precisions differ, so it is read
    only on a torch without the per-op flags."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv is None:
        return bool(torch.backends.cudnn.allow_tf32)
    for precision in (conv, torch.backends.cudnn.fp32_precision, torch.backends.fp32_precision):
        if precision != "none":
            return precision == "tf32"
    return False


def exact_fp32(x: torch.Tensor) -> bool:
    """Whether a conv-like kernel on fp32 ``x`` must use IEEE fp32 products: yes unless the launch
    is planned as on a GPU (:func:`~._tiles.emulates_gpu`) where torch lets its own cuDNN convs use
    TF32 (:func:`cudnn_conv_tf32`, on by default), in which case the kernel does as the reference
    does there. Planned for another dtype (``tile_options(dtype=...)``): no."""
    from ._tiles import emulates_gpu, launch_dtype

    return launch_dtype(x) == torch.float32 and not (emulates_gpu(x) and cudnn_conv_tf32())


def same_data(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` start at the same memory: a kernel writing one would change what it
    reads of the other. Meta tensors (shape-only launches, e.g. capturing grids) hold no data."""
    return a.device.type != "meta" and a.data_ptr() == b.data_ptr()
