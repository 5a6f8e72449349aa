"""Turn what the user hands to :func:`cdt_fast.accelerate` into a reference :class:`CDT`.

Accepted: a :class:`CDT`; any module whose ``state_dict()`` is in upstream's format (keys
``model.context_fn.*`` / ``model.denoise_fn.*``, e.g. upstream's ``ConditionedDiffusionTokenizer``);
or such a state dict itself. Without an explicit ``config`` the architecture is inferred from the
state dict's shapes (widths, channel multipliers, latent and context channels, space/time
downsampling, conditioned levels). The weights cannot tell ``new_upsample`` apart when all
upsampling convs are square, so it follows the released presets' pairing with ``space_down``
(base: (0,1,1,1) -> True, small: (1,1,1,0) -> False); for any other layout pass ``config``.
Inference settings (``num_timesteps``, ``sample_gamma``, ``sample_steps``, ``latent_scale``) are not
in the weights: they take the presets' values unless given in ``config`` or ``overrides``.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from ..checkpoint import load_into
from ..config import CDTConfig
from ..reference import CDT

__all__ = ["as_cdt", "infer_config"]

_CTX = "model.context_fn."
_UNET = "model.denoise_fn."


def _levels(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    n = 0
    while f"{prefix}{n}.0.block1.block.0.weight" in sd:
        n += 1
    return n


def infer_config(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> CDTConfig:
    """A :class:`CDTConfig` whose networks have exactly the state dict's keys and shapes."""
    sd = state_dict
    if f"{_CTX}quant_conv.weight" not in sd or f"{_UNET}final_conv.1.weight" not in sd:
        raise ValueError(
            "cannot infer a CDT config: the state dict is not in upstream's format "
            f"(no '{_CTX}quant_conv.weight' / '{_UNET}final_conv.1.weight' keys)"
        )
    enc_levels = _levels(sd, f"{_CTX}enc.")
    unet_levels = _levels(sd, f"{_UNET}downs.")
    enc_out = [sd[f"{_CTX}enc.{i}.0.block1.block.0.weight"].shape[0] for i in range(enc_levels)]
    unet_out = [
        sd[f"{_UNET}downs.{i}.0.block1.block.0.weight"].shape[0] for i in range(unet_levels)
    ]
    context_dim, unet_dim = enc_out[0], unet_out[0]
    space_down = tuple(int(f"{_CTX}enc.{i}.1.conv.weight" in sd) for i in range(enc_levels))
    time_down = tuple(int(f"{_CTX}enc.{i}.2.conv.weight" in sd) for i in range(enc_levels))
    channels = sd[f"{_CTX}enc.0.0.block1.block.0.weight"].shape[1]
    # The U-Net's first level reads the video plus the finest context feature (if conditioned).
    out_channels = sd[f"{_UNET}downs.0.0.block1.block.0.weight"].shape[1] - channels
    unet_in = [channels] + unet_out
    context_dims = [out_channels] + enc_out
    condition_times = sum(
        1
        for i in range(min(unet_levels - 1, enc_levels + 1))
        if sd[f"{_UNET}downs.{i}.0.block1.block.0.weight"].shape[1] == unet_in[i] + context_dims[i]
    )
    if out_channels <= 0 or condition_times == 0:
        raise ValueError("cannot infer out_channels from an unconditioned U-Net; pass config=")
    values: Dict[str, Any] = dict(
        context_dim=context_dim,
        context_dim_mults=tuple(c // context_dim for c in enc_out),
        unet_dim=unet_dim,
        unet_dim_mults=tuple(c // unet_dim for c in unet_out),
        latent_dim=sd[f"{_CTX}quant_conv.weight"].shape[0] // 2,
        out_channels=out_channels,
        space_down=space_down,
        time_down=time_down,
        condition_times=condition_times,
        channels=channels,
    )
    presets = {CDTConfig.base().space_down: "base", CDTConfig.small().space_down: "small"}
    name = presets.get(space_down)
    if name is None and "new_upsample" not in overrides:
        raise ValueError(f"cannot infer new_upsample for space_down={space_down}; pass config=")
    values.update(overrides)
    config = CDTConfig.preset(name, **values) if name else CDTConfig(**values)
    _check_shapes(config, sd)
    return config


def _check_shapes(config: CDTConfig, sd: Mapping[str, torch.Tensor]) -> None:
    with torch.device("meta"):
        own = CDT(config).state_dict()
    bad = sorted(
        k
        for k in set(own) | set(sd)
        if k not in own or k not in sd or tuple(own[k].shape) != tuple(sd[k].shape)
    )
    if bad:
        raise ValueError(
            f"inferred {config} does not fit the state dict ({len(bad)} keys differ, "
            f"e.g. {bad[:3]}); pass config= explicitly"
        )


def _state_dict_of(model) -> Optional[Mapping[str, torch.Tensor]]:
    if isinstance(model, Mapping):
        return model
    if isinstance(model, nn.Module):
        return model.state_dict()
    return None


def as_cdt(model, config: Optional[CDTConfig] = None) -> CDT:
    """A reference CDT with ``model``'s weights, never ``model`` itself (the engine converts its
    copy to its dtype/device/layout; the caller's model stays as it was)."""
    model = getattr(model, "reference", model)  # an AcceleratedCDT: its reference CDT
    if isinstance(model, CDT):
        if config is not None and config != model.config:
            raise ValueError(
                "config differs from the given CDT's own config; pass one or the other"
            )
        return copy.deepcopy(model)
    sd = _state_dict_of(model)
    if sd is None:
        raise TypeError(
            "model must be a cdt_fast.CDT, a module with an upstream-format state "
            f"dict, or such a state dict; got {type(model).__name__}"
        )
    if config is not None and not isinstance(config, CDTConfig):
        raise TypeError(f"config must be a CDTConfig or None, got {type(config).__name__}")
    config = config if config is not None else infer_config(sd)
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    first = next(iter(tensors.values()))
    cdt = CDT(config).to(
        device=first.device, dtype=first.dtype if first.is_floating_point() else None
    )
    load_into(cdt, tensors, strict=True, source=type(model).__name__)
    return cdt.eval()
