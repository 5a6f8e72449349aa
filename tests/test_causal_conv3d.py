"""Causal conv3d: the Triton kernel (interpreter on CPU), alone and over a stream of chunks; the
C++ backend's Block (torch's conv, the extension's norm).

Oracle: :func:`cdt_fast.functional.causal_conv3d` (+ ``causal_conv3d_history`` for streams).
"""

import dataclasses
import os

import pytest
import torch

from cdt_fast import functional as CF
from cdt_fast.cache import FeatureCache
from cdt_fast.reference.layers import CausalConv3d, ResnetBlock

from . import cpp_backend as cpp
from .bf16_emulation import emulated_op
from .cpp_backend import cpp_test
from .helpers import DEVICE, EPS, ON_GPU, assert_bf16_close

kernels = pytest.importorskip("cdt_fast.kernels.causal_conv3d")
conv_tiles = pytest.importorskip("cdt_fast.kernels.causal_conv3d_tiles")
Epilogue = kernels.Epilogue


def assert_close_conv(y, ref, k_len, dtype):
    """Tolerance scaled by the reduction length: ~eps*K accumulation error for fp32, input and
    output rounding (~eps*sqrt(K) per unit-variance product, eps*|y|) for 16-bit inputs."""
    y, ref = y.float().cpu(), ref.float().cpu()
    eps = EPS[dtype]
    if dtype == torch.float32 and not ON_GPU:
        atol = 4 * eps * k_len
    else:  # 16-bit inputs, or TF32 on GPU
        eps = max(eps, 2.0**-10)
        atol = 6 * eps * k_len**0.5 + 2 * eps * ref.abs().max().item()
    err = (y - ref).abs().max().item()
    assert y.shape == ref.shape
    assert err <= atol, f"max error {err:.3e} > tolerance {atol:.3e} (K={k_len}, {dtype})"


def rand(*shape, dtype=torch.float32, channels_last=True):
    x = torch.randn(*shape, device=DEVICE).to(dtype)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


# kernel, stride, space_padding, history, pad_mode, upsample2x, past frames, chunk T, (H, W), Cin, Cout, B
CASES = {
    "333-zeros-first1": ((3, 3, 3), (1, 1, 1), (1, 1), 2, "zeros", False, 0, 1, (5, 7), 5, 6, 2),
    "333-replicate-past2": (
        (3, 3, 3),
        (1, 1, 1),
        (1, 1),
        2,
        "replicate",
        False,
        2,
        2,
        (5, 7),
        5,
        6,
        1,
    ),
    "333-zeros-1after2": ((3, 3, 3), (1, 1, 1), (1, 1), 2, "zeros", False, 2, 1, (4, 3), 20, 19, 1),
    "333-replicate-past1": (
        (3, 3, 3),
        (1, 1, 1),
        (1, 1),
        2,
        "replicate",
        False,
        1,
        1,
        (3, 4),
        5,
        6,
        2,
    ),
    "377-replicate": ((3, 7, 7), (1, 1, 1), (3, 3), 2, "replicate", False, 0, 2, (4, 5), 3, 6, 1),
    "377-zeros-past": ((3, 7, 7), (1, 1, 1), (3, 3), 2, "zeros", False, 2, 1, (5, 6), 3, 5, 1),
    "155-up2x-zeros": ((1, 5, 5), (1, 1, 1), (2, 2), 0, "zeros", True, 0, 1, (3, 4), 5, 6, 2),
    "155-up2x-replicate": (
        (1, 5, 5),
        (1, 1, 1),
        (2, 2),
        0,
        "replicate",
        True,
        0,
        2,
        (2, 3),
        5,
        6,
        1,
    ),
    "133-s2-odd": ((1, 3, 3), (1, 2, 2), (1, 1), 0, "replicate", False, 0, 1, (17, 23), 5, 6, 1),
    "133-s2-zeros": ((1, 3, 3), (1, 2, 2), (1, 1), 0, "zeros", False, 0, 2, (6, 5), 20, 6, 2),
    "111-odd": ((1, 1, 1), (1, 1, 1), (0, 0), 0, "zeros", False, 0, 2, (17, 23), 5, 19, 2),
    "311-t2-first": ((3, 1, 1), (2, 1, 1), (0, 0), 2, "zeros", False, 0, 3, (5, 7), 5, 6, 1),
    "333-past-longer": ((3, 3, 3), (1, 1, 1), (1, 1), 2, "replicate", False, 3, 1, (3, 4), 5, 6, 1),
}


