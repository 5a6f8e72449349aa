"""Latent files: a video's CDT latent in ``.safetensors``, with what is needed to decode it back.

One tensor, ``latent`` [1, latent_dim, 1+k, H8/8, W8/8] fp32: the posterior mode exactly as
``model.encode`` returns it (not multiplied by ``latent_scale``; generation models that want unit
variance multiply by it themselves, as with upstream's ``model.latent_scale``). String metadata:

- ``cdt_fast.format`` = ``"latent"``, ``cdt_fast.format_version`` = ``"1"``
- ``cdt_fast.config``: the model's :class:`~cdt_fast.CDTConfig` (JSON), and
  ``cdt_fast.architecture_hash``: its :meth:`~cdt_fast.CDTConfig.architecture_hash`; decoding with a
  model of another hash is refused.
- ``cdt_fast.latent_scale``
- ``cdt_fast.video`` (JSON): ``fps`` ("num/den"), ``frames``, ``height``, ``width`` (the encoded
  clip before padding), ``source_height``, ``source_width`` (before ``--size``), ``padding``
  (``frames`` added at the end, ``bottom`` rows, ``right`` columns, all by replication), ``source``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .checkpoint import atomic_write
from .config import CONFIG_METADATA_KEY, CDTConfig, safetensors_metadata

__all__ = [
    "LATENT_FORMAT_VERSION",
    "LatentFile",
    "save_latent",
    "read_latent",
    "read_latent_metadata",
    "is_latent_file",
    "check_compatible",
]

PathLike = Union[str, os.PathLike]
LATENT_FORMAT_VERSION = 1
_FORMAT_KEY = "cdt_fast.format"
_VERSION_KEY = "cdt_fast.format_version"
_HASH_KEY = "cdt_fast.architecture_hash"
_SCALE_KEY = "cdt_fast.latent_scale"
_VIDEO_KEY = "cdt_fast.video"
_TENSOR = "latent"


@dataclass
class LatentFile:
    """A latent file's contents. ``latent`` is None when only the metadata was read."""

    path: str
    config: CDTConfig
    architecture_hash: str
    latent_scale: float
    video: Dict[str, Any]
    shape: tuple
    latent: Optional[torch.Tensor] = None

    @property
    def fps(self) -> Fraction:
        return Fraction(self.video["fps"])


def save_latent(
    path: PathLike, latent: torch.Tensor, config: CDTConfig, video: Dict[str, Any]
) -> Path:
    """Write ``latent`` and its metadata atomically (see the module docstring)."""
    from safetensors.torch import save_file

    if latent.dim() != 5 or latent.shape[0] != 1 or latent.shape[1] != config.latent_dim:
        raise ValueError(
            f"latent must be [1, {config.latent_dim}, T, h, w], got {list(latent.shape)}"
        )
    video = dict(video)
    video["fps"] = str(Fraction(video["fps"]))
    metadata = {
        _FORMAT_KEY: "latent",
        _VERSION_KEY: str(LATENT_FORMAT_VERSION),
        CONFIG_METADATA_KEY: json.dumps(config.to_dict()),
        _HASH_KEY: config.architecture_hash(),
        _SCALE_KEY: repr(float(config.latent_scale)),
        _VIDEO_KEY: json.dumps(video),
    }
    tensors = {_TENSOR: latent.detach().float().contiguous().cpu()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def is_latent_file(path: PathLike) -> bool:
    """Whether ``path`` is a ``.safetensors`` file written by :func:`save_latent`."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return safetensors_metadata(path).get(_FORMAT_KEY) == "latent"
    except ValueError:
        return False


def read_latent_metadata(path: PathLike) -> LatentFile:
    """The metadata and latent shape of a latent file, without reading the tensor."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latent file not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path} is not a latent file (expected .safetensors written by cdt-fast encode)"
        )
    meta = safetensors_metadata(path)
    if meta.get(_FORMAT_KEY) != "latent":
        raise ValueError(
            f"{path} is not a latent file (no cdt_fast latent metadata; is it a model checkpoint?)"
        )
    version = meta.get(_VERSION_KEY, "?")
    if version != str(LATENT_FORMAT_VERSION):
        raise ValueError(
            f"{path} has latent format version {version}; this cdt_fast reads "
            f"version {LATENT_FORMAT_VERSION}"
        )
    try:
        config = CDTConfig.from_dict(json.loads(meta[CONFIG_METADATA_KEY]))
        video = json.loads(meta[_VIDEO_KEY])
        arch_hash, scale = meta[_HASH_KEY], float(meta[_SCALE_KEY])
        with safe_open(str(path), framework="pt") as f:
            if _TENSOR not in f.keys():
                raise KeyError(_TENSOR)
            shape = tuple(f.get_slice(_TENSOR).get_shape())
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: damaged latent metadata ({err})") from None
    _check_video_metadata(path, config, video, shape)
    return LatentFile(str(path), config, arch_hash, scale, video, shape)


