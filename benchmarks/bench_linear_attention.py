"""Benchmark: the fused linear-attention block (kernels/linear_attention.py) against the eager
reference ``x + linear_attention(channel_norm(x))`` (:mod:`cdt_fast.functional`) and
``torch.compile`` of the same function, at the CDT-base U-Net's 720x720 decode shapes (a chunk of
8 video frames, one attention block per level), in GB/s and % of the device's memory bandwidth.

Rows: ``block`` counts the compulsory traffic of the whole block (read x, write y) for every
implementation, so its GB/s compare like for like; ``core`` times only the fused attention kernels
(context pass + combine + mix + apply with bias and residual) and counts their traffic (read q, k,
v and x; write y); ``norm+qkv`` times the fused LayerNorm + qkv projection against the unfused
pair (norm kernel, then cuBLAS) with the same byte count (read x, write q, k, v).

    python benchmarks/bench_linear_attention.py [--dtype bf16] [--out benchmarks/results/x.json]
    python -m pytest benchmarks/bench_linear_attention.py        # pytest-benchmark, CUDA only
    python benchmarks/bench_linear_attention.py --smoke          # CPU: checks the harness only
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Dict, List

import pytest
import torch

from cdt_fast import functional as CF

try:  # the shared harness (benchmarks/ may or may not be a package)
    from .bench_channel_norm import (
        CDT_BASE_720,
        Measurement,
        compiled,
        needs_cuda,
        run_benchmark,
        run_main,
        time_ms,
    )
except ImportError:
    from bench_channel_norm import (
        CDT_BASE_720,
        Measurement,
        compiled,
        needs_cuda,
        run_benchmark,
        run_main,
        time_ms,
    )


def reference_block(x, g, b, w_qkv, w_out, b_out):
    return x + CF.linear_attention(CF.channel_norm(x, g, b), w_qkv, w_out, b_out)


def make_inputs(c: int, t: int, side: int, dtype: torch.dtype, device: str, batch: int = 1):
    """An attention_block(c)'s input and weights (heads=1, dim_head=c, as CDT)."""
    x = torch.randn(batch, c, t, side, side, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last_3d
    )
    params = dict(
        g=torch.randn(c, device=device, dtype=dtype),
        b=torch.randn(c, device=device, dtype=dtype),
        w_qkv=(torch.randn(3 * c, c, 1, 1, 1, device=device) * c**-0.5).to(dtype),
        w_out=(torch.randn(c, c, 1, 1, 1, device=device) * c**-0.5).to(dtype),
        b_out=torch.randn(c, device=device, dtype=dtype),
    )
    return x, params


def block_implementations(device: str, with_compile: bool, params) -> Dict[str, Callable]:
    impls = {"eager": lambda x: reference_block(x, **params)}
    if device == "cuda":
        from cdt_fast.kernels.linear_attention import LinearAttentionWeights

        packed = LinearAttentionWeights.pack(
            params["w_qkv"],
            params["w_out"],
            params["b_out"],
            norm_g=params["g"],
            norm_b=params["b"],
        )
        impls["triton"] = lambda x: packed(x, residual=True)
        if with_compile:
            ref = compiled(reference_block)
            impls["torch.compile"] = lambda x: ref(x, **params)
    return impls


def core_case(x, params):
    """(callable running only the fused attention kernels -- context pass, combine, mix, apply
    with bias and residual -- and the bytes they must move: read q, k, v and x, write y)."""
    from cdt_fast.kernels.linear_attention import LinearAttentionWeights

    b, c, t, h, w = x.shape
    packed = LinearAttentionWeights.pack(params["w_qkv"], params["w_out"], params["b_out"])
    qkv = torch.mm(x.permute(0, 2, 3, 4, 1).reshape(-1, c), packed.qkv_t)
    y = torch.empty_like(x)

    def fn():
        from cdt_fast.kernels.linear_attention import (
            apply_attention,
            attention_context,
            projected_context,
        )

        ctx = attention_context(qkv, b * t, h * w, packed.heads, packed.scale)
        mix = projected_context(ctx, packed.out_heads, x.dtype)
        apply_attention(qkv, mix, packed.bias, x, y, h * w)

    return fn, qkv.numel() * qkv.element_size() + 2 * x.numel() * x.element_size()


def projection_cases(x, params):
    """LayerNorm + qkv projection: the fused kernel, and channel_norm followed by cuBLAS."""
    from cdt_fast.kernels.channel_norm import channel_norm
    from cdt_fast.kernels.linear_attention import LinearAttentionWeights, project_qkv

    b, c, t, h, w = x.shape
    packed = LinearAttentionWeights.pack(
        params["w_qkv"], params["w_out"], params["b_out"], norm_g=params["g"], norm_b=params["b"]
    )
    normed = torch.empty_like(x)
    nbytes = 4 * x.numel() * x.element_size()

    def unfused():
        channel_norm(x, packed.norm_g, packed.norm_b, out=normed)
        return torch.mm(normed.permute(0, 2, 3, 4, 1).reshape(-1, c), packed.qkv_t)

    return {
        "triton": (
            lambda: project_qkv(x, packed.qkv_t, packed.norm_g, packed.norm_b, 1e-5),
            nbytes,
        ),
        "norm + cuBLAS": (unfused, nbytes),
    }


def measure(
    levels=CDT_BASE_720, dtype=torch.bfloat16, device="cuda", with_compile=True, timer=time_ms
) -> List[Measurement]:
    rows = []
    for name, c, t, side in levels:
        x, params = make_inputs(c, t, side, dtype, device)
        case = f"{name} C={c} {t}x{side}x{side}"
        gbytes = 2 * x.numel() * x.element_size()
        for impl, fn in block_implementations(device, with_compile, params).items():
            rows.append(Measurement(f"{case} block", impl, timer(functools.partial(fn, x)), gbytes))
        if device == "cuda":
            fn, core_bytes = core_case(x, params)
            rows.append(Measurement(f"{case} core", "triton", timer(fn), core_bytes))
            for impl, (fn, proj_bytes) in projection_cases(x, params).items():
                rows.append(Measurement(f"{case} norm+qkv", impl, timer(fn), proj_bytes))
        del x, params
    return rows


def main(argv=None) -> int:
    return run_main(__doc__, argv, measure, "linear_attention_block")


@needs_cuda
@pytest.mark.parametrize("impl", ["triton", "eager", "torch.compile"])
@pytest.mark.parametrize("level", CDT_BASE_720, ids=[lv[0] for lv in CDT_BASE_720])
def test_linear_attention_block_720p(benchmark, level, impl):
    _, c, t, side = level
    x, params = make_inputs(c, t, side, torch.bfloat16, "cuda")
    fn = block_implementations("cuda", impl == "torch.compile", params)[impl]
    run_benchmark(benchmark, lambda: fn(x), 2 * x.numel() * x.element_size())  # x in, y out


def test_harness_smoke_cpu():
    """Runs the table code on CPU with a tiny shape (no timing claim)."""
    rows = measure(
        [("tiny", 12, 1, 5)],
        torch.float32,
        "cpu",
        with_compile=False,
        timer=lambda fn: (fn(), 1.0)[1],
    )
    assert [r.impl for r in rows] == ["eager"] and rows[0].gbytes == 2 * 12 * 25 * 4


if __name__ == "__main__":
    sys.exit(main())