def _case(name, dtype):
    kernel, stride, pad, history, mode, up, past_n, frames, (h, w), cin, cout, b = CASES[name]
    x = rand(b, cin, frames, h, w, dtype=dtype)
    past = rand(b, cin, past_n, h, w, dtype=dtype) if past_n else None
    weight = (
        torch.randn(cout, cin, *kernel, device=DEVICE) / (cin * kernel[1] * kernel[2]) ** 0.5 * 2
    )
    bias = torch.randn(cout, device=DEVICE)
    kw = dict(
        past=past, history=history, space_padding=pad, stride=stride, pad_mode=mode, upsample2x=up
    )
    k_len = cin * kernel[0] * kernel[1] * kernel[2]
    return x, weight, bias, kw, k_len


@pytest.mark.parametrize("name", sorted(CASES))
def test_triton_matches_reference_fp32(name):
    x, weight, bias, kw, k_len = _case(name, torch.float32)
    y = kernels.causal_conv3d(x, weight, bias, **kw)
    assert_close_conv(y, CF.causal_conv3d(x, weight, bias, **kw), k_len, torch.float32)


@pytest.mark.parametrize(
    "name", ["333-zeros-1after2", "377-replicate", "155-up2x-replicate", "133-s2-zeros"]
)
def test_triton_fp16_inputs_against_fp32_reference(name):
    x, weight, bias, kw, k_len = _case(name, torch.float16)
    y = kernels.causal_conv3d(x, weight, bias, **kw)
    assert y.dtype == torch.float16
    past = kw["past"]
    kw32 = dict(kw, past=past.float() if past is not None else None)
    ref = CF.causal_conv3d(x.float(), weight.half().float(), bias, **kw32)
    assert_close_conv(y, ref, k_len, torch.float16)


def test_triton_any_strides_and_out_view():
    """NCDHW input, a sliced (non-contiguous) past, a strided bias view, and ``out=`` a view
    into a bigger buffer."""
    x, weight, bias, kw, k_len = _case("333-replicate-past2", torch.float32)
    bias = torch.stack([bias, -bias], dim=1)[:, 0]  # the same values, every other element
    assert bias.stride() == (2,)
    big_past = rand(1, 5, 4, 5, 7, channels_last=False)
    kw["past"] = big_past[:, :, 1:3]
    x = x.contiguous()
    ref = CF.causal_conv3d(x, weight, bias, **kw)
    holder = torch.full((1, 6, 5, 5, 7), 7.0, device=DEVICE)
    out = holder[:, :, 2:4]
    y = kernels.causal_conv3d(x, weight, bias, out=out, **kw)
    assert y.data_ptr() == out.data_ptr()
    assert_close_conv(holder[:, :, 2:4], ref, k_len, torch.float32)
    assert (holder[:, :, :2] == 7).all() and (holder[:, :, 4:] == 7).all()
    assert kernels.causal_conv3d(x, weight, bias, **kw).is_contiguous()


@pytest.mark.parametrize("norm", [True, False])
def test_triton_epilogue_matches_channel_norm(norm):
    x, weight, bias, kw, k_len = _case("333-zeros-first1", torch.float32)
    cout = weight.shape[0]
    g, beta = torch.randn(cout, device=DEVICE), torch.randn(cout, device=DEVICE)
    time_bias = torch.randn(x.shape[0], cout, device=DEVICE)
    conv = CF.causal_conv3d(x, weight, bias, **kw)
    residual = torch.randn_like(conv)
    if norm:
        ep = Epilogue(
            norm_weight=g, norm_bias=beta, relu=True, channel_bias=time_bias, residual=residual
        )
        ref = CF.channel_norm(conv, g, beta, relu=True, time_bias=time_bias, residual=residual)
        k_len = k_len * 4  # the norm divides by a std ~1/2 of the conv's spread
    else:
        ep = Epilogue(relu=True, residual=residual)
        ref = torch.relu(conv) + residual
    y = kernels.causal_conv3d(x, weight, bias, epilogue=ep, **kw)
    assert_close_conv(y, ref, k_len, torch.float32)


def _norm_block_args(x, weight, with_adds, dtype=torch.float32):
    cout = weight.shape[0]
    g = (1 + 0.5 * torch.randn(cout, device=DEVICE)).to(dtype)
    beta = (0.5 * torch.randn(cout, device=DEVICE)).to(dtype)
    if not with_adds:
        return g, beta, {}
    time_bias = torch.randn(x.shape[0], cout, device=DEVICE).to(dtype)
    return g, beta, dict(time_bias=time_bias)