def _check_video_metadata(path: Path, config: CDTConfig, video: Any, shape: tuple) -> None:
    """The stored clip description must be the one the tensor's shape implies: ``frames`` padded
    to 1+4k gives the latent's length, ``height``/``width`` padded to multiples of 8 its size."""

    def bad(what: str) -> ValueError:
        return ValueError(
            f"{path}: latent metadata does not match the latent {list(shape)} ({what}); "
            "the file was edited or damaged"
        )

    if len(shape) != 5 or shape[0] != 1 or shape[1] != config.latent_dim:
        raise bad(f"expected [1, {config.latent_dim}, T, h, w] for model {config.name!r}")
    if not isinstance(video, dict):
        raise bad("'cdt_fast.video' is not an object")
    values = {}
    for key in ("frames", "height", "width"):
        value = video.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"{key}={value!r} is not a positive integer")
        values[key] = value
    try:
        fps = Fraction(video.get("fps"))
    except (TypeError, ValueError, ZeroDivisionError):
        raise bad(f"fps={video.get('fps')!r} is not a frame rate") from None
    if fps <= 0:
        raise bad(f"fps={video.get('fps')!r} is not positive")
    tf, sf = config.time_factor, config.space_factor
    frames, height, width = values["frames"], values["height"], values["width"]
    if 1 + -(-(frames - 1) // tf) != shape[2]:
        raise bad(f"frames={frames} encodes to {1 + -(-(frames - 1) // tf)} latent frames")
    if -(-height // sf) != shape[3]:
        raise bad(f"height={height} encodes to {-(-height // sf)} latent rows")
    if -(-width // sf) != shape[4]:
        raise bad(f"width={width} encodes to {-(-width // sf)} latent columns")
    padding = video.get("padding")
    if padding is not None:
        expected = {
            "frames": 1 + (shape[2] - 1) * tf - frames,
            "bottom": shape[3] * sf - height,
            "right": shape[4] * sf - width,
        }
        if not isinstance(padding, dict) or any(padding.get(k) != v for k, v in expected.items()):
            raise bad(f"padding={padding!r}, expected {expected}")


def read_latent(path: PathLike) -> LatentFile:
    """A latent file's metadata and its ``latent`` tensor."""
    from safetensors.torch import load_file

    info = read_latent_metadata(path)
    info.latent = load_file(str(path))[_TENSOR]
    return info


def check_compatible(info: LatentFile, config: CDTConfig) -> None:
    """Refuse to decode ``info`` with a model of another architecture, naming both."""
    own = config.architecture_hash()
    if info.architecture_hash != own:
        raise ValueError(
            f"{info.path} was encoded by model config {info.config.name!r} (architecture hash "
            f"{info.architecture_hash}), but the model is {config.name!r} (hash {own}): its "
            "latent space differs; decode with the model that encoded it"
        )
