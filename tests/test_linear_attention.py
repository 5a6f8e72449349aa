"""Parity of the linear attention's backends with cdt_fast.functional.linear_attention and the
reference ``attention_block``: the fused Triton block (kernels/linear_attention.py) under the
Triton interpreter on CPU (real kernels on CUDA), and the C++ extension (cdt_fast.cpp_ops; its
CUDA build on a GPU)."""

import pytest
import torch

pytest.importorskip("triton")

from cdt_fast import _cpp_lib, cpp_ops
from cdt_fast import functional as CF
from cdt_fast.kernels.linear_attention import (
    LinearAttentionWeights,
    linear_attention,
    linear_attention_block,
)
from cdt_fast.reference.layers import LinearAttention, attention_block

from . import cpp_backend as cpp
from .bf16_emulation import emulated_op
from .cpp_backend import cpp_test, cuda_test
from .helpers import DEVICE, assert_bf16_close


def _weights(c, heads=1, dim_head=None, bias=True, k_gain=1.0, c_out=None):
    """Random 1x1-conv weights of a LinearAttention(c, heads, dim_head) (5-D, as the layer's)."""
    hidden = heads * (dim_head or c)
    w_qkv = torch.randn(3 * hidden, c, 1, 1, 1, device=DEVICE) * c**-0.5
    w_qkv[hidden : 2 * hidden] *= k_gain  # large k logits stress the online softmax over positions
    w_out = torch.randn(c_out or c, hidden, 1, 1, 1, device=DEVICE) * hidden**-0.5
    b_out = torch.randn(c_out or c, device=DEVICE) if bias else None
    return w_qkv, w_out, b_out


def _activation(shape, dtype=torch.float32, channels_last=True):
    x = (torch.randn(shape, device=DEVICE) + 0.3).to(dtype)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


CASES = [  # (shape [B, C, T, H, W], heads, dim_head, channels_last)
    ((2, 12, 3, 5, 7), 1, None, True),
    ((2, 20, 1, 5, 7), 1, None, False),
    ((1, 12, 2, 5, 7), 2, 10, True),  # hidden (20) != C (12), two heads
    ((1, 80, 1, 3, 5), 1, None, True),  # head wider than one channel block (two d, e blocks)
    ((2, 3, 2, 1, 1), 1, None, False),  # one position per frame
]


@pytest.mark.parametrize("shape,heads,dim_head,channels_last", CASES)
def test_attention_matches_functional_fp32(shape, heads, dim_head, channels_last):
    x = _activation(shape, channels_last=channels_last)
    w_qkv, w_out, b_out = _weights(shape[1], heads, dim_head)
    y = linear_attention(x, w_qkv, w_out, b_out, heads=heads)
    ref = CF.linear_attention(x, w_qkv, w_out, b_out, heads=heads)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_position_slices_combine_exactly(splits):
    # 35 positions in slices of 16: the last slice is short; large k logits differ per slice.
    x = _activation((2, 12, 2, 5, 7))
    w_qkv, w_out, b_out = _weights(12, k_gain=8.0)
    weights = LinearAttentionWeights.pack(w_qkv, w_out, b_out, scale=0.37)
    ref = CF.linear_attention(x, w_qkv, w_out, b_out, scale=0.37)
    torch.testing.assert_close(weights(x, splits=splits), ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_block_matches_reference_attention_block(channels_last, bias):
    torch.manual_seed(3)
    layer = attention_block(20).to(DEVICE).eval()
    with torch.no_grad():
        layer.fn.norm.g.normal_()
        layer.fn.norm.b.normal_()
        if not bias:
            layer.fn.fn.to_out.bias = None
    x = _activation((2, 20, 2, 5, 7), channels_last=channels_last)
    attn: LinearAttention = layer.fn.fn
    with torch.no_grad():
        y = linear_attention_block(
            x,
            layer.fn.norm.g,
            layer.fn.norm.b,
            attn.to_qkv.weight,
            attn.to_out.weight,
            attn.to_out.bias,
            heads=attn.heads,
            scale=attn.scale,
            eps=layer.fn.norm.eps,
        )
        ref = layer(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5)


def _rounded(t, dtype):
    return None if t is None else t.to(dtype).float()


@pytest.mark.parametrize(
    "shape,heads,dim_head", [((2, 12, 2, 5, 7), 1, None), ((1, 20, 1, 5, 7), 2, 10)]
)
def test_block_fp16_against_fp32_reference(shape, heads, dim_head):
    x = _activation(shape, torch.float16)
    w_qkv, w_out, b_out = _weights(shape[1], heads, dim_head)
    g, b = torch.randn(shape[1], device=DEVICE), torch.randn(shape[1], device=DEVICE)
    y = linear_attention_block(x, g, b, w_qkv, w_out, b_out, heads=heads)
    assert y.dtype == torch.float16
    # fp32 reference from the fp16-rounded inputs and weights (the kernel computes with those).
    normed = CF.channel_norm(x.float(), g, b)
    ref = x.float() + CF.linear_attention(
        normed,
        _rounded(w_qkv, torch.float16),
        _rounded(w_out, torch.float16),
        _rounded(b_out, torch.float16),
        heads=heads,
    )
    # fp16 roundings of the normed input, qkv, softmax weights and the output: ~1e-3 relative,
    # over reductions of C (projections) and H*W positions (context).
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)


