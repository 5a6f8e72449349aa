"""The op contract: every backend that claims an op in the dispatch table has a function of that
name whose parameters are :mod:`cdt_fast.functional`'s -- same names, order, kinds and defaults --
so that the engine can call any backend the way it calls the reference. A backend may add
parameters only after those, keyword-only and with a default (e.g. ``out=``)."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from cdt_fast import functional
from cdt_fast.engine.dispatch import BACKENDS, OPS, implementations

# cuda shares cpp's module (one extension, two devices): checking cpp covers it.
CLAIMS = [
    (backend, op, module)
    for backend in BACKENDS
    if backend != "cuda"
    for op, module in sorted(implementations(backend).items())
]


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_op_is_in_functional_and_claims_name_known_ops():
    assert set(implementations("torch")) == set(OPS)
    assert implementations("cuda") == implementations("cpp")
    for backend in BACKENDS:
        assert set(implementations(backend)) <= set(OPS), backend
    for op in OPS:
        assert callable(getattr(functional, op, None)), op


@pytest.mark.parametrize("backend,op,module", CLAIMS, ids=[f"{b}-{o}" for b, o, _ in CLAIMS])
def test_backend_function_matches_functional_signature(backend, op, module):
    if backend == "triton":
        pytest.importorskip("triton")
    fn = getattr(importlib.import_module(module), op, None)
    assert callable(fn), f"{module} claims {op!r} but defines no such function"
    expected, got = _params(getattr(functional, op)), _params(fn)
    assert got[: len(expected)] == expected, (
        f"{module}.{op} parameters differ from functional.{op}:\n"
        f"  functional: {[name for name, _, _ in expected]}\n"
        f"  {backend}: {[name for name, _, _ in got]}"
    )
    for name, kind, default in got[len(expected) :]:
        assert kind is inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty, (
            f"{module}.{op} adds {name!r}: extra parameters must be keyword-only with a default"
        )


def test_ddim_coefficients_are_one_fp32_tensor_of_four_whatever_the_form():
    """Every backend takes (a, b, c, d) through functional.ddim_coefficients: Python numbers,
    scalar tensors of any float dtype and a 4-element tensor give the same fp32 values (rounded
    once, as the contract computes); a wrong form is a ValueError that says what was expected."""
    values = (1.0000305, 0.0078125, 0.9999, 0.0141)
    want = torch.tensor(values, dtype=torch.float32)
    forms = [
        values,
        tuple(torch.tensor(v, dtype=torch.float64) for v in values),
        [torch.tensor([v]) for v in values],
        torch.tensor(values, dtype=torch.float64),
        want,
    ]
    for form in forms:
        got = functional.ddim_coefficients(form, "cpu")
        assert got.dtype == torch.float32 and got.shape == (4,) and got.is_contiguous()
        assert torch.equal(got, want), form
    with pytest.raises(ValueError, match=r"\(a, b, c, d\), got 3 values"):
        functional.ddim_coefficients(values[:3], "cpu")
    with pytest.raises(ValueError, match=r"shape \(4,\), got \(2, 2\)"):
        functional.ddim_coefficients(want.reshape(2, 2), "cpu")
    with pytest.raises(ValueError, match="must be a scalar, got shape"):
        functional.ddim_coefficients((want[:2], *values[1:]), "cpu")
