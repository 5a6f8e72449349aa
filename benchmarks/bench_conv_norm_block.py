"""Microbenchmark: a CDT Block (causal conv -> channel LayerNorm -> ReLU -> + residual), fused vs not.

The engine runs every Block as one ``causal_conv3d_norm`` op. This measures whether fusing the
norm into the conv's epilogue pays on the GPU, and against what. The shapes are the Block convs
(3x3x3 and 3x7x7) of a real CDT-base and CDT-small decode at 256x256 and 720x720. They are read
off the reference model as in ``bench_causal_conv3d.py``. The cache is full (a later chunk),
and the 19- or 6-channel U-Net input is padded to 16 channels as the engine pads it.

Implementations, all on ``channels_last_3d`` activations:

- ``cudnn+eager``: :func:`cdt_fast.functional.causal_conv3d_norm` (cuDNN conv, eager norm);
- ``cudnn+triton_norm``: the cuDNN conv, then the Triton norm block in place on its output;
- ``triton+triton_norm``: the Triton conv, then the Triton norm block;
- ``triton_fused``: :func:`cdt_fast.kernels.causal_conv3d.causal_conv3d_norm` (the norm in the
  conv's epilogue up to 128 channels);
- ``torch.compile``: ``torch.compile`` of the functional composition.

Reported per shape: ms, TFLOP/s of the conv, and GB/s of the minimal traffic (the chunk and its
cached frames once, the weights, the residual, the output).

    python benchmarks/bench_conv_norm_block.py [--out PATH]   # CUDA; skips without it
    pytest benchmarks/bench_conv_norm_block.py --benchmark-only
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from cdt_fast import functional as CF  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CUDA = torch.cuda.is_available()
DTYPE = torch.bfloat16
CASES = (("base", 256), ("small", 256), ("base", 720), ("small", 720))
SHAPES_PER_CASE = 6  # the most expensive Block convs of each decode
CHANNEL_ALIGN = 16  # what the engine pads the U-Net's concatenated input to under Triton


def block_shapes(preset: str, resolution: int) -> List[Tuple[tuple, int]]:
    """[((cin, cout, kernel, pad_mode, frames, h, w), count)] of the Block convs of one decode, most
    expensive first. Steady state: every chunk is taken with its cache full."""
    from benchmarks.bench_causal_conv3d import decode_shapes

    blocks: Counter = Counter()
    for s, count in decode_shapes(preset, resolution, resolution).items():
        if (
            s.transposed
            or s.upsample2x
            or s.stride != (1, 1, 1)
            or s.cout <= 3
            or s.kernel not in ((3, 3, 3), (3, 7, 7))
        ):
            continue
        cin = s.cin + -s.cin % CHANNEL_ALIGN
        blocks[(cin, s.cout, s.kernel, s.pad_mode, s.frames, s.h, s.w)] += count

    def cost(item):
        (cin, cout, kernel, _, frames, h, w), count = item
        return count * frames * h * w * cin * cout * kernel[0] * kernel[1] * kernel[2]

    return sorted(blocks.items(), key=cost, reverse=True)


def block_impls(
    shape: tuple,
    device: str = "cuda",
    dtype: torch.dtype = DTYPE,
    with_triton: bool = True,
    with_compile: bool = True,
) -> Tuple[Dict[str, Callable[[], torch.Tensor]], int, int]:
    """The implementations of one Block call, its minimal bytes and its conv FLOPs."""
    cin, cout, kernel, pad_mode, frames, h, w = shape
    g = torch.Generator(device="cpu").manual_seed(0)

    def act(c, t):
        return (
            torch.randn(1, c, t, h, w, generator=g)
            .to(device, dtype)
            .contiguous(memory_format=torch.channels_last_3d)
        )

    history = kernel[0] - 1
    x, past, residual = act(cin, frames), act(cin, history), act(cout, frames)
    fan_in = cin * kernel[0] * kernel[1] * kernel[2]
    weight = (torch.randn(cout, cin, *kernel, generator=g) / fan_in**0.5).to(device, dtype)
    weight = weight.contiguous(memory_format=torch.channels_last_3d)
    bias, norm_g, norm_b = (torch.randn(cout, generator=g).to(device, dtype) for _ in range(3))
    conv = dict(
        past=past,
        history=history,
        space_padding=(kernel[1] // 2, kernel[2] // 2),
        pad_mode=pad_mode,
    )
    adds = dict(relu=True, residual=residual)

    def eager():
        return CF.causal_conv3d_norm(x, weight, bias, norm_g, norm_b, **conv, **adds)

    impls = {"cudnn+eager": eager}
    if with_triton:
        from cdt_fast.kernels.causal_conv3d import causal_conv3d, causal_conv3d_norm
        from cdt_fast.kernels.channel_norm import channel_norm

        def then_norm(y):
            return channel_norm(y, norm_g, norm_b, **adds, out=y)

        impls["cudnn+triton_norm"] = lambda: then_norm(CF.causal_conv3d(x, weight, bias, **conv))
        impls["triton+triton_norm"] = lambda: then_norm(causal_conv3d(x, weight, bias, **conv))
        impls["triton_fused"] = lambda: causal_conv3d_norm(
            x, weight, bias, norm_g, norm_b, **conv, **adds
        )
    if with_compile:
        fused_graph = torch.compile(CF.causal_conv3d_norm, dynamic=False)
        impls["torch.compile"] = lambda: fused_graph(
            x, weight, bias, norm_g, norm_b, **conv, **adds
        )
    size = x.element_size()
    nbytes = (x.numel() + past.numel() + 2 * residual.numel() + weight.numel()) * size
    flops = 2 * residual.numel() * fan_in
    return impls, nbytes, flops


def run_summary() -> List[dict]:
    if not CUDA:
        return [{"skipped": "needs CUDA"}]
    from cdt_fast.kernels._bench_support import measure

    rows = []
    for preset, resolution in CASES:
        for shape, count in block_shapes(preset, resolution)[:SHAPES_PER_CASE]:
            cin, cout, kernel, pad_mode, frames, h, w = shape
            case = (
                f"{preset}{resolution} {cin}->{cout} k{kernel[1]} {frames}f {h}x{w} "
                f"{pad_mode} x{count}"
            )
            impls, nbytes, flops = block_impls(shape)
            rows += measure("conv_norm_block", case, impls, nbytes, flops)
    return rows


def main(argv=None) -> int:
    from cdt_fast.kernels._bench_support import bench_main

    return bench_main("conv_norm_block", __doc__.splitlines()[0], run_summary, RESULTS, argv)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize(
    "impl",
    ["cudnn+eager", "cudnn+triton_norm", "triton+triton_norm", "triton_fused", "torch.compile"],
)
def test_conv_norm_block(benchmark, impl):
    shape, _ = block_shapes("base", 256)[0]
    fn = block_impls(shape)[0][impl]
    from cdt_fast.kernels._bench_support import run_benchmark

    run_benchmark(benchmark, fn)


def bench_causal_conv3d_shapes(preset: str, resolution: int):
    from benchmarks.bench_causal_conv3d import decode_shapes

    return list(decode_shapes(preset, resolution, resolution))


def test_shapes_and_implementations_agree_on_cpu():
    """The harness on CPU (no timing): the decode's Block shapes, and every implementation but
    torch.compile computing the same Block (the Triton ones under the interpreter, when on)."""
    import os

    shapes = block_shapes("small", 64)
    # CDT-small's U-Net input conv reads noise | context = 3 + 3 channels: timed at 16 as the
    # engine runs it, and no other width changes.
    inputs = [cin for (cin, _, kernel, *_), _ in shapes if kernel == (3, 7, 7)]
    assert inputs == [16], inputs
    raw = {s.cin for s in bench_causal_conv3d_shapes("small", 64) if s.kernel == (3, 3, 3)}
    assert raw == {cin for (cin, _, kernel, *_), _ in shapes if kernel == (3, 3, 3)}
    tiny = (16, 24, (3, 3, 3), "replicate", 2, 5, 7)
    triton = os.environ.get("TRITON_INTERPRET") == "1"
    impls, nbytes, flops = block_impls(
        tiny, "cpu", torch.float32, with_triton=triton, with_compile=False
    )
    want = impls.pop("cudnn+eager")()
    for name, fn in impls.items():
        torch.testing.assert_close(fn(), want, rtol=1e-4, atol=1e-4, msg=name)
    assert flops == 2 * 24 * 2 * 5 * 7 * 16 * 27 and nbytes > 0


if __name__ == "__main__":
    sys.exit(main())
