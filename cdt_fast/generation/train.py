"""Training the generator on an ``encode-dataset`` folder: rectified flow on normalised latents,
on the project's trainer (:class:`cdt_fast.train.Trainer`: its loop, logging, resume, EMA,
warmup + cosine LR, DDP via ``torchrun`` and bf16 autocast on CUDA).

Objective (rectified flow): ``x_t = (1 - t) x_0 + t e`` with ``e ~ N(0, I)``; the model predicts
the velocity ``e - x_0``; ``t`` is drawn logit-normal (more weight on the middle of the path,
where the prediction is hardest). Sampling integrates ``dx/dt = v`` from ``t = 1`` to ``0``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import save_state_dict
from ..config import check_positive_ints
from ..data.base import ClipDataset
from ..train.config import RunConfig
from ..train.distributed import Dist, setup_distributed
from ..train.trainer import Trainer
from .buckets import latent_buckets
from .model import GenConfig, VideoDiT
from .stats import LatentNormalizer, manifest_latents, read_manifest

__all__ = [
    "GenTrainConfig",
    "LatentClips",
    "FlowMatchingLoss",
    "GenTrainer",
    "GEN_PRESETS",
    "GENERATOR_KEY",
    "save_generator",
]

GENERATOR_KEY = "cdt_fast.generator"  # safetensors metadata: config, normaliser, tokenizer


@dataclass(frozen=True)
class GenTrainConfig(RunConfig):
    """The generator to train and its latent clips, over the trainers' shared
    :class:`~cdt_fast.train.config.RunConfig`."""

    batch_size: int = 8  # per process
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    model: GenConfig = field(default_factory=lambda: GenConfig.preset("S"))
    frames: int = 5  # latent frames per training clip (17 video frames)
    size: Optional[Tuple[int, int]] = None  # latent crop (h, w); None: the whole latent
    backend: str = "auto"  # attention backend in training

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", GenConfig.from_dict(self.model))
        if self.size is not None:
            object.__setattr__(self, "size", tuple(int(s) for s in self.size))
            if len(self.size) != 2 or any(s % self.model.patch_size or s < 1 for s in self.size):
                raise ValueError(
                    f"GenTrainConfig.size must be (h, w), multiples of "
                    f"{self.model.patch_size}, got {self.size}"
                )
        check_positive_ints(self, ("frames",))
        super().__post_init__()

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        out["model"] = self.model.to_dict()
        out["size"] = None if self.size is None else list(self.size)
        return out


def _tiny() -> GenTrainConfig:
    # CPU-sized: a 4-block, 64-wide model, large steps and a short EMA so that minutes of training
    # show (these are our choices; DiT/Latte train S/B at lr 1e-4 with EMA 0.9999).
    return GenTrainConfig(
        model=GenConfig.preset("tiny"),
        batch_size=8,
        steps=2000,
        lr=1e-3,
        warmup_steps=50,
        ema_decay=0.99,
        log_every=10,
        ckpt_every=500,
    )


GEN_PRESETS = {
    "tiny": _tiny,
    "S": lambda: GenTrainConfig(model=GenConfig.preset("S")),
    "B": lambda: GenTrainConfig(model=GenConfig.preset("B")),
}


class LatentClips(ClipDataset):
    """The finished latents of an ``encode-dataset`` folder, normalised, as clips of ``frames``
    latent frames (a random window of longer latents; a random ``size`` crop when given), each
    with a class label. Reads one file per clip, so the dataset never sits in memory.

    Latents of several sizes form shape buckets (:mod:`cdt_fast.generation.buckets`: the shapes
    the manifest records, checked against ``patch_size`` before any latent is loaded); the trainer
    draws each batch from one bucket. ``shape_buckets`` lists them, sorted by shape.

    Labels: with ``labels="dirs"``, the index of the top-level folder of the source video among
    the sorted folder names; otherwise every clip has label 0."""

    def __init__(
        self,
        folder: Union[str, Path],
        frames: int,
        size: Optional[Tuple[int, int]] = None,
        labels: Optional[str] = None,
        normalizer: Optional[LatentNormalizer] = None,
        patch_size: int = 2,
    ):
        from ..latents import read_latent_metadata

        self.folder = Path(folder)
        self.manifest = read_manifest(folder)
        self.frames, self.size = frames, size
        self.shape_buckets = latent_buckets(folder, self.manifest, frames, patch_size, size)
        self.paths = manifest_latents(folder, self.manifest)
        first = read_latent_metadata(self.paths[0])
        self.channels = first.shape[1]
        self.tokenizer = first.config
        self.fps = str(first.video["fps"])
        self.normalizer = normalizer or LatentNormalizer.from_manifest(self.manifest, self.channels)
        sources = [e["source"] for e in self.manifest["items"] if e["status"] == "ok"]
        if labels == "dirs":
            tops = [s.split("/")[0] if "/" in s else "" for s in sources]
            self.class_names: List[str] = sorted(set(tops))
            self.labels = [self.class_names.index(top) for top in tops]
        elif labels is None:
            self.class_names, self.labels = [], [0] * len(self.paths)
        else:
            raise ValueError(f"labels must be None or 'dirs', got {labels!r}")

    @property
    def latent_sizes(self) -> List[Tuple[Tuple[int, int], int]]:
        """((h, w), clips) of every bucket, the most clips first (ties in shape order)."""
        sizes = [(b.shape[1:], len(b.indices)) for b in self.shape_buckets]
        return sorted(sizes, key=lambda s: -s[1])

    @property
    def latent_size(self) -> Tuple[int, int]:
        """(h, w) of the largest bucket: the size ``generate`` samples at by default."""
        return self.latent_sizes[0][0]

    def buckets(self) -> List[List[int]]:
        return [list(b.indices) for b in self.shape_buckets]

    def __len__(self) -> int:
        return len(self.paths)

    def clip(self, index: int, generator: Optional[torch.Generator] = None):
        from ..latents import read_latent

        z = self.normalizer.normalize(read_latent(self.paths[index]).latent)[0]
        g = generator if generator is not None else torch.Generator().manual_seed(index)
        t0 = int(torch.randint(0, z.shape[1] - self.frames + 1, (1,), generator=g))
        z = z[:, t0 : t0 + self.frames]
        if self.size is not None:
            h, w = self.size
            if h > z.shape[2] or w > z.shape[3]:
                raise ValueError(f"crop {h}x{w} is larger than the latent {list(z.shape[2:])}")
            y0 = int(torch.randint(0, z.shape[2] - h + 1, (1,), generator=g))
            x0 = int(torch.randint(0, z.shape[3] - w + 1, (1,), generator=g))
            z = z[:, :, y0 : y0 + h, x0 : x0 + w]
        return z.contiguous(), torch.tensor(self.labels[index], dtype=torch.long)


class FlowMatchingLoss(nn.Module):
    """The rectified-flow loss of a :class:`VideoDiT` (see the module docstring), with label
    dropout for classifier-free guidance."""

    def __init__(self, model: VideoDiT, backend: str = "auto"):
        super().__init__()
        self.model, self.backend = model, backend

    def forward(self, x0: torch.Tensor, y: Optional[torch.Tensor], generator: torch.Generator):
        b, dev = x0.shape[0], x0.device
        t = torch.sigmoid(torch.randn(b, generator=generator, device=dev))
        noise = torch.randn(x0.shape, generator=generator, device=dev)
        tb = t.reshape(b, 1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * noise
        cfg = self.model.config
        if cfg.num_classes > 0 and y is not None:
            drop = torch.rand(b, generator=generator, device=dev) < cfg.class_dropout
            y = torch.where(drop, torch.full_like(y, self.model.null_class), y)
        else:
            y = None
        v = self.model(x_t, t, y, backend=self.backend)
        return {"loss": F.mse_loss(v.float(), (noise - x0).float())}


def generator_metadata(
    config: GenConfig, normalizer: LatentNormalizer, tokenizer, extra: Dict[str, Any]
) -> Dict[str, str]:
    info = {
        "config": config.to_dict(),
        "normalizer": normalizer.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "tokenizer_hash": tokenizer.architecture_hash(),
        **extra,
    }
    return {GENERATOR_KEY: json.dumps(info)}


def save_generator(state: Dict[str, torch.Tensor], path: Union[str, Path], metadata) -> Path:
    return save_state_dict(state, path, metadata=metadata)


class GenTrainer(Trainer):
    """:class:`~cdt_fast.train.Trainer`'s loop, resume and logging, for a :class:`VideoDiT` on
    :class:`LatentClips`. The run folder has the trainer's layout; ``model.safetensors`` and
    ``ema.safetensors`` carry the generator's config, the latent normalisation and the tokenizer's
    config in their metadata, so ``cdt-fast generate RUN`` needs nothing else."""

    def __init__(
        self,
        config: GenTrainConfig,
        dataset: LatentClips,
        out_dir: Union[str, Path],
        resume: bool = False,
        device: Optional[str] = None,
        progress: bool = True,
        dist_info: Optional[Dist] = None,
    ):
        if config.model.in_channels != dataset.channels:
            config = config.replace(model=config.model.replace(in_channels=dataset.channels))
        if config.model.num_classes and config.model.num_classes < len(dataset.class_names):
            raise ValueError(
                f"num_classes={config.model.num_classes} but the dataset has "
                f"{len(dataset.class_names)} classes"
            )
        self.config, self.dataset = config, dataset
        self.out = Path(out_dir)
        self.dist = dist_info or setup_distributed(device)
        self.progress = progress and self.dist.is_main
        cfg, dev = config, self.dist.device
        torch.manual_seed(cfg.seed)  # the same fresh initialisation on every rank
        self.model = VideoDiT(cfg.model).float().train().to(dev)
        self.loss_fn = FlowMatchingLoss(self.model, cfg.backend)
        self._start(dataset, resume)

    def metadata(self) -> Dict[str, str]:
        d = self.dataset
        return generator_metadata(
            self.config.model,
            d.normalizer,
            d.tokenizer,
            {
                "frames": self.config.frames,
                "latent_size": list(d.latent_size),
                "latent_sizes": [[h, w, n] for (h, w), n in d.latent_sizes],
                "fps": d.fps,
                "class_names": d.class_names,
                "step": self.step,
            },
        )

    def loss_parts(self, batch) -> Dict[str, torch.Tensor]:
        z, y = (t.to(self.dist.device, non_blocking=True) for t in batch)
        return self.ddp(z, y, self.generator)

    def _write_weights(self, folder: Path) -> None:
        meta = self.metadata()
        save_generator(self.model.state_dict(), folder / "model.safetensors", meta)
        save_generator(self.ema.state_dict(), folder / "ema.safetensors", meta)
