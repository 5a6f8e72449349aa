"""dtype names of the benchmarks: what their command lines accept and what their results write.

Every benchmark parses and names dtypes here, so results files agree (``fp32``, ``fp16``,
``bf16``) and one table says which spellings a command line takes.
"""

from __future__ import annotations

import argparse
from types import MappingProxyType
from typing import Mapping

import torch

__all__ = ["DTYPES", "parse_dtype", "dtype_argument", "dtype_name"]

DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
)
_NAMES: Mapping[torch.dtype, str] = MappingProxyType(
    {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
)


def parse_dtype(text: str) -> torch.dtype:
    """``"bf16"``, ``"bfloat16"``, ``"fp32"``, ... (any case) -> the torch dtype."""
    key = str(text).lower()
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {text!r}")
    return DTYPES[key]


def dtype_argument(text: str) -> torch.dtype:
    """:func:`parse_dtype` as an argparse ``type=``: a bad name is a usage error that says which
    names there are."""
    try:
        return parse_dtype(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def dtype_name(dtype: torch.dtype) -> str:
    """The short name results files use: ``fp32``, ``fp16`` or ``bf16``."""
    if dtype not in _NAMES:
        raise ValueError(f"dtype must be one of {sorted(_NAMES.values())}, got {dtype!r}")
    return _NAMES[dtype]
