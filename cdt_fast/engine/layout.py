"""How the engine lays out activations for the backends that serve it: the memory format and the
channel multiple of the U-Net's concatenated inputs."""

from __future__ import annotations

import torch

from .dispatch import OpTable

__all__ = ["activation_layout", "channel_alignment"]


def activation_layout(device: torch.device, ops: OpTable) -> torch.memory_format:
    """channels_last_3d (NDHWC) where it pays: on CUDA (cuDNN's fast 3D convs) and whenever a
    kernel backend serves an op (the kernels are written for NDHWC). Pure torch on CPU keeps
    NCDHW: torch's CPU conv3d is NCDHW-native and copies channels-last inputs around every call
    (measured: about 17% of a CPU decode's time goes to those copies)."""
    kernels = ops.candidates or any(c.backend != "torch" for c in ops.table.values())
    if torch.device(device).type == "cuda" or kernels:
        return torch.channels_last_3d
    return torch.contiguous_format


def channel_alignment(device: torch.device, ops: OpTable) -> int:
    """Channel multiple of the U-Net's concatenated inputs (zero channels appended, see
    :func:`~cdt_fast.engine.plan.input_pad`).

    16 wherever the Triton conv may run: Triton specialises an integer argument as "divisible by
    16" or not at all, so only a voxel stride that is a multiple of 16 elements lets it prove
    16-byte alignment and use vector (cp.async) loads; its K tiles are at least 16 channels
    anyway, so this adds no MACs there. 8 on CUDA otherwise: what cuDNN's tensor-core convs want
    (fewer zero channels than 16, since cuDNN computes every channel it is given). 1 on CPU
    torch/C++ engines, which keep the reference's widths and its exact results."""
    triton_conv = any(
        c.backend == "triton"
        for op in ("causal_conv3d", "causal_conv3d_norm")
        for c in [ops.table[op]] + ops.candidates.get(op, [])
    )
    if triton_conv:
        return 16
    return 8 if torch.device(device).type == "cuda" else 1
