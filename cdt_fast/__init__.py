"""cdt_fast: a fast, faithful engine for CDT, the Conditioned Diffusion-based video Tokenizer.

Public API: :class:`CDTConfig`, :class:`CDT` (the reference model), :func:`load`, :func:`load_cdt`
(upstream's entry point), :func:`save`, :func:`accelerate` (the engine), :func:`backends`,
:class:`FeatureCache`, :class:`BackendUnavailableError` (a backend named explicitly cannot serve
an op) and :class:`BackendFallbackWarning` (``backend="auto"`` fell back).
"""

import importlib as _importlib

# Public names and the submodule defining each. They are imported on first use, so that
# ``python -m cdt_fast --help`` and other work without the model answers without importing torch.
_EXPORTS = {
    "load": ".api",
    "load_cdt": ".api",
    "save": ".api",
    "backends": ".availability",
    "BackendFallbackWarning": ".availability",
    "BackendUnavailableError": ".availability",
    "FeatureCache": ".cache",
    "CheckpointMismatchError": ".checkpoint",
    "CDTConfig": ".config",
    "AcceleratedCDT": ".engine",
    "accelerate": ".engine",
    "CDT": ".reference",
    "DiagonalGaussian": ".reference",
    "randomize_": ".reference",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "AcceleratedCDT",
    "BackendFallbackWarning",
    "BackendUnavailableError",
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
