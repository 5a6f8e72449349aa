"""Parity of the norm block's backends with cdt_fast.functional.channel_norm and the reference
layers: the Triton kernel (kernels/channel_norm.py) under the Triton interpreter on CPU (real
kernels on CUDA), and the C++ extension (cdt_fast.cpp_ops; its CUDA build on a GPU)."""

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from cdt_fast import cpp_ops
from cdt_fast import functional as CF
from cdt_fast.kernels.channel_norm import channel_norm, channel_norm_tile
from cdt_fast.reference.layers import Block, ChannelLayerNorm, ResnetBlock

from . import cpp_backend as cpp
from .bf16_emulation import emulated_op
from .cpp_backend import cpp_test, cuda_test
from .helpers import DEVICE, INTERPRETED, assert_bf16_close


def _activation(shape, dtype=torch.float32, channels_last=True, device=DEVICE):
    x = torch.randn(shape, device=device) * 2 + 0.5  # a mean away from 0 exercises the centring
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


def _affine(c, device=DEVICE):
    return torch.randn(c, device=device), torch.randn(c, device=device)


def _tolerance(dtype):
    # The kernel rounds once, in the activation dtype; the statistics are fp32 either way.
    return {
        torch.float32: (1e-5, 1e-5),
        torch.float16: (2e-3, 4e-3),
    }[dtype]


def _reference(x, g, b, **kw):
    """The op contract evaluated in fp32 from the same (rounded) inputs."""
    kw = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return CF.channel_norm(x.float(), g.float(), b.float(), **kw)


CASES = [  # (shape [B, C, T, H, W], channels_last)
    ((2, 12, 3, 5, 7), True),
    ((2, 20, 1, 5, 7), False),
    ((1, 3, 2, 17, 23), True),
    ((2, 64, 1, 3, 5), True),
]


@pytest.mark.parametrize("shape,channels_last", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "relu,with_time_bias,with_residual",
    [
        (False, False, False),
        (True, False, False),
        (True, True, False),
        (True, False, True),
        (False, True, True),
    ],
)
def test_matches_functional(shape, channels_last, dtype, relu, with_time_bias, with_residual):
    x = _activation(shape, dtype, channels_last)
    g, b = _affine(shape[1])
    kw = dict(relu=relu)
    if with_time_bias:
        kw["time_bias"] = torch.randn(shape[0], shape[1], device=DEVICE).to(dtype)
    if with_residual:
        kw["residual"] = _activation(shape, dtype, not channels_last)
    y = channel_norm(x, g, b, **kw)
    assert y.dtype == dtype and y.shape == x.shape
    rtol, atol = _tolerance(dtype)
    torch.testing.assert_close(y.float(), _reference(x, g, b, **kw), rtol=rtol, atol=atol)
    if dtype == torch.float32:  # the op contract itself, same dtype (and layout without residual)
        ref = CF.channel_norm(x, g, b, **kw)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        assert with_residual or y.stride() == ref.stride()


def test_keeps_memory_format():
    x = _activation((2, 12, 3, 5, 7), channels_last=True)
    g, b = _affine(12)
    assert channel_norm(x, g, b).is_contiguous(memory_format=torch.channels_last_3d)
    assert channel_norm(x.contiguous(), g, b).is_contiguous()


def test_time_bias_as_5d_and_eps():
    x = _activation((2, 20, 2, 5, 7))
    g, b = _affine(20)
    tb = torch.randn(2, 20, 1, 1, 1, device=DEVICE)
    y = channel_norm(x, g.reshape(1, 20, 1, 1, 1), b, 1e-2, relu=True, time_bias=tb)
    torch.testing.assert_close(
        y, CF.channel_norm(x, g, b, 1e-2, relu=True, time_bias=tb), rtol=1e-5, atol=1e-5
    )


def test_constant_voxels_normalise_to_bias():
    # Zero variance: eps keeps it finite and the output is exactly b (upstream's behaviour).
    x = torch.full((1, 12, 1, 5, 7), 3.0, device=DEVICE)
    g, b = _affine(12)
    y = channel_norm(x, g, b)
    torch.testing.assert_close(y, b.reshape(1, 12, 1, 1, 1).expand_as(y), rtol=0, atol=1e-6)