@pytest.mark.parametrize(
    "name,cout,with_adds",
    [
        ("333-zeros-first1", 6, True),  # fused epilogue, batch 2, 1-frame first chunk
        ("333-replicate-past1", 6, False),  # fused, cached frame, replicate padding
        ("155-up2x-zeros", 19, True),  # fused, 2x upsample in the loads, odd Cout
        ("133-s2-odd", 130, True),  # wider than FUSED_NORM_MAX_CHANNELS: conv, then norm
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_conv_norm_block_matches_composition(name, cout, with_adds, dtype):
    """``causal_conv3d_norm`` == channel_norm(causal_conv3d(...)) on both of its paths. fp16 runs
    against the fp32 composition of the same fp16-rounded inputs."""
    x, weight, bias, kw, k_len = _case(name, dtype)
    weight = torch.randn(cout, *weight.shape[1:], device=DEVICE) / k_len**0.5 * 2
    bias = torch.randn(cout, device=DEVICE)
    g, beta, adds = _norm_block_args(x, weight, with_adds, dtype)
    if with_adds:
        shape = CF.causal_conv3d(
            x.float(),
            weight,
            bias,
            **dict(kw, past=kw["past"].float() if kw["past"] is not None else None),
        ).shape
        adds["residual"] = rand(*shape, dtype=dtype)
    y = kernels.causal_conv3d_norm(x, weight, bias, g, beta, relu=True, **adds, **kw)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last_3d)
    up = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ref = CF.causal_conv3d_norm(
        x.float(),
        weight.to(dtype).float(),
        bias.to(dtype).float(),
        g.float(),
        beta.float(),
        relu=True,
        **{k: v.float() for k, v in adds.items()},
        **up,
    )
    # The norm divides by the conv output's spread (~2): errors scale with it.
    assert_close_conv(y, ref, 4 * k_len, dtype)
    fused = cout <= kernels.FUSED_NORM_MAX_CHANNELS
    calls = []
    real = kernels.channel_norm
    try:
        kernels.channel_norm = lambda *a, **k: calls.append(1) or real(*a, **k)
        kernels.causal_conv3d_norm(x, weight, bias, g, beta, relu=True, **adds, **kw)
    finally:
        kernels.channel_norm = real
    assert len(calls) == (0 if fused else 1), "fused below the limit, separate pass above it"


@pytest.mark.parametrize("cout", [6, 130])  # fused epilogue, and conv-then-norm
def test_conv_norm_block_rejects_aliased_or_mistyped_residual(cout):
    x, weight, bias, kw, _ = _case("133-s2-odd", torch.float32)
    weight = torch.randn(cout, *weight.shape[1:], device=DEVICE)
    g, beta = torch.ones(cout, device=DEVICE), torch.zeros(cout, device=DEVICE)
    y = kernels.causal_conv3d_norm(x, weight, None, g, beta, **kw)
    with pytest.raises(ValueError, match="residual must not alias out"):
        kernels.causal_conv3d_norm(x, weight, None, g, beta, residual=y, out=y, **kw)
    with pytest.raises(TypeError, match="residual must be a tensor of x's dtype"):
        kernels.causal_conv3d_norm(x, weight, None, g, beta, residual=y.double(), **kw)


def test_full_row_tiles_keep_the_accumulator_in_registers():
    """The fused norm forces BLOCK_N = next_pow2(Cout); the pruning must then bound BLOCK_M so
    the fp32 accumulator stays <= 128x128 (a 256x128 or x512 tile spills on sm_90)."""
    configs = conv_tiles.autotune_configs(with_block_n=False)
    for cout, biggest_m in ((64, 256), (128, 128)):
        bn = max(16, 1 << (cout - 1).bit_length())
        kept = conv_tiles.prune_configs(configs, {"M": 1 << 16, "N": cout}, CIN=64, BLOCK_N=bn)
        assert kept and max(c.kwargs["BLOCK_M"] for c in kept) == biggest_m
        assert all(c.kwargs["BLOCK_M"] * bn <= 128 * 128 for c in kept)


# -- a stream of chunks, history as the engine holds it ------------------------------------------

STREAMS = {  # kernel, padding, stride, Cin, Cout, (H, W), chunk lengths
    "333": ((3, 3, 3), (1, 1, 1), (1, 1, 1), 5, 6, (4, 5), [1, 2, 1, 3]),
    "377": ((3, 7, 7), (1, 3, 3), (1, 1, 1), 3, 4, (3, 4), [1, 1, 2]),
    "133-s2": ((1, 3, 3), (0, 1, 1), (1, 2, 2), 5, 6, (5, 7), [1, 2]),
}


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_kernel_stream_equals_whole_clip(stream, pad_mode):
    """Chunk by chunk, ``past`` being the layer's history (``causal_conv3d_history``, what the
    engine's stream state keeps): the reference layer's output, chunk and whole clip."""
    kernel, padding, stride, cin, cout, (h, w), chunks = STREAMS[stream]
    layer = CausalConv3d(cin, cout, kernel, stride=stride, padding=padding, pad_mode=pad_mode).to(
        DEVICE
    )
    kw = dict(
        history=layer.history,
        space_padding=layer.space_padding,
        stride=stride,
        pad_mode=pad_mode,
    )
    clip = rand(2, cin, sum(chunks), h, w)
    ref_cache, past, outs, start = FeatureCache(), None, [], 0
    k_len = cin * kernel[0] * kernel[1] * kernel[2]
    with torch.no_grad():
        whole = layer(clip)
        for n in chunks:
            chunk = clip[:, :, start : start + n]
            start += n
            y = kernels.causal_conv3d(chunk, layer.weight, layer.bias, past=past, **kw)
            assert_close_conv(y, layer(chunk, ref_cache), k_len, torch.float32)
            outs.append(y)
            if layer.history:
                past = CF.causal_conv3d_history(chunk, past, layer.history)
                assert torch.equal(past, ref_cache.get(layer))
    assert_close_conv(torch.cat(outs, dim=2), whole, k_len, torch.float32)


def test_bad_input_raises_clear_errors(monkeypatch):
    x, weight, bias, kw, _ = _case("333-zeros-first1", torch.float32)
    conv = kernels.causal_conv3d
    with pytest.raises(ValueError, match="input channels"):
        conv(x, weight[:, :3], bias, **kw)
    with pytest.raises(ValueError, match=r"x must have rank 5 \[B, C, T, H, W\]"):
        conv(x[0], weight, bias, **kw)
    with pytest.raises(TypeError, match="x must be float16"):
        conv(x.double(), weight, bias, **kw)
    with pytest.raises(ValueError, match="pad_mode"):
        conv(x, weight, bias, **dict(kw, pad_mode="reflect"))
    with pytest.raises(ValueError, match="stride"):
        conv(x, weight, bias, **dict(kw, stride=(1, 0, 1)))
    with pytest.raises(ValueError, match="history"):
        conv(x, weight, bias, **dict(kw, history=-1))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv(x, weight, bias, **dict(kw, history=0))
    with pytest.raises(ValueError, match="bias"):
        conv(x, weight, bias[:2], **kw)
    with pytest.raises(ValueError, match="past must match"):
        conv(x, weight, bias, **dict(kw, past=rand(2, 5, 1, 4, 7)))
    with pytest.raises(ValueError, match="do not fit"):
        kernels.causal_conv3d_frames(
            x,
            weight,
            bias,
            front=0,
            past=rand(2, 5, 1, 5, 7),
            past_offset=1,
            past_frames=1,
            space_padding=(1, 1),
        )
    y = conv(x, weight, bias, **kw)
    with pytest.raises(ValueError, match="out must be"):
        conv(x, weight, bias, out=y[:, :2], **kw)
    with pytest.raises(ValueError, match="alias"):
        conv(x, weight, bias, out=y, epilogue=Epilogue(residual=y), **kw)
    with pytest.raises(ValueError, match="norm_weight and norm_bias"):
        conv(x, weight, bias, epilogue=Epilogue(norm_weight=bias), **kw)
    with pytest.raises(ValueError, match=r"epilogue.norm_bias must hold C=\d+ elements"):
        conv(x, weight, bias, epilogue=Epilogue(norm_weight=bias, norm_bias=bias[:2]), **kw)
    with pytest.raises(TypeError, match="epilogue.norm_weight must be a torch.Tensor"):
        conv(x, weight, bias, epilogue=Epilogue(norm_weight=[1.0], norm_bias=bias), **kw)
    with pytest.raises(ValueError, match="channel_bias"):
        conv(x, weight, bias, epilogue=Epilogue(channel_bias=bias), **kw)
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="CUDA"):
            conv(x, weight, bias, **kw)


