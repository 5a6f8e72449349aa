"""Exponential moving average of a model's weights."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every step, in fp32; buffers are
    copied. ``state_dict()`` has the model's keys, so it saves as an ordinary CDT checkpoint."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow: Dict[str, torch.Tensor] = {
            k: v.detach().float().clone() for k, v in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if name in params and params[name].requires_grad:
                shadow.lerp_(value.detach().float(), 1.0 - self.decay)
            else:
                shadow.copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not fit the model: {sorted(missing)[:5]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)
