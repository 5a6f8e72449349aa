"""Per-channel latent statistics over an ``encode-dataset`` folder, and the normalisation the
generator trains in.

:class:`ChannelMoments` accumulates count, mean and sum of squared deviations per channel in float64
(Welford within a tensor, Chan et al.'s pairwise formula between parts), so shards and ranks
computed separately merge into exactly the statistics of one pass over everything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch

from ..checkpoint import atomic_write

__all__ = [
    "ChannelMoments",
    "LatentNormalizer",
    "latent_stats",
    "read_manifest",
    "manifest_latents",
    "MANIFEST",
]

MANIFEST = "manifest.json"
STATS_KEY = "latent_stats"
PathLike = Union[str, os.PathLike]


class ChannelMoments:
    """Running per-channel count / mean / M2 (sum of squared deviations), float64."""

    def __init__(self, channels: int):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.count = 0
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)

    @property
    def channels(self) -> int:
        return self.mean.numel()

    def update(self, x: torch.Tensor, channel_dim: int = 1) -> "ChannelMoments":
        """Add every element of ``x``, channel axis ``channel_dim`` (default 1: [B, C, ...])."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.shape[channel_dim] != self.channels:
            raise ValueError(
                f"x has {x.shape[channel_dim]} channels on axis {channel_dim}, expected "
                f"{self.channels}"
            )
        flat = (
            x.detach().to("cpu", torch.float64).movedim(channel_dim, 0).reshape(self.channels, -1)
        )
        n = flat.shape[1]
        if n == 0:
            return self
        part = ChannelMoments(self.channels)
        part.count = n
        part.mean = flat.mean(1)
        part.m2 = ((flat - part.mean[:, None]) ** 2).sum(1)
        return self.merge(part)

    def merge(self, other: "ChannelMoments") -> "ChannelMoments":
        """Fold ``other`` in (Chan et al.): exact, and in any order up to rounding."""
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels} channels into {self.channels}")
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.clone(), other.m2.clone()
            return self
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.count = total
        return self

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation per channel."""
        if self.count == 0:
            raise ValueError("no data: the statistics of zero elements are undefined")
        return (self.m2 / self.count).sqrt()

    def to_dict(self) -> Dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "m2": self.m2.tolist(),
        }

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ChannelMoments":
        out = cls(len(values["mean"]))
        out.count = int(values["count"])
        out.mean = torch.tensor(values["mean"], dtype=torch.float64)
        out.m2 = torch.tensor(values["m2"], dtype=torch.float64)
        return out


@dataclass(frozen=True)
class LatentNormalizer:
    """``normalize(z) = (z - shift) * scale`` per channel; the generator works on normalised
    latents. From a manifest's statistics (unit variance per channel) or, without them, the
    tokenizer's ``latent_scale`` (shift 0)."""

    shift: Tuple[float, ...]
    scale: Tuple[float, ...]
    source: str  # "latent_stats" or "latent_scale"

    @classmethod
    def from_manifest(cls, manifest: Dict[str, Any], channels: int) -> "LatentNormalizer":
        stats = manifest.get(STATS_KEY)
        if stats is not None:
            if len(stats["mean"]) != channels:
                raise ValueError(
                    f"the manifest's latent_stats have {len(stats['mean'])} channels, the "
                    f"latents {channels}"
                )
            return cls(
                tuple(float(m) for m in stats["mean"]),
                tuple(1.0 / max(float(s), 1e-6) for s in stats["std"]),
                "latent_stats",
            )
        scale = float(manifest.get("latent_scale", 1.0))
        return cls((0.0,) * channels, (scale,) * channels, "latent_scale")

    def _view(self, values, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(
            1, -1, *([1] * (like.dim() - 2))
        )

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self._view(self.shift, z)) * self._view(self.scale, z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self._view(self.scale, z) + self._view(self.shift, z)

    def to_dict(self) -> Dict[str, Any]:
        return {"shift": list(self.shift), "scale": list(self.scale), "source": self.source}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "LatentNormalizer":
        return cls(
            tuple(float(v) for v in values["shift"]),
            tuple(float(v) for v in values["scale"]),
            str(values["source"]),
        )


def read_manifest(folder: PathLike) -> Dict[str, Any]:
    """The ``manifest.json`` of an ``encode-dataset`` folder; a clear error when there is none."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"latents folder not found: {folder}")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: is it an encode-dataset output?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def manifest_latents(folder: PathLike, manifest: Optional[Dict[str, Any]] = None) -> List[Path]:
    """Paths of the finished latents a manifest lists, in its (sorted) order."""
    manifest = read_manifest(folder) if manifest is None else manifest
    paths = [Path(folder) / e["latent"] for e in manifest.get("items", []) if e["status"] == "ok"]
    if not paths:
        raise ValueError(f"{folder}: the manifest lists no finished latents")
    return paths


def moments_of(paths: Iterable[PathLike]) -> Optional[ChannelMoments]:
    """One streaming pass over latent files (one file in memory at a time)."""
    from ..latents import read_latent

    moments = None
    for path in paths:
        z = read_latent(path).latent
        if moments is None:
            moments = ChannelMoments(z.shape[1])
        moments.update(z)
    return moments


def latent_stats(
    folder: PathLike, rank: int = 0, world_size: int = 1, gather=None, write: bool = True
) -> ChannelMoments:
    """Per-channel statistics of every finished latent in ``folder``; with ``write``, stored in
    its manifest under ``latent_stats`` (atomically). Across ranks, rank ``r`` reads files
    ``r::world_size`` and ``gather`` (all-gather of a Python object, e.g.
    :meth:`cdt_fast.train.distributed.Dist.gather_objects`) brings every part to every rank."""
    manifest = read_manifest(folder)
    paths = manifest_latents(folder, manifest)
    part = moments_of(paths[rank::world_size])
    parts = [part] if gather is None else gather(None if part is None else part.to_dict())
    total: Optional[ChannelMoments] = None
    for p in parts:
        if p is None:
            continue
        p = ChannelMoments.from_dict(p) if isinstance(p, dict) else p
        total = p if total is None else total.merge(p)
    if total is None:
        raise ValueError(f"{folder}: no latents to take statistics of")
    if write and rank == 0:
        manifest = dict(manifest)
        manifest[STATS_KEY] = {**total.to_dict(), "files": len(paths)}
        text = json.dumps(manifest, indent=1) + "\n"
        atomic_write(Path(folder) / MANIFEST, lambda tmp: Path(tmp).write_text(text))
    return total