def test_packed_weights_are_reusable_and_match_the_one_shot_launchers():
    x = _activation((2, 12, 2, 5, 7))
    w_qkv, w_out, b_out = _weights(12)
    g, b = torch.randn(12, device=DEVICE), torch.randn(12, device=DEVICE)
    packed = LinearAttentionWeights.pack(w_qkv, w_out, b_out, norm_g=g, norm_b=b)
    once = linear_attention_block(x, g, b, w_qkv, w_out, b_out)
    torch.testing.assert_close(packed(x, residual=True), once, rtol=0, atol=0)
    torch.testing.assert_close(
        packed(x * 2, residual=True),
        linear_attention_block(x * 2, g, b, w_qkv, w_out, b_out),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("channels_last", [True, False])
def test_out_buffer_and_in_place_block(channels_last):
    x = _activation((2, 12, 2, 5, 7), channels_last=channels_last)
    w_qkv, w_out, b_out = _weights(12)
    g, b = torch.randn(12, device=DEVICE), torch.randn(12, device=DEVICE)
    expected = x + CF.linear_attention(CF.channel_norm(x, g, b), w_qkv, w_out, b_out)
    out = torch.empty_like(x)
    assert linear_attention_block(x, g, b, w_qkv, w_out, b_out, out=out) is out
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=2e-5)
    assert linear_attention_block(x, g, b, w_qkv, w_out, b_out, out=x) is x  # in place
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=2e-5)
    with pytest.raises(ValueError, match="out must be"):
        linear_attention(x, w_qkv, w_out, b_out, out=out[:, :, :1])
    with pytest.raises(ValueError, match="collapse"):
        linear_attention(
            x, w_qkv, w_out, b_out, out=torch.empty(2, 12, 2, 6, 7, device=DEVICE)[:, :, :, :5]
        )


def test_bad_arguments_are_named():
    x = _activation((1, 12, 1, 5, 7))
    w_qkv, w_out, b_out = _weights(12)
    with pytest.raises(ValueError, match="w_qkv"):
        linear_attention(x, w_qkv[:35], w_out, b_out)
    with pytest.raises(ValueError, match="w_qkv"):
        linear_attention(x, w_qkv, w_out, b_out, heads=5)
    with pytest.raises(ValueError, match="w_out"):
        linear_attention(x, w_qkv, w_out[:, :7], b_out)
    with pytest.raises(ValueError, match="b_out"):
        linear_attention(x, w_qkv, w_out, b_out[:3])
    with pytest.raises(ValueError, match=r"x must be \[B, C=12"):
        linear_attention(x[:, :6], w_qkv, w_out, b_out)
    with pytest.raises(ValueError, match="heads"):
        linear_attention(x, w_qkv, w_out, b_out, heads=0)
    wide_out = _weights(12, c_out=16)
    with pytest.raises(ValueError, match="residual"):
        linear_attention_block(x, torch.ones(12), torch.zeros(12), *wide_out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 64, 3, 17, 23), (1, 320, 2, 45, 45), (2, 192, 1, 90, 90)])
