"""Device facts the engine and the kernels key their choices by.

:func:`arch_family` is the one place that turns a device into the family whose decisions apply:
the engine's decision table is keyed by it, and the Triton launchers derive the family of tile
tables a launch reads from it (``cdt_fast.kernels._tiles.tile_family``, which adds the
``tile_options`` override and reads sm_80's tables for CPU tensors under the interpreter).
Its rule for a compute capability, :func:`capability_family`, also names the family of a GPU
that is not here (the warm-up compiling for ``sm_90`` on a machine without one).
"""

from __future__ import annotations

import torch

__all__ = ["ARCH_FAMILIES", "arch_family", "capability_family"]

ARCH_FAMILIES = ("cpu", "sm_80", "sm_90")


def arch_family(device) -> str:
    """The arch family of ``device``: "cpu" for anything but CUDA, "sm_90" for compute capability
    9 and newer (Hopper on), "sm_80" below it (Ampere, Ada and older CUDA GPUs), and "sm_80" for
    a CUDA device this process cannot see (a plan or table made for it here)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    if not torch.cuda.is_available():
        return "sm_80"
    return capability_family(torch.cuda.get_device_capability(device)[0])


def capability_family(major: int) -> str:
    """The arch family of a CUDA compute capability's major version (e.g. a target compiled for
    without its GPU): "sm_90" from 9 on, "sm_80" below."""
    return "sm_90" if major >= 9 else "sm_80"