def test_non_collapsible_layouts():
    # T, H, W that do not collapse into one stride: H cropped (x, out), W strided (residual).
    g, b = _affine(12)
    x = _activation((2, 12, 3, 6, 7), channels_last=False)[:, :, :, :5]
    res = _activation((2, 12, 3, 5, 14))[..., ::2]
    out = torch.empty(2, 12, 3, 6, 7, device=DEVICE)[:, :, :, 1:]
    y = channel_norm(x, g, b, relu=True, residual=res, out=out)
    assert y is out
    torch.testing.assert_close(
        y, CF.channel_norm(x, g, b, relu=True, residual=res), rtol=1e-5, atol=1e-5
    )


def test_out_may_alias_input_and_residual():
    x = _activation((2, 12, 3, 5, 7))
    res = _activation((2, 12, 3, 5, 7))
    g, b = _affine(12)
    expected = CF.channel_norm(x, g, b, relu=True, residual=res)
    assert channel_norm(x, g, b, relu=True, residual=res, out=res) is res
    torch.testing.assert_close(res, expected, rtol=1e-5, atol=1e-5)
    expected = CF.channel_norm(x, g, b)
    channel_norm(x, g, b, out=x)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


def test_residual_dtype_promotes_like_the_reference():
    x = _activation((1, 12, 1, 5, 7), torch.float16)
    res = _activation((1, 12, 1, 5, 7))
    g, b = _affine(12)
    y = channel_norm(x, g, b, residual=res)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, _reference(x, g, b, residual=res), rtol=2e-3, atol=2e-3)


def test_bad_arguments_are_named():
    x = _activation((2, 12, 1, 5, 7))
    g, b = _affine(12)
    with pytest.raises(ValueError, match="g must hold C=12"):
        channel_norm(x, g[:5], b)
    with pytest.raises(ValueError, match="time_bias"):
        channel_norm(x, g, b, time_bias=torch.zeros(2, 11, device=DEVICE))
    with pytest.raises(ValueError, match="residual"):
        channel_norm(x, g, b, residual=x[:, :, :, :4])
    with pytest.raises(ValueError, match="out must be"):
        channel_norm(x, g, b, out=torch.empty(2, 12, 1, 5, 7, device=DEVICE, dtype=torch.float16))
    with pytest.raises(ValueError, match="rank 5"):
        channel_norm(x[0], g, b)
    with pytest.raises(TypeError, match="float"):
        channel_norm(x.to(torch.int32), g, b)


def test_reference_layers():
    """ChannelLayerNorm, Block and a ResnetBlock (time bias and shortcut adds) rebuilt on the
    kernel give the layers' outputs."""
    torch.manual_seed(1)
    norm = ChannelLayerNorm(12).to(DEVICE)
    with torch.no_grad():
        norm.g.normal_()
        norm.b.normal_()
    x = _activation((2, 12, 3, 5, 7))
    torch.testing.assert_close(
        channel_norm(x, norm.g, norm.b, norm.eps), norm(x), rtol=1e-5, atol=1e-5
    )

    res = ResnetBlock(12, 20, time_emb_dim=8).to(DEVICE).eval()
    with torch.no_grad():
        for module in res.modules():
            if isinstance(module, ChannelLayerNorm):
                module.g.normal_()
                module.b.normal_()
    t_emb = torch.randn(2, 8, device=DEVICE)
    with torch.no_grad():
        conv1, norm1, _ = res.block1.block
        conv2, norm2, _ = res.block2.block
        h = channel_norm(conv1(x), norm1.g, norm1.b, relu=True)
        torch.testing.assert_close(h, res.block1(x), rtol=1e-5, atol=1e-5)
        h = channel_norm(conv1(x), norm1.g, norm1.b, relu=True, time_bias=res.mlp(t_emb))
        y = channel_norm(conv2(h), norm2.g, norm2.b, relu=True, residual=res.res_conv(x))
        torch.testing.assert_close(y, res(x, t_emb), rtol=1e-4, atol=1e-5)
    assert isinstance(res.block2, Block)


