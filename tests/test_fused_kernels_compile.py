"""The fused kernels (kernels/channel_norm.py, kernels/linear_attention.py) compile for real GPUs:
CI has none and runs them in the interpreter, which accepts code the compiler rejects."""

import pytest

from .compile_fused_kernels import compile_in_subprocess, has_cuda_toolchain


@pytest.mark.skipif(not has_cuda_toolchain(), reason="this triton has no CUDA backend/ptxas")
@pytest.mark.parametrize("op", ["channel_norm", "linear_attention"])
def test_kernels_compile_for_sm80_and_sm90(op):
    done = compile_in_subprocess(op)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("sm_80") >= 3 and done.stdout.count("sm_90") >= 3
