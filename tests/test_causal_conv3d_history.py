"""The causal conv's history for the next chunk (the last ``history`` frames of ``[past | x]``):
the C++ extension (cdt_fast.cpp_ops; its CUDA build on a GPU) against
:func:`cdt_fast.functional.causal_conv3d_history`. Triton has no kernel for it (a frame copy)."""

from __future__ import annotations

import pytest
import torch

from cdt_fast import cpp_ops
from cdt_fast import functional as CF

from . import cpp_backend as cpp
from .cpp_backend import cpp_test, cuda_test


@cpp_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("past_frames", [None, 1, 2, 3])
@pytest.mark.parametrize("frames", [1, 2, 5])
def test_cpp_causal_conv3d_history(dtype, past_frames, frames):
    x = cpp.rand(2, 3, frames, 5, 7, dtype=dtype)
    past = None if past_frames is None else cpp.rand(2, 3, past_frames, 5, 7, dtype=dtype)
    for history in (0, 1, 2, 4):
        ref = CF.causal_conv3d_history(x, past, history)
        out = cpp_ops.causal_conv3d_history(x, past, history)
        assert out.shape == ref.shape and torch.equal(out, ref)
        assert out.data_ptr() != x.data_ptr()  # a copy: the chunk can be freed


@cpp_test
def test_cpp_causal_conv3d_history_into_a_preallocated_buffer():
    x, past = cpp.rand(2, 4, 3, 5, 3), cpp.rand(2, 4, 2, 5, 3)
    cache = torch.empty(2, 4, 2, 5, 3).contiguous(memory_format=cpp.CL)
    out = cpp_ops.causal_conv3d_history(x, past, 2, out=cache)
    assert out.data_ptr() == cache.data_ptr() and torch.equal(cache, x[:, :, -2:])
    past = past.contiguous(memory_format=cpp.CL)
    with pytest.raises(ValueError, match="overlap"):  # [past | x] would shift within past
        cpp_ops.causal_conv3d_history(x[:, :, :1], past, 2, out=past)
    with pytest.raises(ValueError, match="channels-last"):
        cpp_ops.causal_conv3d_history(x, past, 2, out=torch.empty(2, 4, 2, 5, 3))
    with pytest.raises(ValueError, match="history"):
        cpp_ops.causal_conv3d_history(x, None, -1)


@cuda_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
def test_cuda_causal_conv3d_history(dtype):
    """Frames of 16 channels (16-byte copies) and of 5 (2-byte copies), a 1-frame chunk after a
    1-frame past; a second run gives the same bits."""
    cases = []
    for c in (16, 5):
        x = cpp.rand(2, c, 3, 17, 23, dtype=dtype, device="cuda")
        past = cpp.rand(2, c, 1, 17, 23, dtype=dtype, device="cuda")
        cases.append(
            (
                f"causal_conv3d_history C={c}",
                lambda x=x, past=past: cpp_ops.causal_conv3d_history(x[:, :, :1], past, 2),
                lambda x=x, past=past: CF.causal_conv3d_history(x[:, :, :1], past, 2),
            )
        )
    cpp.check_on_cuda(cases, dtype)