@triton.jit
def _epilogue_demo_kernel(
    acc_ptr, g_ptr, b_ptr, out_ptr, M, C, eps, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr
):
    # Stands in for a conv kernel: its fp32 accumulator tile holds every output channel.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    mask = (rows < M)[:, None] & mask_c[None, :]
    acc = tl.load(acc_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0)
    g = tl.load(g_ptr + cols, mask=mask_c, other=0.0)
    b = tl.load(b_ptr + cols, mask=mask_c, other=0.0)
    y = channel_norm_tile(
        acc, g, b, 0.0, 0.0, mask_c, C, eps, RELU=True, HAS_TIME_BIAS=False, HAS_RESIDUAL=False
    )
    tl.store(out_ptr + rows[:, None] * C + cols[None, :], y, mask=mask)


def test_tile_helper_as_a_conv_epilogue():
    x = _activation((1, 20, 1, 5, 7))
    g, b = _affine(20)
    rows = x.permute(0, 2, 3, 4, 1).reshape(-1, 20).contiguous()
    out = torch.empty_like(rows)
    _epilogue_demo_kernel[(triton.cdiv(rows.shape[0], 8),)](
        rows, g, b, out, rows.shape[0], 20, 1e-5, BLOCK_M=8, BLOCK_C=32
    )
    expected = CF.channel_norm(x, g, b, relu=True).permute(0, 2, 3, 4, 1).reshape(-1, 20)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 64, 3, 17, 23), (1, 320, 2, 45, 45), (2, 3, 1, 64, 64)])
def test_gpu_dtypes(dtype, shape):
    x = _activation(shape, dtype)
    g, b = _affine(shape[1])
    tb = torch.randn(shape[0], shape[1], device=DEVICE).to(dtype)
    res = _activation(shape, dtype)
    y = channel_norm(x, g, b, relu=True, time_bias=tb, residual=res)
    ref = _reference(
        x.double(), g.double(), b.double(), relu=True, time_bias=tb.double(), residual=res.double()
    )
    if dtype == torch.bfloat16:
        emulated = emulated_op("channel_norm")(x, g, b, relu=True, time_bias=tb, residual=res)
        assert_bf16_close(y, ref, emulated)
    else:
        rtol, atol = _tolerance(dtype)
        torch.testing.assert_close(y.float(), ref.float(), rtol=rtol, atol=atol)


def test_autotune_pruning_keeps_tiles_in_range():
    from cdt_fast.kernels.channel_norm import _CONFIGS, _prune_configs

    for block_c in (16, 64, 512, 4096):
        kept = _prune_configs(_CONFIGS, {}, BLOCK_C=block_c)
        assert kept, block_c
        tiles = {c.kwargs["BLOCK_M"] * block_c for c in kept}
        assert all(1024 <= t <= 16384 for t in tiles) or len(kept) == 1


@pytest.mark.skipif(not INTERPRETED, reason="the interpreter stand-in for GPU autotuning")
def test_autotuned_path_in_place(monkeypatch, tmp_path):
    from cdt_fast.kernels import channel_norm as op

    from .fused_autotune_on_cpu import tune_on_cpu

    tune_on_cpu(monkeypatch, op._channel_norm_tuned, tmp_path / "tiles.json")
    x = _activation((2, 20, 2, 5, 7))
    res = _activation((2, 20, 2, 5, 7))
    g, b = _affine(20)
    expected = CF.channel_norm(x, g, b, relu=True, residual=res)
    assert channel_norm(x, g, b, relu=True, residual=res, out=x) is x
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    assert op._channel_norm_tuned.cache  # the tuned branch ran and chose a config


# -- the C++ extension (cdt_fast.cpp_ops; its CUDA build on a GPU) ------------------------------


