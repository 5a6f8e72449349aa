"""Seeded random weights with a sensible scale, for tests and benchmarks without a checkpoint.

The scheme is the one the upstream parity fixtures were made with: channel-LayerNorm gains
``1 + 0.1 N(0, 1)``, every other parameter ``N(0, 1) / sqrt(fan_in)`` with ``fan_in`` the number of
elements of one output slice (1 for vectors). Activations then keep unit scale through the depth
of the network, unlike upstream's zero-initialised convs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["randomize_"]


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if name.endswith(".g") and param.dim() == 5:  # channel LayerNorm gain
            value = 1.0 + 0.1 * noise
        else:
            fan_in = param[0].numel() if param.squeeze().dim() > 1 else 1
            value = noise / math.sqrt(fan_in)
        param.copy_(value.to(param.dtype))
    return model