def test_gpu_block_dtypes(dtype, shape):
    c = shape[1]
    x = _activation(shape, dtype)
    w_qkv, w_out, b_out = _weights(c)
    g, b = torch.randn(c, device=DEVICE), torch.randn(c, device=DEVICE)
    y = linear_attention_block(x, g, b, w_qkv, w_out, b_out)
    x64 = x.double()
    ref = x64 + CF.linear_attention(
        CF.channel_norm(x64, g.double(), b.double()),
        w_qkv.to(dtype).double(),
        w_out.to(dtype).double(),
        b_out.to(dtype).double(),
    )
    if dtype == torch.bfloat16:
        emulated = emulated_op("linear_attention_block")(x, g, b, w_qkv, w_out, b_out)
        assert_bf16_close(y, ref, emulated)
    else:
        tol = {torch.float32: 1e-4, torch.float16: 1e-2}[dtype]
        torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "positions,programs,block,wanted",
    [
        (518400, 8, 128, None),
        (2025, 18 * 16, 128, None),
        (35, 4, 16, None),
        (35, 4, 16, 3),
        (35, 1, 16, 100),
        (1, 1, 16, None),
    ],
)
def test_position_slices_cover_every_position_once(positions, programs, block, wanted):
    from cdt_fast.kernels.linear_attention_passes import slices

    count, length = slices(positions, programs, block, wanted)
    assert length % block == 0 and count >= 1
    assert (count - 1) * length < positions <= count * length  # no empty slice, none missing


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c", [3, 64, 384])
def test_projection_autotune_pruning_fits_shared_memory(dtype, c):
    from cdt_fast.kernels import linear_attention_tiles as op

    w = torch.empty(c, 3 * c, dtype=dtype)
    block_k = op.block_width(c, 1 << 30)
    kept = op.prune_project_configs(
        op.PROJECT_CONFIGS, {"w_ptr": w, "N_OUT": 3 * c}, BLOCK_K=block_k
    )
    size = w.element_size()
    assert kept and all(
        cfg.kwargs["BLOCK_M"] * block_k * size <= op.X_TILE_BYTES
        and cfg.kwargs["BLOCK_N"] * block_k * size * cfg.num_stages <= op.W_TILE_BYTES
        for cfg in kept
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter stand-in for GPU autotuning")
def test_autotuned_path_in_place(monkeypatch, tmp_path):
    from cdt_fast.kernels import _tiles
    from cdt_fast.kernels import linear_attention_kernel as op

    from .fused_autotune_on_cpu import tune_on_cpu

    tiles = tmp_path / "tiles.json"
    for tuned in (op.norm_project_tuned, op.context_partial_tuned, op.attention_apply_tuned):
        tune_on_cpu(monkeypatch, tuned, tiles, configs=2)
    x = _activation((1, 20, 2, 5, 7))
    w_qkv, w_out, b_out = _weights(20)
    g, b = torch.randn(20, device=DEVICE), torch.randn(20, device=DEVICE)
    expected = x + CF.linear_attention(CF.channel_norm(x, g, b), w_qkv, w_out, b_out)
    assert linear_attention_block(x, g, b, w_qkv, w_out, b_out, out=x) is x
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=2e-5)
    assert op.attention_apply_tuned.cache and op.norm_project_tuned.cache
    # every tuned kernel's winner went to the tile file, keyed by its shape class
    kernels = {kernel for _, kernel, _ in _tiles.load_tiles(tiles)}
    assert kernels == {"norm_project", "context_partial", "attention_apply"}


# -- the C++ extension (cdt_fast.cpp_ops; its CUDA build on a GPU) ------------------------------


