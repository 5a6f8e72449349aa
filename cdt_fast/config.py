"""CDTConfig: every number that shapes a CDT network, the two released presets, and the key under
which ``.safetensors`` files (models, latents) store a config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Optional, Tuple, Union

__all__ = [
    "CONFIG_METADATA_KEY",
    "CDTConfig",
    "check_positive_ints",
    "config_from_file",
    "dataclass_from_dict",
    "safetensors_metadata",
]

# The ``.safetensors`` metadata key holding a CDTConfig as JSON (cdt_fast.save, latent files).
CONFIG_METADATA_KEY = "cdt_fast.config"


def dataclass_from_dict(cls, values: Dict[str, Any]):
    """``cls(**values)`` for a dataclass, naming unknown fields instead of a bare TypeError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return cls(**values)


def check_positive_ints(config, names) -> None:
    """A ValueError naming ``Class.field`` for the first of ``names`` that is not an int >= 1
    (bools are refused: they are ints to Python, never a size to us)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{type(config).__name__}.{name} must be a positive int, got {value!r}"
            )


# Upstream `load_cdt_base` / `load_cdt_small` arguments (everything else is a CDTConfig default).
_PRESETS = MappingProxyType(
    {
        "base": MappingProxyType(
            dict(
                context_dim=128,
                unet_dim=64,
                latent_dim=16,
                out_channels=16,
                space_down=(0, 1, 1, 1),
                time_down=(0, 0, 1, 1),
                new_upsample=True,
            )
        ),
        "small": MappingProxyType(
            dict(
                context_dim=64,
                unet_dim=64,
                latent_dim=16,
                out_channels=3,
                space_down=(1, 1, 1, 0),
                time_down=(0, 0, 1, 1),
                new_upsample=False,
            )
        ),
    }
)


def _as_tuple(value, name: str) -> Tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}") from None
    return out


@dataclass(frozen=True)
class CDTConfig:
    """Architecture and inference defaults of a Conditioned Diffusion-based video Tokenizer.

    Field names follow upstream's constructor arguments (``ConditionedDiffusionTokenizer``):
    ``context_dim`` is the width of the encoder / context decoder ("Compressor"), ``unet_dim`` the
    width of the denoising U-Net, ``out_channels`` the channels of the full-resolution context
    feature, ``latent_dim`` the latent channels.
    """

    name: str = "custom"
    context_dim: int = 64
    context_dim_mults: Tuple[int, ...] = (1, 2, 3, 4)
    unet_dim: int = 64
    unet_dim_mults: Tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    latent_dim: int = 16
    out_channels: int = 3
    space_down: Tuple[int, ...] = (1, 1, 1, 1)
    time_down: Tuple[int, ...] = (0, 0, 1, 1)
    new_upsample: bool = False
    condition_times: int = 4
    num_timesteps: int = 8192
    sample_gamma: float = 0.8
    sample_steps: int = 1
    latent_scale: float = 1.3
    # Upstream's chunk defaults, before the resolution scaling in `encode_chunk_frames` /
    # `decode_chunk_frames` (upstream `enc_frames` / `dec_frames`).
    encode_frames: int = 4
    decode_frames: int = 1
    channels: int = field(default=3, repr=False)

    def __post_init__(self):
        for name in ("context_dim_mults", "unet_dim_mults", "space_down", "time_down"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name), name))
        positive = (
            "context_dim",
            "unet_dim",
            "latent_dim",
            "out_channels",
            "num_timesteps",
            "sample_steps",
            "encode_frames",
            "decode_frames",
            "channels",
        )
        check_positive_ints(self, positive)
        levels = len(self.context_dim_mults)
        for name in ("space_down", "time_down"):
            flags = getattr(self, name)
            if len(flags) != levels or any(f not in (0, 1) for f in flags):
                raise ValueError(
                    f"CDTConfig.{name} must hold {levels} flags of 0/1 (one per context level), "
                    f"got {flags!r}"
                )
        if sum(self.space_down) != 3 or sum(self.time_down) != 2:
            raise ValueError(
                "CDT compresses 8x in space and 4x in time: space_down must have three 1s and "
                f"time_down two, got space_down={self.space_down}, time_down={self.time_down}"
            )
        if len(self.unet_dim_mults) < levels + 1:
            raise ValueError(
                f"CDTConfig.unet_dim_mults needs at least {levels + 1} levels, got {self.unet_dim_mults}"
            )
        if not 0 <= self.condition_times <= levels:
            raise ValueError(
                f"CDTConfig.condition_times must be in [0, {levels}], got {self.condition_times}"
            )
        if not self.sample_gamma > 0:
            raise ValueError(f"CDTConfig.sample_gamma must be > 0, got {self.sample_gamma}")

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def base(cls, **overrides: Any) -> "CDTConfig":
        """CDT-base, as upstream ``load_cdt_base``."""
        return cls.preset("base", **overrides)

    @classmethod
    def small(cls, **overrides: Any) -> "CDTConfig":
        """CDT-small, as upstream ``load_cdt_small``."""
        return cls.preset("small", **overrides)

    @classmethod
    def preset(cls, preset: str, /, **overrides: Any) -> "CDTConfig":
        """A released preset with ``overrides`` (which may rename it with ``name=``)."""
        if preset not in _PRESETS:
            raise ValueError(f"preset must be one of {sorted(_PRESETS)}, got {preset!r}")
        return cls(**{"name": preset, **_PRESETS[preset], **overrides})

    # -- derived ---------------------------------------------------------------------------
    @property
    def pad_mode(self) -> str:
        """Padding of every causal conv: upstream sets ``PAD_MODE`` from ``new_upsample``."""
        return "zeros" if self.new_upsample else "replicate"

    @property
    def space_factor(self) -> int:
        return 2 ** sum(self.space_down)

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.time_down)

    def encode_chunk_frames(self, height: int, width: int) -> int:
        """Upstream's encode chunk length (video frames) for a resolution; a multiple of 4."""
        ratio = (1024 / height) * (1024 / width)
        return max(int(self.encode_frames * ratio / 4) * 4, 4)

    def decode_chunk_frames(self, latent_height: int, latent_width: int) -> int:
        """Upstream's decode chunk length (latent frames) for a latent resolution."""
        side = 1024 / self.space_factor
        ratio = (side / latent_height) * (side / latent_width)
        return max(int(self.decode_frames * ratio), 1)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "CDTConfig":
        return dataclass_from_dict(cls, values)

    def architecture_hash(self) -> str:
        """A short hash of the fields that decide the weights and the latent space."""
        arch = {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("name", "sample_steps", "encode_frames", "decode_frames")
        }
        return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def safetensors_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """The metadata of the ``.safetensors`` file at ``path`` (models, latents), read from its
    header alone; ValueError for a file whose header does not read (cut or corrupt)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors' own error type: a cut or corrupt header
        first = str(err).strip().splitlines()
        raise ValueError(
            f"{path} is not a readable .safetensors file "
            f"({first[0] if first else type(err).__name__}); "
            "an interrupted download or copy leaves such a file: fetch it again"
        ) from None


def config_from_file(path: Union[str, os.PathLike]) -> Optional[CDTConfig]:
    """The CDTConfig stored in a ``.safetensors`` file written by :func:`cdt_fast.save`, or None
    (no such file, another suffix, no config in it). ValueError for an unreadable file."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    meta = safetensors_metadata(path)
    if CONFIG_METADATA_KEY not in meta:
        return None
    return CDTConfig.from_dict(json.loads(meta[CONFIG_METADATA_KEY]))
