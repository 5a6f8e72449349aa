"""Checkpoints in upstream's formats: read ``.ckpt``/``.pt``/``.pth`` and ``.safetensors``, write
both atomically, and refuse to half-load a state dict that does not fit the model."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = [
    "CheckpointMismatchError",
    "read_state_dict",
    "save_state_dict",
    "load_into",
    "atomic_write",
]

PathLike = Union[str, os.PathLike]
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the model; lists what is missing, unexpected or mis-shaped."""

    def __init__(
        self,
        source: str,
        missing: List[str],
        unexpected: List[str],
        mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]],
    ):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [
            f"state dict from {source} does not fit the model "
            "(nothing was loaded; pass strict=False to load the keys that fit):"
        ]

        def listing(title: str, items: List[str]) -> None:
            if items:
                shown = items[:20] + (
                    [f"... and {len(items) - 20} more"] if len(items) > 20 else []
                )
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown))

        listing("missing keys", missing)
        listing("unexpected keys", unexpected)
        listing(
            "shape mismatches",
            [f"{k} (checkpoint {list(c)} vs model {list(m)})" for k, c, m in mismatched],
        )
        super().__init__("\n".join(lines))


def _unwrap(obj, source: str) -> Dict[str, torch.Tensor]:
    # Upstream nests the weights under "state_dict" (Lightning) and/or "module" (DeepSpeed).
    for key in ("state_dict", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{source} holds no state dict (expected a mapping of names to tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source} holds no tensors")
    if all(k.startswith("module.") for k in tensors):  # saved from a DDP wrapper
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: PathLike, weights_only: bool = True) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``.ckpt``, ``.pt``, ``.pth``).

    Pickles are read with ``weights_only=True`` (no code runs); a checkpoint that needs more than
    tensors raises, naming ``weights_only=False`` for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors' own error type: a cut or corrupt file
            raise ValueError(
                f"{path} is not a readable .safetensors file ({str(err).splitlines()[0]}); "
                "an interrupted download or copy leaves such a file: fetch it again"
            ) from None
        return _unwrap(state, str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds Python objects besides tensors and was not loaded with "
            f"weights_only=True; if you trust the file, pass weights_only=False "
            f"(or convert it once to .safetensors). Cause: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable torch checkpoint ({err})") from None
    return _unwrap(obj, str(path))


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    source: str = "state dict",
) -> Tuple[List[str], List[str]]:
    """Copy ``state_dict`` into ``model`` (casting to the model's dtypes).

    strict: every key must match by name and shape, else :class:`CheckpointMismatchError` and the
    model is untouched. Not strict: matching keys load, the rest are reported with a warning.
    Returns (missing, unexpected).
    """
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatched = sorted(
        (k, tuple(state_dict[k].shape), tuple(own[k].shape))
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    )
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    bad = {k for k, _, _ in mismatched}
    fitting = {k: v for k, v in state_dict.items() if k in own and k not in bad}
    model.load_state_dict(fitting, strict=False)
    if missing or unexpected or mismatched:
        warnings.warn(
            str(CheckpointMismatchError(source, missing, unexpected, mismatched)).replace(
                "nothing was loaded; pass strict=False to load the keys that fit",
                "loaded the keys that fit, strict=False",
            ),
            stacklevel=2,
        )
    return missing, unexpected


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: a failure leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give open()'s permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: PathLike,
    metadata: Optional[Dict[str, str]] = None,
) -> Path:
    """Write ``.safetensors`` (with string ``metadata``) or, for other suffixes, a torch pickle
    nested as upstream's ``{"state_dict": ...}``."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    if path.suffix not in _PICKLE_SUFFIXES:
        raise ValueError(f"path must end in .safetensors or one of {_PICKLE_SUFFIXES}, got {path}")
    payload = {"state_dict": tensors}
    if metadata:
        payload["metadata"] = dict(metadata)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))