@cpp_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
@pytest.mark.parametrize("shape", cpp.SHAPES)
@pytest.mark.parametrize("heads,dim_head", [(1, 5), (2, 3)])
def test_cpp_linear_attention(dtype, shape, heads, dim_head):
    c = shape[1]
    hidden = heads * dim_head
    x = cpp.rand(*shape, dtype=dtype)
    w_qkv = cpp.rand(3 * hidden, c, 1, 1, 1, dtype=dtype)
    w_out, b_out = cpp.rand(c, hidden, 1, 1, 1, dtype=dtype), cpp.rand(c, dtype=dtype)
    out = cpp_ops.linear_attention(x, w_qkv, w_out, b_out, heads=heads)
    ref = CF.linear_attention(*cpp.up(x, w_qkv, w_out, b_out), heads=heads)
    cpp.check(out, ref, dtype)
    out = cpp_ops.linear_attention(x, w_qkv, w_out, None, heads=heads, scale=0.3)
    ref = CF.linear_attention(*cpp.up(x, w_qkv, w_out), None, heads=heads, scale=0.3)
    cpp.check(out, ref, dtype)


@cpp_test
def test_cpp_linear_attention_cuda_scratch_holds_a_partial_context_per_split():
    """The CUDA attention sums per-split partial contexts in a fixed order (no atomics): the
    scratch the caller allocates holds k statistics, one d x d context per (split, frame, head)
    and q statistics; splits = min(ceil(1024 / (frames * heads * ceil(d / 32)^2)),
    ceil(positions / 256))."""
    floats = _cpp_lib.library().linear_attention_workspace_floats
    assert floats(1, 100, 1, 8) == 2 * 8 + 1 * 8 * 8 + 100 * 2  # one split
    assert floats(4, 600, 1, 40) == 4 * 40 * 2 + 3 * 4 * 40 * 40 + 4 * 600 * 2  # 3 splits
    assert floats(1, 4096, 1, 8) == 2 * 8 + 16 * 8 * 8 + 4096 * 2  # 16 splits


@cpp_test
@pytest.mark.parametrize("shape", cpp.SHAPES)
def test_cpp_linear_attention_block_matches_layer(shape):
    block = attention_block(shape[1]).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        x = cpp.rand(*shape)
        attn, norm = block.fn.fn, block.fn.norm
        out = cpp_ops.linear_attention_block(
            x,
            norm.g,
            norm.b,
            attn.to_qkv.weight,
            attn.to_out.weight,
            attn.to_out.bias,
            heads=attn.heads,
            scale=attn.scale,
            eps=norm.eps,
        )
        cpp.check(out, block(x), torch.float32)


@cuda_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
def test_cuda_linear_attention(dtype):
    """A head wide enough for several tiles and 3 position splits (d = 40, N = 600), and a narrow
    one with 16 splits of 4096 positions summed in order (d = 8); a second run gives the same
    bits."""

    def r(*shape, scale=1.0):
        return cpp.rand(*shape, dtype=dtype, scale=scale, device="cuda")

    xa = r(2, 24, 2, 20, 30)
    wq, wo, bo = r(3 * 40, 24, 1, 1, 1, scale=0.3), r(24, 40, 1, 1, 1), r(24)
    xn = r(1, 8, 1, 64, 64)
    wqn, won = r(3 * 8, 8, 1, 1, 1, scale=0.5), r(8, 8, 1, 1, 1)
    cases = [
        (
            "linear_attention d=40 N=600",
            lambda: cpp_ops.linear_attention(xa, wq, wo, bo, heads=1),
            lambda: CF.linear_attention(*cpp.up(xa, wq, wo, bo), heads=1),
        ),
        (
            "linear_attention d=8 N=4096",
            lambda: cpp_ops.linear_attention(xn, wqn, won, None, heads=1),
            lambda: CF.linear_attention(*cpp.up(xn, wqn, won), None, heads=1),
        ),
    ]
    cpp.check_on_cuda(cases, dtype)
