"""Compiles the fusedB Triton kernels (time resampling, final denoise stage, initial noise,
temporal attention) to sm_90 cubins with no GPU present: catches what the interpreter cannot
(typing of branches, tl.dot shapes, register allocation). Run by test_kernels_sm90_compile.py in
a subprocess without TRITON_INTERPRET; prints one line per kernel variant."""

import os
import sys
import time

assert not os.environ.get("TRITON_INTERPRET"), "AOT compilation needs the real Triton JIT"

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cdt_fast.kernels import _temporal_attention_kernel as ta
from cdt_fast.kernels import denoise as dn
from cdt_fast.kernels import time_resample as tr

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(label, fn, pointer_types, constexprs, num_warps=4):
    scalar_types = {
        "eps": "fp32",
        "gamma": "fp32",
        "qk_scale": "fp32",
        "seed": "i64",
        "offset": "i64",
        "NUMEL": "i64",
    }
    signature = {
        name: "constexpr"
        if name in constexprs
        else pointer_types.get(name, scalar_types.get(name, "i32"))
        for name in fn.arg_names
    }
    started = time.time()
    triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=dict(constexprs)),
        target=TARGET,
        options={"num_warps": num_warps},
    )
    print(f"ok {label} {time.time() - started:.1f}s", flush=True)


def main(dtypes=("bf16", "fp16")):
    for dt in dtypes:
        ptrs = {n: f"*{dt}" for n in ("x_ptr", "past_ptr", "w_ptr", "b_ptr", "out_ptr")}
        for replicate in (False, True):
            compile_kernel(
                f"time_downsample {dt} replicate={replicate}",
                tr._time_downsample_kernel,
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
                num_warps=8,
            )
        compile_kernel(
            f"time_upsample {dt}",
            tr._time_upsample_kernel,
            ptrs,
            dict(C=192, HAS_BIAS=True, IEEE=False, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
        )
        compile_kernel(
            f"channel_norm {dt}",
            dn._channel_norm_kernel,
            {"x_ptr": f"*{dt}", "g_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": f"*{dt}"},
            dict(C=64, BLOCK_C=64, BLOCK_V=64),
        )
        for replicate in (False, True):
            compile_kernel(
                f"final_conv_ddim {dt} replicate={replicate}",
                dn._final_conv_ddim_kernel,
                {
                    "h_ptr": f"*{dt}",
                    "past_ptr": f"*{dt}",
                    "w_ptr": f"*{dt}",
                    "bias_ptr": f"*{dt}",
                    "xt_ptr": "*fp32",
                    "out_ptr": "*fp32",
                    "u8_ptr": "*u8",
                    "coef_ptr": "*fp32",
                },
                dict(
                    C=64,
                    N_OUT=3,
                    NP=16,
                    KT=3,
                    KH=7,
                    KW=7,
                    PH=3,
                    PW=3,
                    HISTORY=2,
                    REPLICATE=replicate,
                    HAS_BIAS=True,
                    CLAMP=True,
                    UINT8=True,
                    IEEE=False,
                    BLOCK_M=128,
                    BLOCK_K=64,
                ),
            )
        for causal in (True, False):
            for tq, g in ((5, 12), (128, 1)):
                compile_kernel(
                    f"temporal_attention {dt} causal={causal} T={tq}",
                    ta._temporal_attention_kernel,
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
                )
    compile_kernel(
        "initial_noise fp32", dn._initial_noise_kernel, {"out_ptr": "*fp32"}, dict(BLOCK=1024)
    )
    compile_kernel(
        "ddim_update",
        dn._ddim_update_kernel,
        {"xt_ptr": "*fp32", "x0_ptr": "*bf16", "out_ptr": "*fp32", "coef_ptr": "*fp32"},
        dict(CLAMP=True, BLOCK=1024),
    )
    compile_kernel(
        "to_uint8_frames",
        dn._to_uint8_frames_kernel,
        {"x_ptr": "*fp32", "out_ptr": "*u8"},
        dict(BLOCK=1024),
    )


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("bf16",))