def test_row_count_keeps_the_last_row_tile_below_2_31(monkeypatch):
    """The kernel indexes output voxels in 32 bits and its last row tile runs up to BLOCK_M - 1
    rows past them: a call whose rows would wrap there (negative indices pass the row mask)
    raises before launching; one row fewer than the bound launches. Shapes only (meta tensors)."""
    launched = []
    monkeypatch.setattr(kernels, "_launch", lambda *args: launched.append(args))
    weight = torch.empty(1, 1, 1, 1, 1, device="meta")
    for width, ok in ((kernels.MAX_ROWS, True), (2**31 - 100, False), (2**31, False)):
        x = torch.empty(1, 1, 1, 1, width, device="meta")
        if ok:
            assert kernels.causal_conv3d(x, weight).shape == (1, 1, 1, 1, width)
        else:
            with pytest.raises(ValueError, match="32-bit row index"):
                kernels.causal_conv3d(x, weight)
    assert len(launched) == 1


# -- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "name",
    [
        "333-replicate-past2",
        "377-zeros-past",
        "155-up2x-zeros",
        "133-s2-odd",
        "111-odd",
        "311-t2-first",
    ],
)
def test_gpu_triton_matches_reference(name, dtype):
    x, weight, bias, kw, k_len = _case(name, dtype)
    past = kw["past"]
    y = kernels.causal_conv3d(x, weight, bias, **kw)
    ref = CF.causal_conv3d(
        x.float(),
        weight.to(dtype).float(),
        bias,
        **dict(kw, past=past.float() if past is not None else None),
    )
    assert y.dtype == dtype
    if dtype == torch.bfloat16:
        assert_bf16_close(y, ref, emulated_op("causal_conv3d")(x, weight, bias, **kw))
    else:
        assert_close_conv(y, ref, k_len, dtype)


