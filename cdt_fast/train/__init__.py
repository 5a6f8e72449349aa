"""Training CDT: the loss, the resumable DDP trainer, and the bundled demo model.

Import-light: :func:`demo_model_path` needs no torch import beyond the package's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = [
    "demo_model_path",
    "Trainer",
    "RunConfig",
    "TrainConfig",
    "CDTLoss",
    "LossWeights",
    "EMA",
    "lr_factor",
    "resolve_train_config",
]


def demo_model_path(package: Optional[Path] = None) -> Path:
    """The bundled demo checkpoint (``cdt_fast/assets/demo.safetensors``): a narrow CDT trained by
    ``cdt-fast train --config tiny --data photos+synthetic --seed 7`` on photographs moved as
    video and synthetic clips. Load it with ``cdt_fast.load(path)``. ``package``: the folder of
    the package to look in (default: this installation's)."""
    package = Path(__file__).resolve().parent.parent if package is None else Path(package)
    path = package / "assets" / "demo.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"the bundled demo model ({path}) is not installed")
    return path


def __getattr__(name):
    # The trainer pulls in DataLoader and DDP; load it only when asked for.
    if name in ("Trainer", "lr_factor"):
        from . import trainer

        return getattr(trainer, name)
    if name in ("RunConfig", "TrainConfig", "resolve_train_config"):
        from . import config

        return getattr(config, name)
    if name in ("CDTLoss", "LossWeights"):
        from . import losses

        return getattr(losses, name)
    if name == "EMA":
        from .ema import EMA

        return EMA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
