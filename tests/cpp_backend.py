"""What the compiled extension's tests share (``cdt_fast.cpp_ops``, the ``cpp`` and ``cuda``
backends over ``cdt_fast._C``): the marks that skip them, with the loader's reason, where the
extension is not built or has no CUDA, their tolerances, inputs and CUDA checks.

Each op family's tests live in its ``tests/test_<family>.py`` beside the Triton ones; the tests of
the extension as a whole (its boundary, threads, 16-bit conversions, a CUDA graph of several ops)
in ``tests/test_cpp_extension.py``. Every test here carries the ``cpp`` mark, so the Triton
matrix (``tools/ci_triton_matrix.sh``) can leave them out.
"""

from __future__ import annotations

import pytest
import torch

from cdt_fast import _cpp_lib

__all__ = [
    "CL",
    "COEFFS",
    "DTYPES",
    "SHAPES",
    "TOL",
    "check",
    "check_on_cuda",
    "cpp_test",
    "cuda_test",
    "rand",
    "up",
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) of a stage's output against the fp32 contract: fp32 is reduction-order noise; the
# half types are the rounding of the output plus that of the (tiny) reductions' inputs.
TOL = {torch.float32: (2e-5, 1e-5), torch.float16: (1e-2, 5e-3), torch.bfloat16: (8e-2, 2e-2)}
# [B, C, T, H, W]: odd spatial sizes, channel counts not powers of two, 1-frame chunks, batch 2.
SHAPES = [(2, 5, 3, 7, 9), (1, 12, 1, 17, 23), (2, 3, 2, 1, 1)]
CL = torch.channels_last_3d
# DDIM coefficients (a, b, c, d) of a late step, as device tensors (what the engine keeps).
COEFFS = (
    torch.tensor(1.0000305),
    torch.tensor(0.0078125),
    torch.tensor(0.9999),
    torch.tensor(0.0141),
)

_NOT_BUILT = f"cdt_fast._C not usable: {_cpp_lib.unavailable_reason()} (build: pip install -e .)"


def cpp_test(test):
    """Marks a test of the extension's CPU stages: ``cpp``, skipped (saying why) without it."""
    skip = pytest.mark.skipif(not _cpp_lib.is_available(), reason=_NOT_BUILT)
    return pytest.mark.cpp(skip(test))


def cuda_test(test):
    """Marks a test of the extension's CUDA stages: ``cpp`` and ``gpu``, skipped without a GPU and
    a CUDA build. ``tools/gpu_check.sh`` finds GPU tests by their ``pytest.mark.gpu`` text, so it
    names the modules that use this mark in its kernel phase."""
    skip = pytest.mark.skipif(
        not _cpp_lib.cuda_available(), reason="needs a CUDA GPU and a CUDA build of cdt_fast._C"
    )
    return pytest.mark.cpp(pytest.mark.gpu(skip(test)))


def rand(*shape, dtype=torch.float32, scale=1.0, device="cpu"):
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def up(*tensors):
    """fp32 copies of the (rounded) inputs: the oracle runs the contract on these."""
    return [None if t is None else t.float() for t in tensors]


def check_on_cuda(cases, dtype: torch.dtype, tolerances=None) -> None:
    """Each ``(name, extension call, contract call)`` on CUDA tensors: the extension's result
    within ``dtype``'s tolerance of the contract's (``tolerances[name]``: another (atol, rtol)),
    and a second run bitwise equal (no atomics: the same bits every run)."""
    tolerances = tolerances or {}
    with torch.no_grad():
        for name, ours, ref in cases:
            out, want, again = ours(), ref(), ours()
            torch.cuda.synchronize()
            atol, rtol = tolerances.get(name, TOL[dtype])
            torch.testing.assert_close(out.float(), want.float(), atol=atol, rtol=rtol, msg=name)
            assert torch.equal(out, again), name
