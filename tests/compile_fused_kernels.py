"""Compile the fused kernels to cubins for sm_80 and sm_90 without a GPU (Triton ships ptxas).

CI has no GPU and runs the kernels in the interpreter, which accepts code the compiler rejects
(dot shapes, dtype mixes, layouts). Run as ``python -m tests.compile_fused_kernels OP...`` with
``TRITON_INTERPRET`` unset (the tests do, in a subprocess); prints one line per kernel built.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ARCHS = (80, 90)
# fp16 takes the bf16 code paths (16-bit loads, tensor-core dots); fp32 the "ieee" dots.
DTYPES = ("bf16", "fp32")


def _build(fn, types, constexprs, arch, num_warps=4, num_stages=3):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {
        name: "constexpr" if name in constexprs else types.get(name, "i32") for name in fn.arg_names
    }
    kernel = triton.compile(
        ASTSource(fn, signature, constexprs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages),
    )
    assert "cubin" in kernel.asm, f"{fn.__name__}: no cubin"
    print(f"sm_{arch} {fn.__name__} {constexprs}")


def channel_norm(arch):
    from cdt_fast.kernels import channel_norm as op

    for dt in DTYPES:
        types = dict(
            x_ptr=f"*{dt}",
            g_ptr="*fp32",
            b_ptr="*fp32",
            tb_ptr=f"*{dt}",
            res_ptr=f"*{dt}",
            out_ptr=f"*{dt}",
            eps="fp32",
        )
        for block_m, block_c in ((64, 64), (8, 512)):
            _build(
                op._channel_norm_kernel,
                types,
                dict(
                    RELU=True,
                    HAS_TIME_BIAS=True,
                    HAS_RESIDUAL=True,
                    BLOCK_M=block_m,
                    BLOCK_C=block_c,
                ),
                arch,
            )


def linear_attention(arch):
    from cdt_fast.kernels import linear_attention as op

    for dt in DTYPES:
        precision = "ieee" if dt == "fp32" else "tf32"
        _build(
            op._norm_project_kernel,
            dict(
                x_ptr=f"*{dt}",
                g_ptr="*fp32",
                b_ptr="*fp32",
                w_ptr=f"*{dt}",
                out_ptr=f"*{dt}",
                eps="fp32",
            ),
            dict(NORM=True, BLOCK_M=64, BLOCK_K=128, BLOCK_N=128, DOT_PRECISION=precision),
            arch,
            num_warps=8,
        )
        _build(
            op._context_partial_kernel,
            dict(qkv_ptr=f"*{dt}", m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32"),
            dict(BLOCK_N=128, BLOCK_D=64, BLOCK_E=128, DOT_PRECISION=precision),
            arch,
            num_warps=8,
        )
        _build(
            op._attention_apply_kernel,
            dict(
                qkv_ptr=f"*{dt}",
                mix_ptr=f"*{dt}",
                bias_ptr=f"*{dt}",
                res_ptr=f"*{dt}",
                out_ptr=f"*{dt}",
            ),
            dict(
                HAS_BIAS=True,
                HAS_RESIDUAL=True,
                BLOCK_N=64,
                BLOCK_D=32,
                BLOCK_C=128,
                DOT_PRECISION=precision,
            ),
            arch,
        )
    _build(
        op._context_combine_kernel,
        dict(m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32", ctx_ptr="*fp32", scale="fp32"),
        dict(BLOCK_D=64, BLOCK_E=128),
        arch,
    )


def main(ops):
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter does not compile")
    builders = {"channel_norm": channel_norm, "linear_attention": linear_attention}
    for op in ops:
        for arch in ARCHS:
            builders[op](arch)


def compile_in_subprocess(op: str) -> subprocess.CompletedProcess:
    """Run :func:`main` for ``op`` in a fresh interpreter-free process (for the pytest modules,
    which import triton with ``TRITON_INTERPRET=1``)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-m", "tests.compile_fused_kernels", op],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def has_cuda_toolchain() -> bool:
    """Triton is installed with its NVIDIA backend and bundled ptxas (checked without importing
    triton, so the caller's TRITON_INTERPRET setting is not fixed here)."""
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.origin:
        return False
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


if __name__ == "__main__":
    main(sys.argv[1:])
