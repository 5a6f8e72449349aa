"""Compile the Triton kernels to sm_80/sm_90 cubins without a GPU (Triton ships ptxas).

CI has no GPU and runs the kernels in the interpreter, which accepts code the compiler rejects
(typing of branches, dot shapes, dtype mixes, layouts, register allocation). Run as
``python -m tests.compile_kernels OP...`` with ``TRITON_INTERPRET`` unset (the tests do, in a
subprocess: :func:`compile_in_subprocess`); prints one ``ok sm_XX name`` line per kernel built.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

# fp16 takes the bf16 code paths (16-bit loads, tensor-core dots); fp32 the "ieee" dots.
DTYPES = ("bf16", "fp32")
# Scalar arguments that are not int32 (everything else unnamed is).
SCALARS = {"eps": "fp32", "scale": "fp32", "qk_scale": "fp32", "NUMEL": "i64"}


def _build(fn, types, constexprs, arch, num_warps=4, num_stages=3, label=""):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    types = {**SCALARS, **types}
    signature = {
        name: "constexpr" if name in constexprs else types.get(name, "i32") for name in fn.arg_names
    }
    kernel = triton.compile(
        ASTSource(fn, signature, dict(constexprs)),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages),
    )
    assert "cubin" in kernel.asm, f"{fn.__name__}: no cubin"
    print(f"ok sm_{arch} {fn.__name__} {label or constexprs}", flush=True)


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
        )
        for block_m, block_c in ((64, 64), (8, 512)):
            flags = dict(RELU=True, HAS_TIME_BIAS=True, HAS_RESIDUAL=True)
            _build(
                op._channel_norm_kernel,
                types,
                dict(**flags, BLOCK_M=block_m, BLOCK_C=block_c),
                arch,
            )


def linear_attention(arch):
    from cdt_fast.kernels import linear_attention_kernel as op

    for dt in DTYPES:
        precision = "ieee" if dt == "fp32" else "tf32"
        _build(
            op._norm_project_kernel,
            dict(x_ptr=f"*{dt}", g_ptr="*fp32", b_ptr="*fp32", w_ptr=f"*{dt}", out_ptr=f"*{dt}"),
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
        ptrs = ("qkv_ptr", "mix_ptr", "bias_ptr", "res_ptr", "out_ptr")
        _build(
            op._attention_apply_kernel,
            {n: f"*{dt}" for n in ptrs},
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
        dict(m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32", ctx_ptr="*fp32"),
        dict(BLOCK_D=64, BLOCK_E=128),
        arch,
    )


def time_resample(arch):
    from cdt_fast.kernels import time_resample as op

    for dt in ("bf16", "fp16"):
        ptrs = {n: f"*{dt}" for n in ("x_ptr", "past_ptr", "w_ptr", "b_ptr", "out_ptr")}
        for replicate in (False, True):
            _build(
                op._time_downsample_kernel,
                ptrs,
                dict(
                    C_IN=192,
                    C_OUT=192,
                    HAS_PAST=True,
                    HAS_BIAS=True,
                    REPLICATE=replicate,
                    IEEE=False,
                    BLOCK_M=128,
                    BLOCK_N=128,
                    BLOCK_K=64,
                ),
                arch,
                num_warps=8,
                label=f"{dt} replicate={replicate}",
            )
        _build(
            op._time_upsample_kernel,
            ptrs,
            dict(C=192, HAS_BIAS=True, IEEE=False, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
            arch,
            label=dt,
        )


def temporal_attention(arch):
    from cdt_fast.kernels import _temporal_attention_kernel as op

    for dt in ("bf16", "fp16"):
        for causal in (True, False):
            for tq, g in ((5, 12), (128, 1)):
                _build(
                    op._temporal_attention_kernel,
                    {n: f"*{dt}" for n in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")},
                    dict(
                        TQ=tq,
                        TK=tq,
                        D=64,
                        G=g,
                        CAUSAL=causal,
                        IEEE=False,
                        BLOCK_M=64,
                        BLOCK_N=64,
                        BLOCK_D=64,
                    ),
                    arch,
                    label=f"{dt} causal={causal} T={tq}",
                )


def denoise(arch):
    from cdt_fast.kernels import denoise as op

    _build(
        op._ddim_update_kernel,
        {"xt_ptr": "*fp32", "x0_ptr": "*bf16", "out_ptr": "*fp32", "coef_ptr": "*fp32"},
        dict(CLAMP=True, BLOCK=1024),
        arch,
    )
    _build(
        op._to_uint8_frames_kernel,
        {"x_ptr": "*fp32", "out_ptr": "*u8"},
        dict(BLOCK=1024),
        arch,
    )


BUILDERS = {
    "channel_norm": channel_norm,
    "linear_attention": linear_attention,
    "time_resample": time_resample,
    "temporal_attention": temporal_attention,
    "denoise": denoise,
}


def main(argv):
    """``OP... [--arch 80,90]``."""
    archs = (80, 90)
    if "--arch" in argv:
        i = argv.index("--arch")
        archs = tuple(int(a) for a in argv[i + 1].split(","))
        argv = argv[:i] + argv[i + 2 :]
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter does not compile")
    for op in argv:
        for arch in archs:
            BUILDERS[op](arch)


def compile_in_subprocess(op: str, archs=(80, 90)) -> subprocess.CompletedProcess:
    """Run :func:`main` for ``op`` in a fresh process without the interpreter (the pytest
    modules import triton with ``TRITON_INTERPRET=1``)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    arch_arg = ",".join(map(str, archs))
    return subprocess.run(
        [sys.executable, "-m", "tests.compile_kernels", op, "--arch", arch_arg],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
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
