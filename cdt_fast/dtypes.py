"""Dtype names: the one map between the short names the project writes and torch's dtypes.

The short names (``"bf16"``, ``"fp16"``, ``"fp32"``) are what the CLI's ``--dtype``, shape classes,
tile keys and benchmark rows say; torch's own spellings (``"bfloat16"``, ...) are accepted
wherever a name is read. Importing this module does not import torch: the CLI builds its parser
from :data:`DTYPE_NAMES` before any command imports torch; the functions import it when they need
a dtype.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Union

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPE_NAMES", "dtype_from_name", "dtype_name"]

# short name -> the name of the torch dtype (``getattr(torch, ...)``)
DTYPE_NAMES: Mapping[str, str] = MappingProxyType(
    {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
)
_SHORT = MappingProxyType({torch_name: short for short, torch_name in DTYPE_NAMES.items()})


def dtype_name(value: Union[str, "torch.dtype"]) -> str:
    """The short name of a dtype or of any spelling of one (``torch.bfloat16``, ``"bfloat16"``,
    ``"bf16"`` -> ``"bf16"``). Anything else comes back in its own spelling (``torch.float64``
    -> ``"float64"``, ``"auto"`` -> ``"auto"``), for the caller to accept or reject."""
    text = value if isinstance(value, str) else str(value).replace("torch.", "")
    return _SHORT.get(text, text)


def dtype_from_name(name: str) -> "torch.dtype":
    """The torch dtype a short name or torch spelling names; ValueError for any other text."""
    import torch

    short = dtype_name(name) if isinstance(name, str) else None
    if short not in DTYPE_NAMES:
        spellings = ", ".join((*DTYPE_NAMES, *_SHORT))
        raise ValueError(f"dtype must be one of {spellings}, got {name!r}")
    return getattr(torch, DTYPE_NAMES[short])
