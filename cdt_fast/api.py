"""Entry points: build a CDT from a preset, a config or a checkpoint file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from . import hub
from .checkpoint import load_into, read_state_dict, save_state_dict
from .config import CONFIG_METADATA_KEY, CDTConfig, config_from_file
from .reference import CDT

__all__ = ["load", "load_cdt", "save", "config_from_file"]

PathLike = Union[str, os.PathLike]

# Upstream `load_cdt*` keyword arguments -> CDTConfig fields.
_UPSTREAM_KWARGS = {
    "enc_frames": "encode_frames",
    "dec_frames": "decode_frames",
    "diffusion_step": "num_timesteps",
    "sampling_step": "sample_steps",
}


def _resolve_config(preset_or_config) -> tuple:
    if isinstance(preset_or_config, CDTConfig):
        return preset_or_config, None
    if isinstance(preset_or_config, str) and preset_or_config in ("base", "small"):
        return CDTConfig.preset(preset_or_config), None
    if isinstance(preset_or_config, (str, os.PathLike)):
        path = Path(preset_or_config)
        if not path.is_file():
            if isinstance(preset_or_config, str) and not path.suffix and len(path.parts) == 1:
                raise ValueError(
                    f"preset_or_config must be 'base', 'small', a CDTConfig, or a .safetensors "
                    f"file saved by cdt_fast.save; got {preset_or_config!r}, neither a preset nor "
                    "a file"
                )
            raise FileNotFoundError(f"preset_or_config: no such file: {path}")
        config = config_from_file(path)
        if config is None:
            raise ValueError(
                f"{path} holds no CDT config (only a file saved by cdt_fast.save does): pass the "
                f"architecture with it, cdt_fast.load('base' or 'small', ckpt={str(path)!r})"
            )
        return config, preset_or_config
    raise TypeError(
        f"preset_or_config must be 'base', 'small', a CDTConfig or a path, "
        f"got {type(preset_or_config).__name__}"
    )


def load(
    preset_or_config: Union[str, CDTConfig, PathLike] = "base",
    ckpt: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    strict: bool = True,
    weights_only: bool = True,
    eval: bool = True,
    *,
    repo_id: Optional[str] = None,
    filename: Optional[str] = None,
    revision: Optional[str] = None,
) -> CDT:
    """Build a CDT and load weights.

    preset_or_config: "base", "small", a :class:`CDTConfig`, or a ``.safetensors`` file written by
    :func:`save` (config and weights in one file). ckpt: upstream ``.ckpt``/``.pt`` (nesting under
    ``state_dict`` / ``module`` is unwrapped) or ``.safetensors``. Without ``ckpt``, the released
    weights of the preset (a CDTConfig counts as the preset it is named after, as
    :meth:`CDTConfig.preset` names it) are fetched from the Hugging Face Hub into its cache
    (:mod:`cdt_fast.hub`; ``repo_id``, ``filename``, ``revision`` override where from); randomly
    initialised weights are ``cdt_fast.CDT(config)``. strict: refuse any missing, unexpected or
    mis-shaped key (nothing is loaded).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    config, own_file = _resolve_config(preset_or_config)
    ckpt = ckpt if ckpt is not None else own_file
    location = {"repo_id": repo_id, "filename": filename, "revision": revision}
    if ckpt is None:
        ckpt = hub.fetch(_release(config, location))
    elif any(v is not None for v in location.values()):
        given = ", ".join(k for k, v in location.items() if v is not None)
        raise ValueError(
            f"{given} name a Hub download; they cannot go with a local checkpoint ({ckpt})"
        )
    model = CDT(config)
    state = read_state_dict(ckpt, weights_only=weights_only)
    load_into(model, state, strict=strict, source=str(ckpt))
    model = model.to(device=device, dtype=dtype)
    return model.eval() if eval else model


def _release(config: CDTConfig, location: Dict[str, Optional[str]]) -> hub.Release:
    if config.name not in hub.RELEASED_PRESETS:
        raise ValueError(
            f"no checkpoint given, and a CDTConfig named {config.name!r} has no released weights "
            f"(those are {', '.join(hub.RELEASED_PRESETS)}): pass ckpt=PATH, or build "
            "cdt_fast.CDT(config) for randomly initialised weights"
        )
    return hub.Release(config.name, **location)


def save(model: CDT, path: PathLike) -> Path:
    """Write the model's upstream-format state dict; ``.safetensors`` also stores its config so
    that ``cdt_fast.load(path)`` rebuilds it. The write is atomic."""
    metadata = {CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}
    return save_state_dict(model.state_dict(), path, metadata=metadata)


def load_cdt(
    version: str = "base",
    dtype: torch.dtype = torch.float16,
    ckpt: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    sampling_step: int = 1,
    eval: bool = True,
    strict: bool = True,
    weights_only: bool = True,
    accelerate: bool = False,
    *,
    repo_id: Optional[str] = None,
    filename: Optional[str] = None,
    revision: Optional[str] = None,
    **kwargs: Any,
) -> CDT:
    """Upstream's ``load_cdt`` entry point: ``from cdt_fast import load_cdt`` replaces
    ``from model.cdt import load_cdt``.

    Without ``ckpt`` it reads ``./pretrained/cdt_{version}.ckpt`` as upstream does, and when that
    file is absent (or ``repo_id``/``filename``/``revision`` are given) the released weights from
    the Hugging Face Hub, as :func:`load`. Upstream keywords (``enc_frames``, ``dec_frames``,
    ``sample_gamma``, ``latent_dim``, ``diffusion_step``, ``condition_times``) and any CDTConfig
    field are accepted. ``accelerate=True`` returns ``cdt_fast.accelerate(model)`` (the engine,
    same API).
    """
    if version not in hub.RELEASED_PRESETS:
        raise ValueError(f"version must be 'base' or 'small', got {version!r}")
    overrides: Dict[str, Any] = {"sample_steps": sampling_step}
    for key, value in kwargs.items():
        overrides[_UPSTREAM_KWARGS.get(key, key)] = value
    try:
        config = CDTConfig.preset(version, **overrides)
    except TypeError as err:
        raise TypeError(f"load_cdt got an unknown keyword ({err})") from None
    location = {"repo_id": repo_id, "filename": filename, "revision": revision}
    if ckpt is None and all(v is None for v in location.values()):
        upstream_path = Path("pretrained") / f"cdt_{version}.ckpt"
        ckpt = upstream_path if upstream_path.is_file() else None
    model = load(
        config,
        ckpt,
        device=device,
        dtype=dtype,
        strict=strict,
        weights_only=weights_only,
        eval=eval,
        **location,
    )
    if accelerate:
        from .engine import accelerate as accelerate_model

        return accelerate_model(model)
    return model