_SM90_COMPILE = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import cdt_fast.kernels.causal_conv3d_kernel as K

fn = K._causal_conv3d_kernel
pointers = {"x_ptr", "p_ptr", "w_ptr", "bias_ptr", "out_ptr", "g_ptr", "beta_ptr", "cbias_ptr",
            "res_ptr"}
const = dict(KT=3, KH=3, KW=3, ST=1, SH=1, SW=1, HAS_PAST=True, ZERO_PAD=True,
             UPSAMPLE=True, HAS_BIAS=True, NORM=True, RELU=True, HAS_CBIAS=True, HAS_RES=True,
             DOT_PRECISION="tf32", BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, GROUP_M=8,
             sxc=1, spc=1, swo=1, soc=1, src=1)  # what the JIT specialises for channels-last
sig = {n: "constexpr" if n in const else "*bf16" if n in pointers else "fp32" if n == "eps"
       else "i32" for n in fn.arg_names}
# CIN is a run-time int: 48 as the JIT specialises a multiple of 16 (every CDT width but the RGB
# input's); CIN_PAD and K_TOTAL are multiples of 16 by construction
aligned = [n for n in fn.arg_names if n in pointers or n in ("CIN", "CIN_PAD", "K_TOTAL")
           or (n.startswith("s") and n not in const)]
attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
kernel = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=4, num_stages=3))
print("wgmma" in kernel.asm["ptx"], "async_copy_global_to_local" in kernel.asm["ttgir"])
"""


def test_kernel_compiles_for_sm90_with_pipelined_loads():
    """The interpreter never compiles: build the real kernel (every flag on) for Hopper on the
    CPU, and check it uses wgmma and software-pipelined (async-copy) loads."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _SM90_COMPILE], capture_output=True, text=True, env=env, timeout=300
    )
    if proc.returncode and ("ptxas" in proc.stderr or "backend" in proc.stderr.lower()):
        pytest.skip(f"no Triton CUDA toolchain here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True"], proc.stdout


