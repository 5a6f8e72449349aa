"""Layout helpers shared by the Triton launchers: they read any strides but write channels-last
results when the input is channels-last, so a chain of kernels never converts layouts."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["empty_like_layout", "check_out", "use_autotune", "exact_fp32", "interpreted",
           "check_device"]


def empty_like_layout(x: torch.Tensor, shape: Sequence[int], dtype: torch.dtype = None) -> torch.Tensor:
    """An uninitialised [B, C, T, H, W] tensor in ``x``'s memory format (channels-last 3D or
    contiguous) and device."""
    fmt = (torch.channels_last_3d if x.dim() == 5 and not x.is_contiguous()
           and x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format)
    return torch.empty(tuple(shape), dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


def check_out(out: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, device: torch.device,
              name: str = "out") -> torch.Tensor:
    """Validates a caller-provided output buffer (any strides)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"{name} must be a {dtype} tensor of shape {list(shape)} on {device}, "
                         f"got {out.dtype} {list(out.shape)} on {out.device}")
    return out


def use_autotune(x: torch.Tensor) -> bool:
    """Autotuning times configs on the device; under the Triton interpreter (CPU tensors) the
    launchers run one fixed small config instead."""
    return x.device.type == "cuda"


def exact_fp32(x: torch.Tensor) -> bool:
    """Whether a conv-like kernel on fp32 ``x`` must use IEEE fp32 products: yes unless torch lets
    its own cuDNN convs use TF32 (``torch.backends.cudnn.allow_tf32``, on by default), in which
    case the kernel does as the reference does."""
    return x.dtype == torch.float32 and not (x.device.type == "cuda"
                                             and torch.backends.cudnn.allow_tf32)


def interpreted(kernel) -> bool:
    """Whether ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (then it runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(x: torch.Tensor, kernel, op: str, instead: str) -> None:
    """A clear error instead of Triton's when a compiled kernel is handed a CPU tensor."""
    if x.device.type != "cuda" and not interpreted(kernel):
        raise RuntimeError(
            f"{op}: the Triton kernel needs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, "
            f"set before triton is imported); got a tensor on {x.device}. On CPU use {instead}.")
