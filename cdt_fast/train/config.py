"""The training configs: :class:`RunConfig`, the optimisation and bookkeeping settings every
trainer shares, and :class:`TrainConfig`, which adds the tokenizer to train and its data, with
named presets.

Upstream released no training code and the paper gives no optimiser settings; every default here
is our choice unless its comment names a source.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..config import CDTConfig, check_positive_ints, config_from_file, dataclass_from_dict
from .losses import LossWeights

__all__ = ["RunConfig", "TrainConfig", "PRESETS", "resolve_train_config"]


@dataclass(frozen=True)
class RunConfig:
    """What :class:`~cdt_fast.train.Trainer` reads of a run, whatever the model: AdamW with a
    warmup and cosine schedule, gradient clipping, EMA, seeding, logging and checkpoints. A
    trainer's config extends it with its model and data (:class:`TrainConfig`,
    :class:`cdt_fast.generation.train.GenTrainConfig`), redeclaring a field to change its default."""

    batch_size: int = 1  # per process
    steps: int = 100_000  # length of the LR schedule (a run may stop earlier)
    lr: float = 1e-4  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 1000
    betas: Tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    num_workers: int = 0

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        check_positive_ints(
            self, ("batch_size", "steps", "log_every", "ckpt_every", "keep_checkpoints")
        )
        if not self.lr > 0:
            raise ValueError(f"{name}.lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"{name}.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.num_workers < 0:
            raise ValueError(f"{name}.warmup_steps, grad_clip and num_workers must be >= 0")

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as JSON values (``train_config.json``, checkpoints)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: Dict[str, Any]):
        return dataclass_from_dict(cls, values)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """The tokenizer to train, its clips and its loss, over a :class:`RunConfig`."""

    model: CDTConfig = field(default_factory=CDTConfig.small)
    frames: int = 17  # 1+4k frames per clip (upstream evaluates 17-frame clips)
    size: int = 256  # square crop side
    stride: int = 1  # take every stride-th frame of a video
    loss: LossWeights = field(default_factory=LossWeights)
    t_range: Tuple[float, float] = (0.0, 1.0)  # fractions of the schedule t is drawn from

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", CDTConfig.from_dict(self.model))
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossWeights(**self.loss))
        object.__setattr__(self, "t_range", tuple(float(b) for b in self.t_range))
        check_positive_ints(self, ("frames", "size", "stride"))
        if (self.frames - 1) % 4:
            raise ValueError(f"TrainConfig.frames must be 1+4k, got {self.frames}")
        if self.size % self.model.space_factor:
            raise ValueError(
                f"TrainConfig.size must be a multiple of {self.model.space_factor}, got {self.size}"
            )
        super().__post_init__()

    def replace(self, **changes: Any) -> "TrainConfig":
        loss_changes = {
            k: changes.pop(k) for k in list(changes) if k in ("kl", "lpips", "lpips_frames")
        }
        if loss_changes:
            changes["loss"] = dataclasses.replace(self.loss, **loss_changes)
        return super().replace(**changes)

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        out["model"] = self.model.to_dict()
        out["loss"] = dataclasses.asdict(self.loss)
        out["t_range"] = list(self.t_range)
        return out


def _tiny() -> TrainConfig:
    # The bundled demo model's recipe (with --data photos+synthetic --seed 7): CDT-small's layout
    # at narrow widths with the released models' 16 latent channels, trained on small clips (the
    # networks are convolutional: the model runs at any size). t comes from the last 1 % of the
    # schedule, where the one-step decode starts, because that decode is all the demo does; the
    # paper's uniform t spends most steps on noise levels it never sees. LPIPS is off because it
    # needs VGG16 weights that the package cannot ship.
    model = CDTConfig.small(name="tiny", context_dim=24, unet_dim=8, latent_dim=16)
    return TrainConfig(
        model=model,
        frames=5,
        size=32,
        batch_size=4,
        steps=9000,
        lr=1e-3,
        warmup_steps=100,
        ema_decay=0.999,
        loss=LossWeights(lpips=0.0),
        t_range=(0.99, 1.0),
        log_every=50,
        ckpt_every=500,
    )


PRESETS = {
    "tiny": _tiny,
    "small": lambda: TrainConfig(model=CDTConfig.small()),
    "base": lambda: TrainConfig(model=CDTConfig.base()),
}


def resolve_train_config(spec: str) -> Tuple[TrainConfig, Optional[Path]]:
    """``tiny`` / ``small`` / ``base``; a JSON file (TrainConfig fields, ``model`` as CDTConfig
    fields or ``{"preset": "small", ...overrides}``); or a ``.safetensors`` written by
    ``cdt_fast.save`` to fine-tune (its config, default training settings). Returns the config
    and the weights file to start from (or None)."""
    if spec in PRESETS:
        return PRESETS[spec](), None
    path = Path(spec)
    if path.suffix == ".safetensors":
        model = config_from_file(path)
        if model is None:
            raise ValueError(
                f"config {spec!r}: a .safetensors file without a stored CDTConfig "
                "(write it with cdt_fast.save)"
            )
        return TrainConfig(model=model), path
    if path.suffix == ".json" and path.is_file():
        values = json.loads(path.read_text())
        model = values.get("model", {})
        if isinstance(model, dict) and "preset" in model:
            model = dict(model)
            values["model"] = CDTConfig.preset(model.pop("preset"), **model)
        return TrainConfig.from_dict(values), None
    raise ValueError(
        f"config must be one of {sorted(PRESETS)}, a .json file or a .safetensors "
        f"checkpoint, got {spec!r}"
    )