@cpp_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
@pytest.mark.parametrize("shape", cpp.SHAPES)
@pytest.mark.parametrize(
    "relu,bias_kind,with_residual",
    [(False, None, False), (True, "bc", True), (True, "bc111_b1", False)],
)
def test_cpp_channel_norm(dtype, shape, relu, bias_kind, with_residual):
    b, c = shape[:2]
    x = cpp.rand(*shape, dtype=dtype, scale=2.0) + 0.5
    g, beta = cpp.rand(1, c, 1, 1, 1, dtype=dtype), cpp.rand(c, dtype=dtype)
    tb = {
        None: None,
        "bc": cpp.rand(b, c, dtype=dtype),
        "bc111_b1": cpp.rand(1, c, 1, 1, 1, dtype=dtype),
    }[bias_kind]
    res = cpp.rand(*shape, dtype=dtype) if with_residual else None
    out = cpp_ops.channel_norm(x, g, beta, relu=relu, time_bias=tb, residual=res)
    up = cpp.up
    ref = CF.channel_norm(*up(x, g, beta), relu=relu, time_bias=up(tb)[0], residual=up(res)[0])
    assert out.dtype == dtype and out.is_contiguous(memory_format=cpp.CL)
    cpp.check(out, ref, dtype)


@cpp_test
def test_cpp_channel_norm_any_input_layout_and_eps():
    x = cpp.rand(2, 6, 3, 5, 4)
    g, b = cpp.rand(6), cpp.rand(6)
    for inp in (
        x,
        x.contiguous(memory_format=cpp.CL),
        x.transpose(3, 4).contiguous().transpose(3, 4),
    ):
        out = cpp_ops.channel_norm(inp, g, b, 1e-3)
        cpp.check(out, CF.channel_norm(x, g, b, 1e-3), torch.float32)


@cpp_test
def test_cpp_resnet_block_adds_match_layer():
    """Block 1 + time bias, block 2 + residual: the ResnetBlock's norm epilogues."""
    block = ResnetBlock(4, 6, time_emb_dim=8).eval()
    x, temb = cpp.rand(2, 4, 3, 5, 7), cpp.rand(2, 8)
    with torch.no_grad():
        ref = block(x, temb)
        n1, n2 = block.block1.block[1], block.block2.block[1]
        h = cpp_ops.channel_norm(
            block.block1.block[0](x), n1.g, n1.b, n1.eps, relu=True, time_bias=block.time_bias(temb)
        )
        h = block.block2.block[0](h)
        out = cpp_ops.channel_norm(h, n2.g, n2.b, n2.eps, relu=True, residual=block.res_conv(x))
    cpp.check(out, ref, torch.float32)


@cpp_test
def test_cpp_channel_norm_bad_input_is_named():
    x = cpp.rand(1, 4, 2, 3, 3)
    g = b = torch.ones(4)
    with pytest.raises(TypeError, match="x must be float32"):
        cpp_ops.channel_norm(x.double(), g, b)
    with pytest.raises(ValueError, match="rank 5"):
        cpp_ops.channel_norm(x[0], g, b)
    with pytest.raises(ValueError, match="g must have 4 elements"):
        cpp_ops.channel_norm(x, torch.ones(3), b)
    with pytest.raises(ValueError, match="residual"):
        cpp_ops.channel_norm(x, g, b, residual=x[:, :, :1])


@cuda_test
@pytest.mark.parametrize("dtype", cpp.DTYPES)
def test_cuda_channel_norm(dtype):
    """Both vector-width paths (C = 16 and C = 5), with ReLU, time bias and residual; a second
    run gives the same bits."""
    cases = []
    for c in (16, 5):
        x = cpp.rand(2, c, 3, 17, 23, dtype=dtype, scale=2.0, device="cuda")
        res = cpp.rand(2, c, 3, 17, 23, dtype=dtype, device="cuda")
        g, b, tb = (cpp.rand(*s, dtype=dtype, device="cuda") for s in ((c,), (c,), (2, c)))
        cases.append(
            (
                f"channel_norm C={c}",
                lambda x=x, g=g, b=b, tb=tb, res=res: cpp_ops.channel_norm(
                    x, g, b, relu=True, time_bias=tb, residual=res
                ),
                lambda x=x, g=g, b=b, tb=tb, res=res: CF.channel_norm(
                    *cpp.up(x, g, b), relu=True, time_bias=tb.float(), residual=res.float()
                ),
            )
        )
    cpp.check_on_cuda(cases, dtype)