def test_autotune_prune_reads_constexpr_kwargs():
    """On GPU the autotuner prunes with positional args in ``named_args`` and constexprs (CIN) in
    kwargs; the interpreter's single config never prunes, so call it as the autotuner does."""
    import triton

    configs = [
        triton.Config(dict(BLOCK_M=64, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8))
        for bn in (16, 128)
        for bk in (16, 64)
    ]
    kept = conv_tiles.prune_configs(configs, {"M": 1000, "N": 3}, CIN=3, KT=3)
    assert [(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in kept] == [(16, 16)]
    assert len(conv_tiles.prune_configs(configs, {"M": 1000, "N": 128}, CIN=64)) == 4


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "packed"])
def test_weight_layouts_agree_and_only_strided_ones_are_repacked(layout, monkeypatch):
    """The engine holds channels-last weights (cuDNN's layout): the kernel must read them as they
    are, not repack them on every call; a weight with neither channel dim innermost is repacked."""
    x, weight, bias, kw, k_len = _case("333-replicate-past2", torch.float32)
    ref = CF.causal_conv3d(x, weight, bias, **kw)
    if layout == "channels_last":
        weight = weight.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "packed":
        weight = kernels.pack_weight(weight)
    packs = []
    real_pack = kernels.pack_weight
    monkeypatch.setattr(
        kernels, "pack_weight", lambda *a, **k: packs.append(1) or real_pack(*a, **k)
    )
    assert_close_conv(kernels.causal_conv3d(x, weight, bias, **kw), ref, k_len, torch.float32)
    assert len(packs) == (1 if layout == "contiguous" else 0)


def test_gpu_configs_cover_a_three_channel_output():
    """The final conv has Cout=3: the GPU tile list must keep a narrow-N tile after pruning rather
    than fall back to a 128-wide one (which also spilled registers on sm_90)."""
    configs = conv_tiles.autotune_configs(with_block_n=True)
    kept = conv_tiles.prune_configs(configs, {"M": 1 << 16, "N": 3}, CIN=64, KT=3)
    assert kept and all(c.kwargs["BLOCK_N"] == 16 for c in kept)
    assert len(conv_tiles.prune_configs(configs, {"M": 1 << 16, "N": 256}, CIN=256)) >= 8


# -- the C++ backend: its Block is torch's conv then the extension's norm ----------------------


@cpp_test
@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
def test_cpp_conv_norm_block_matches_resnet_block(pad_mode):
    """The engine's Block op with backend="cpp" (no fused kernel there: torch's conv, then the
    extension's norm, composed by the table) reproduces a ResnetBlock's two Blocks with the time
    bias and the residual, over a stream of a 1-frame then a 2-frame chunk."""
    from cdt_fast.engine.dispatch import COMPOSED, OpTable

    table = OpTable("cpp", env={})
    assert table.report()["causal_conv3d_norm"][0] == COMPOSED
    norms = []
    real_norm = table.table["channel_norm"]
    table.table["channel_norm"] = dataclasses.replace(
        real_norm, fn=lambda *a, **k: norms.append(1) or real_norm.fn(*a, **k)
    )
    res = ResnetBlock(5, 7, time_emb_dim=4, pad_mode=pad_mode).eval()
    with torch.no_grad():
        for p in res.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        emb = torch.randn(2, 4)
        conv1, norm1, _ = res.block1.block
        conv2, norm2, _ = res.block2.block
        tb = res.time_bias(emb)
        past1 = past2 = None
        for frames in (1, 2):
            x = cpp.rand(2, 5, frames, 7, 9)
            conv = dict(history=2, space_padding=(1, 1), pad_mode=pad_mode)
            block1 = (conv1.weight, conv1.bias, norm1.g, norm1.b, norm1.eps)
            h = table("causal_conv3d_norm", x, *block1, past=past1, relu=True, time_bias=tb, **conv)
            block2 = (conv2.weight, conv2.bias, norm2.g, norm2.b, norm2.eps)
            skip = res.res_conv(x)
            y = table(
                "causal_conv3d_norm", h, *block2, past=past2, relu=True, residual=skip, **conv
            )
            h_ref = CF.causal_conv3d(x, conv1.weight, conv1.bias, past=past1, **conv)
            h_ref = CF.channel_norm(h_ref, norm1.g, norm1.b, relu=True) + tb
            y_ref = CF.causal_conv3d(h_ref, conv2.weight, conv2.bias, past=past2, **conv)
            y_ref = CF.channel_norm(y_ref, norm2.g, norm2.b, relu=True) + skip
            cpp.check(y, y_ref, torch.float32)
            if past1 is None:  # the stream's first chunk is the layer's own forward
                cpp.check(y, res(x, emb), torch.float32)
            past1 = CF.causal_conv3d_history(x, past1, 2)
            past2 = CF.causal_conv3d_history(h, past2, 2)
    assert table.table["channel_norm"].backend == "cpp" and len(norms) == 4
