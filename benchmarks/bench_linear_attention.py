"""Microbenchmark of the linear_attention family: the attention block ``x +
linear_attention(channel_norm(x))`` (op ``linear_attention_block``), every backend of the engine
that runs it here and ``torch.compile`` of the torch op, and the attention alone (op
``linear_attention``: no norm, no residual) on every backend, in GB/s and % of the device's
memory bandwidth.

CUDA, at the CDT-base U-Net's 720x720 decode shapes (:data:`benchmarks.cdt_shapes.CDT_BASE_720`,
a chunk of 8 video frames, one attention block per level): ``block`` rows time the whole block
(``torch``, ``cuda``, ``torch.compile``, and ``triton`` on weights packed once, as the engine
holds them) and count its compulsory traffic (read x, write y), so their GB/s compare like for
like; ``core`` times only the fused Triton attention kernels (context pass + combine + mix +
apply with bias and residual) and counts their traffic (read q, k, v and x; write y);
``norm+qkv`` times the fused Triton LayerNorm + qkv projection against the unfused pair (Triton
norm, then cuBLAS) with the same byte count (read x, write q, k, v); ``attention`` rows time
each backend's ``linear_attention`` (read x, write y). CPU: the ``torch`` and ``cpp`` backends
of both ops on one activation (``--size``).

    python benchmarks/bench_linear_attention.py [--dtype bf16] [--levels L4 L5] [--out PATH]
    pytest benchmarks/bench_linear_attention.py --benchmark-only     # pytest-benchmark, CUDA only
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from benchmarks import microbench  # noqa: E402
from benchmarks.cdt_shapes import CDT_BASE_720  # noqa: E402
from cdt_fast import functional as CF  # noqa: E402

OP = "linear_attention_block"
# (name, channels, frames, side) per --size: small; CDT-small's attention level at 256x256
CPU_LEVELS = {"small": [("cpu", 64, 2, 8)], "cdt": [("cdt", 256, 4, 16)]}


def make_inputs(c: int, t: int, side: int, dtype: torch.dtype, device, batch: int = 1):
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


def _packed(params, with_norm: bool = True):
    from cdt_fast.kernels.linear_attention import LinearAttentionWeights

    norm = dict(norm_g=params["g"], norm_b=params["b"]) if with_norm else {}
    return LinearAttentionWeights.pack(params["w_qkv"], params["w_out"], params["b_out"], **norm)


def block_implementations(device, with_compile: bool, params) -> Dict[str, Callable]:
    """impl -> f(x) of the whole block."""
    order = ("g", "b", "w_qkv", "w_out", "b_out")
    weights = tuple(params[k] for k in order)
    impls: Dict[str, Callable] = {}
    for backend, fn in microbench.backend_functions(OP, device).items():
        if backend == "triton":  # the engine packs the weights once, not per call
            packed = _packed(params)
            impls["triton"] = lambda x, packed=packed: packed(x, residual=True)
        else:
            impls[backend] = lambda x, fn=fn: fn(x, *weights)
    if with_compile:
        graph = torch.compile(CF.linear_attention_block, dynamic=False, fullgraph=True)
        impls["torch.compile"] = lambda x: graph(x, *weights)
    return impls


def core_case(x, params) -> Tuple[Callable[[], None], int]:
    """(callable running only the fused attention kernels -- context pass, combine, mix, apply
    with bias and residual -- and the bytes they must move: read q, k, v and x, write y)."""
    from cdt_fast.kernels.linear_attention import (
        apply_attention,
        attention_context,
        projected_context,
    )

    b, c, t, h, w = x.shape
    packed = _packed(params, with_norm=False)
    qkv = torch.mm(x.permute(0, 2, 3, 4, 1).reshape(-1, c), packed.qkv_t)
    y = torch.empty_like(x)

    def fn():
        ctx = attention_context(qkv, b * t, h * w, packed.heads, packed.scale)
        mix = projected_context(ctx, packed.out_heads, x.dtype)
        apply_attention(qkv, mix, packed.bias, x, y, h * w)

    return fn, qkv.numel() * qkv.element_size() + 2 * x.numel() * x.element_size()


def projection_cases(x, params) -> Dict[str, Tuple[Callable[[], object], int]]:
    """LayerNorm + qkv projection: the fused kernel, and channel_norm followed by cuBLAS."""
    from cdt_fast.kernels.channel_norm import channel_norm
    from cdt_fast.kernels.linear_attention import project_qkv

    c = x.shape[1]
    packed = _packed(params)
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
        "triton norm + cuBLAS": (unfused, nbytes),
    }


def cases(
    levels: Sequence[tuple], dtype: torch.dtype, device, with_compile: bool
) -> Iterator[microbench.Case]:
    device = torch.device(device)
    for name, c, t, side in levels:
        x, params = make_inputs(c, t, side, dtype, device)
        label = f"{name} C={c} {t}x{side}x{side}"
        impls = block_implementations(device, with_compile, params)
        io_bytes = 2 * x.numel() * x.element_size()
        yield microbench.Case(OP, f"{label} block", microbench.bind(impls, x), io_bytes)
        weights = (params["w_qkv"], params["w_out"], params["b_out"])
        attention = microbench.bind(
            microbench.backend_functions("linear_attention", device), x, *weights
        )
        yield microbench.Case("linear_attention", f"{label} attention", attention, io_bytes)
        if "triton" in impls:
            fn, core_bytes = core_case(x, params)
            yield microbench.Case(OP, f"{label} core", {"triton": fn}, core_bytes)
            projections = projection_cases(x, params)
            calls = {impl: fn for impl, (fn, _) in projections.items()}
            nbytes = next(iter(projections.values()))[1]
            yield microbench.Case(OP, f"{label} norm+qkv", calls, nbytes)


def _make_cases(args) -> Iterator[microbench.Case]:
    levels = microbench.cdt_levels(args.device, CPU_LEVELS, args.size, args.levels)
    return cases(levels, args.dtype, args.device, args.compile)


def run_summary() -> List[dict]:
    return microbench.summary_rows(_make_cases, microbench.add_levels_argument)


def main(argv=None) -> int:
    doc = __doc__.splitlines()[0]
    return microbench.bench_main(
        "linear_attention", doc, _make_cases, argv, add_arguments=microbench.add_levels_argument
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "triton", "cuda", "torch.compile"])
@pytest.mark.parametrize("level", CDT_BASE_720, ids=[lv[0] for lv in CDT_BASE_720])
def test_linear_attention_block_720p(benchmark, level, impl):
    _, c, t, side = level
    x, params = make_inputs(c, t, side, torch.bfloat16, "cuda")
    impls = block_implementations(torch.device("cuda"), impl == "torch.compile", params)
    if impl not in impls:
        pytest.skip(f"the {impl} backend does not run here")
    microbench.run_benchmark(benchmark, lambda: impls[impl](x), 2 * x.numel() * x.element_size())


if __name__ == "__main__":
    sys.exit(main())
