"""A pytest plugin for the GPU check's test phases (``pytest -p tests.gpu_order``): bf16 cases
first, then CDT-small before CDT-base, otherwise in collection order. On a first GPU run cut
short by its time limit, the cases the benchmark's settings depend on have run."""

from __future__ import annotations

import torch


def _rank(item) -> tuple:
    params = getattr(getattr(item, "callspec", None), "params", {})
    values = list(params.values())
    bf16 = any(v is torch.bfloat16 or (isinstance(v, str) and v == "bf16") for v in values)
    base = any(isinstance(v, str) and v == "base" for v in values)
    return (not bf16, base)


def pytest_collection_modifyitems(session, config, items):
    items[:] = sorted(items, key=_rank)  # sorted is stable: collection order within a rank
