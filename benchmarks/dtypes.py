"""dtype names of the benchmarks: what their command lines accept and what their results write.

The names are the package's one map (:mod:`cdt_fast.dtypes`): ``fp32``, ``fp16``, ``bf16`` in
results files, and on a command line those or torch's spellings (``bfloat16``, ...), in any case.
"""

from __future__ import annotations

import argparse

import torch

from cdt_fast.dtypes import DTYPE_NAMES, dtype_from_name
from cdt_fast.dtypes import dtype_name as _short_name

__all__ = ["parse_dtype", "dtype_argument", "dtype_name"]


def parse_dtype(text: str) -> torch.dtype:
    """``"bf16"``, ``"BFloat16"``, ``"fp32"``, ... -> the torch dtype; ValueError naming the
    names there are for any other text."""
    return dtype_from_name(str(text).lower())


def dtype_argument(text: str) -> torch.dtype:
    """:func:`parse_dtype` as an argparse ``type=``: a bad name is a usage error that says which
    names there are."""
    try:
        return parse_dtype(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def dtype_name(dtype: torch.dtype) -> str:
    """The short name results files use: ``fp32``, ``fp16`` or ``bf16`` (ValueError for a dtype
    the benchmarks do not run)."""
    name = _short_name(dtype)
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    return name
