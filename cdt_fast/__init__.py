"""cdt_fast: a fast, faithful engine for CDT, the Conditioned Diffusion-based video Tokenizer.

Public API: :class:`CDTConfig`, :class:`CDT` (the reference model), :func:`load`, :func:`load_cdt`
(upstream's entry point), :func:`save`, :func:`accelerate` (the engine), :func:`backends`,
:class:`FeatureCache`.
"""

from .api import load, load_cdt, save
from .availability import backends
from .cache import FeatureCache
from .checkpoint import CheckpointMismatchError
from .config import CDTConfig
from .engine import AcceleratedCDT, accelerate
from .reference import CDT, DiagonalGaussian, randomize_

__version__ = "0.1.0"

__all__ = [
    "AcceleratedCDT",
    "CDT",
    "CDTConfig",
    "CheckpointMismatchError",
    "DiagonalGaussian",
    "FeatureCache",
    "accelerate",
    "backends",
    "load",
    "load_cdt",
    "randomize_",
    "save",
    "__version__",
]
