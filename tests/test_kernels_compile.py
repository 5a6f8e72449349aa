"""Every Triton kernel compiles for real GPUs (sm_80/sm_90 cubins through Triton's ptxas, no GPU
needed): CI runs the kernels in the interpreter, which accepts code the compiler rejects. The conv
has its own compile test beside its parity tests (tests/test_causal_conv3d.py)."""

import pytest

from .compile_kernels import compile_in_subprocess, has_cuda_toolchain

pytestmark = pytest.mark.skipif(
    not has_cuda_toolchain(), reason="this triton has no CUDA backend/ptxas"
)

# op -> (architectures, kernels built per architecture). The fused norm and attention kernels
# are checked in CI; the rest take minutes of ptxas on 2 cores, so they are slow jobs.
CASES = {
    "channel_norm": ((80, 90), 4),
    "linear_attention": ((80, 90), 7),
    "time_resample": ((90,), 6),
    "temporal_attention": ((90,), 8),
    "denoise": ((90,), 2),
}
SLOW = ("time_resample", "temporal_attention", "denoise")


@pytest.mark.parametrize(
    "op", [pytest.param(op, marks=[pytest.mark.slow] if op in SLOW else []) for op in CASES]
)
def test_kernels_compile_for_gpu(op):
    archs, per_arch = CASES[op]
    done = compile_in_subprocess(op, archs)
    assert done.returncode == 0, done.stdout + done.stderr
    for arch in archs:
        assert done.stdout.count(f"ok sm_{arch} ") == per_arch, done.stdout
