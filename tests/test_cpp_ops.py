"""CPU parity of the compiled stages (cdt_fast._cpp_lib over cdt_fast._C) with the op contract
(cdt_fast.functional) and the reference layers: fp32 to ~1e-5, fp16/bf16 to their precision
(against the fp32 contract on the same rounded inputs), odd shapes, batch 2, 1-frame chunks,
both pad modes. Copies and the DDIM/uint8 epilogue must match exactly."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cdt_fast import _cpp_lib as L
from cdt_fast import functional as CF
from cdt_fast.reference import layers

from .graph_stand_in import host_reads_of

pytestmark = pytest.mark.skipif(
    not L.is_available(),
    reason=f"cdt_fast._C not usable: {L.unavailable_reason()} (build: pip install -e .)",
)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) of a stage's output against the fp32 contract: fp32 is reduction-order noise; the
# half types are the rounding of the output plus that of the (tiny) reductions' inputs.
TOL = {torch.float32: (2e-5, 1e-5), torch.float16: (1e-2, 5e-3), torch.bfloat16: (8e-2, 2e-2)}
# [B, C, T, H, W]: odd spatial sizes, channel counts not powers of two, 1-frame chunks, batch 2.
SHAPES = [(2, 5, 3, 7, 9), (1, 12, 1, 17, 23), (2, 3, 2, 1, 1)]
CL = torch.channels_last_3d


def rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape) * scale).to(dtype)


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def up(*tensors):
    """fp32 copies of the (rounded) inputs: the oracle runs the contract on these."""
    return [None if t is None else t.float() for t in tensors]


# ---- channel norm ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "relu,bias_kind,with_residual",
    [(False, None, False), (True, "bc", True), (True, "bc111_b1", False)],
)
def test_channel_norm(dtype, shape, relu, bias_kind, with_residual):
    b, c = shape[:2]
    x = rand(*shape, dtype=dtype, scale=2.0) + 0.5
    g, beta = rand(1, c, 1, 1, 1, dtype=dtype), rand(c, dtype=dtype)
    tb = {None: None, "bc": rand(b, c, dtype=dtype), "bc111_b1": rand(1, c, 1, 1, 1, dtype=dtype)}[
        bias_kind
    ]
    res = rand(*shape, dtype=dtype) if with_residual else None
    out = L.channel_norm(x, g, beta, relu=relu, time_bias=tb, residual=res)
    ref = CF.channel_norm(*up(x, g, beta), relu=relu, time_bias=up(tb)[0], residual=up(res)[0])
    assert out.dtype == dtype and out.is_contiguous(memory_format=CL)
    check(out, ref, dtype)


def test_channel_norm_any_input_layout_and_eps():
    x = rand(2, 6, 3, 5, 4)
    g, b = rand(6), rand(6)
    for inp in (x, x.contiguous(memory_format=CL), x.transpose(3, 4).contiguous().transpose(3, 4)):
        check(L.channel_norm(inp, g, b, 1e-3), CF.channel_norm(x, g, b, 1e-3), torch.float32)


def test_resnet_block_adds_match_layer():
    """Block 1 + time bias, block 2 + residual: the ResnetBlock's norm epilogues."""
    block = layers.ResnetBlock(4, 6, time_emb_dim=8).eval()
    x, temb = rand(2, 4, 3, 5, 7), rand(2, 8)
    with torch.no_grad():
        ref = block(x, temb)
        n1, n2 = block.block1.block[1], block.block2.block[1]
        h = L.channel_norm(
            block.block1.block[0](x), n1.g, n1.b, n1.eps, relu=True, time_bias=block.time_bias(temb)
        )
        h = block.block2.block[0](h)
        out = L.channel_norm(h, n2.g, n2.b, n2.eps, relu=True, residual=block.res_conv(x))
    check(out, ref, torch.float32)


# ---- linear attention --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("heads,dim_head", [(1, 5), (2, 3)])
def test_linear_attention(dtype, shape, heads, dim_head):
    c = shape[1]
    hidden = heads * dim_head
    x = rand(*shape, dtype=dtype)
    w_qkv, w_out = rand(3 * hidden, c, 1, 1, 1, dtype=dtype), rand(c, hidden, 1, 1, 1, dtype=dtype)
    b_out = rand(c, dtype=dtype)
    out = L.linear_attention(x, w_qkv, w_out, b_out, heads=heads)
    ref = CF.linear_attention(*up(x, w_qkv, w_out, b_out), heads=heads)
    check(out, ref, dtype)
    out = L.linear_attention(x, w_qkv, w_out, None, heads=heads, scale=0.3)
    check(out, CF.linear_attention(*up(x, w_qkv, w_out), None, heads=heads, scale=0.3), dtype)


def test_linear_attention_cuda_scratch_holds_a_partial_context_per_split():
    """The CUDA attention sums per-split partial contexts in a fixed order (no atomics): the
    scratch the caller allocates holds k statistics, one d x d context per (split, frame, head)
    and q statistics; splits = min(ceil(1024 / (frames * heads * ceil(d / 32)^2)),
    ceil(positions / 256))."""
    floats = L.library().linear_attention_workspace_floats
    assert floats(1, 100, 1, 8) == 2 * 8 + 1 * 8 * 8 + 100 * 2  # one split
    assert floats(4, 600, 1, 40) == 4 * 40 * 2 + 3 * 4 * 40 * 40 + 4 * 600 * 2  # 3 splits
    assert floats(1, 4096, 1, 8) == 2 * 8 + 16 * 8 * 8 + 4096 * 2  # 16 splits


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_attention_block_matches_layer(shape):
    block = layers.attention_block(shape[1]).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        x = rand(*shape)
        attn, norm = block.fn.fn, block.fn.norm
        out = L.linear_attention_block(
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
        check(out, block(x), torch.float32)


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
def test_conv_norm_block_matches_resnet_block(pad_mode):
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
    res = layers.ResnetBlock(5, 7, time_emb_dim=4, pad_mode=pad_mode).eval()
    with torch.no_grad():
        for p in res.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        emb = torch.randn(2, 4)
        conv1, norm1, _ = res.block1.block
        conv2, norm2, _ = res.block2.block
        tb = res.time_bias(emb)
        past1 = past2 = None
        for frames in (1, 2):
            x = rand(2, 5, frames, 7, 9)
            conv = dict(history=2, space_padding=(1, 1), pad_mode=pad_mode)
            h = table(
                "causal_conv3d_norm",
                x,
                conv1.weight,
                conv1.bias,
                norm1.g,
                norm1.b,
                norm1.eps,
                past=past1,
                relu=True,
                time_bias=tb,
                **conv,
            )
            y = table(
                "causal_conv3d_norm",
                h,
                conv2.weight,
                conv2.bias,
                norm2.g,
                norm2.b,
                norm2.eps,
                past=past2,
                relu=True,
                residual=res.res_conv(x),
                **conv,
            )
            h_ref = (
                CF.channel_norm(
                    CF.causal_conv3d(x, conv1.weight, conv1.bias, past=past1, **conv),
                    norm1.g,
                    norm1.b,
                    relu=True,
                )
                + tb
            )
            y_ref = CF.channel_norm(
                CF.causal_conv3d(h_ref, conv2.weight, conv2.bias, past=past2, **conv),
                norm2.g,
                norm2.b,
                relu=True,
            ) + res.res_conv(x)
            check(y, y_ref, torch.float32)
            if past1 is None:  # the stream's first chunk is the layer's own forward
                check(y, res(x, emb), torch.float32)
            past1 = CF.causal_conv3d_history(x, past1, 2)
            past2 = CF.causal_conv3d_history(h, past2, 2)
    assert table.table["channel_norm"].backend == "cpp" and len(norms) == 4


# ---- temporal resampling -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("frames,with_past", [(1, False), (5, False), (2, True), (4, True)])
def test_time_downsample(dtype, pad_mode, frames, with_past):
    b, c, h, w = 2, 5, 7, 9
    x = rand(b, c, frames, h, w, dtype=dtype)
    past = rand(b, c, 1, h, w, dtype=dtype) if with_past else None
    weight, bias = rand(7, c, 3, dtype=dtype), rand(7, dtype=dtype)
    out = L.time_downsample(x, weight, bias, past=past, pad_mode=pad_mode)
    ref = CF.time_downsample(*up(x, weight, bias), past=up(past)[0], pad_mode=pad_mode)
    check(out, ref, dtype)


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
def test_time_downsample_streams_like_layer(pad_mode):
    """Chunks of 1, 2, 2 frames, each with the previous chunk's last frame, equal the clip."""
    layer = layers.TimeDownsample(6, pad_mode=pad_mode)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.randn_like(layer.conv.weight))
        x = rand(2, 6, 5, 3, 5)
        ref = layer(x)
        past, outs = None, []
        for lo, hi in ((0, 1), (1, 3), (3, 5)):
            chunk = x[:, :, lo:hi]
            outs.append(
                L.time_downsample(
                    chunk, layer.conv.weight, layer.conv.bias, past=past, pad_mode=pad_mode
                )
            )
            past = chunk[:, :, -1:]
    check(torch.cat(outs, dim=2), ref, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("drop_first", [True, False])
def test_time_upsample(dtype, shape, drop_first):
    c = shape[1]
    x = rand(*shape, dtype=dtype)
    weight, bias = rand(2 * c, c, 1, dtype=dtype), rand(2 * c, dtype=dtype)
    out = L.time_upsample(x, weight, bias, drop_first=drop_first)
    check(out, CF.time_upsample(*up(x, weight, bias), drop_first=drop_first), dtype)
    out = L.time_upsample(x, weight, None, drop_first=drop_first)
    check(out, CF.time_upsample(*up(x, weight), None, drop_first=drop_first), dtype)


def _shuffle_one_row(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Raw upsample shuffle of one voxel [1, 1, 1, 2C]: out[p, c] = y[2c + p] + bias[2c + p]."""
    out = torch.empty(1, 2, 1, y.shape[-1] // 2, dtype=y.dtype)
    L._invoke("time_upsample_shuffle", y, y, bias, out, False)
    return out.flatten()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_conversions_round_like_torch(dtype):
    """Every finite 16-bit pattern survives the fp32 round trip, and fp32 -> 16 bit rounds to
    nearest even exactly as torch (subnormals and overflow to inf included)."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    y = bits[torch.isfinite(bits.float())]
    y = y[: y.numel() // 2 * 2]
    # adding -0.0 is the identity for every value, -0.0 included
    out = _shuffle_one_row(y.reshape(1, 1, 1, -1), torch.full((y.numel(),), -0.0))
    assert torch.equal(out.view(torch.int16), y.reshape(-1, 2).t().flatten().view(torch.int16))
    wide = torch.cat([torch.randn(4096) * s for s in (1e-7, 1e-5, 1.0, 3e4, 7e4, 1e36)])
    wide = torch.cat([wide, torch.tensor([65504.0, 65520.0, 65519.99, 2.0**-25, 2.0**-24])])
    wide = wide[: wide.numel() // 2 * 2]
    out = _shuffle_one_row(torch.zeros(1, 1, 1, wide.numel(), dtype=dtype), wide)
    ref = wide.to(dtype).reshape(-1, 2).t().flatten()
    assert torch.equal(out.view(torch.int16), ref.view(torch.int16))


# ---- cache assembly ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("past_frames", [None, 1, 2, 3])
@pytest.mark.parametrize("frames", [1, 2, 5])
def test_causal_conv3d_history(dtype, past_frames, frames):
    x = rand(2, 3, frames, 5, 7, dtype=dtype)
    past = None if past_frames is None else rand(2, 3, past_frames, 5, 7, dtype=dtype)
    for history in (0, 1, 2, 4):
        ref = CF.causal_conv3d_history(x, past, history)
        out = L.causal_conv3d_history(x, past, history)
        assert out.shape == ref.shape and torch.equal(out, ref)
        assert out.data_ptr() != x.data_ptr()  # a copy: the chunk can be freed


@pytest.mark.parametrize("pad_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("past_frames", [0, 1, 2])
@pytest.mark.parametrize("frames", [1, 3])
def test_causal_conv3d_input(pad_mode, past_frames, frames):
    history = 2
    x = rand(2, 4, frames, 5, 3)
    past = rand(2, 4, past_frames, 5, 3) if past_frames else None
    seq = torch.cat([past, x], dim=2) if past is not None else x
    ref = F.pad(seq, (0, 0, 0, 0, history - past_frames, 0), mode=CF.PAD_MODES[pad_mode])
    out = L.causal_conv3d_input(x, past, history, pad_mode)
    assert torch.equal(out, ref)
    # The assembled input drives the conv exactly as the contract's causal conv.
    weight = rand(3, 4, 3, 3, 3)
    conv = F.conv3d(F.pad(out, (1, 1, 1, 1, 0, 0), mode=CF.PAD_MODES[pad_mode]), weight)
    torch.testing.assert_close(
        conv,
        CF.causal_conv3d(
            x, weight, past=past, history=history, space_padding=(1, 1), pad_mode=pad_mode
        ),
    )


def test_cache_assembly_into_preallocated_buffers():
    x, past = rand(2, 4, 3, 5, 3), rand(2, 4, 2, 5, 3)
    buf = torch.empty(2, 4, 5, 5, 3).contiguous(memory_format=CL)
    out = L.causal_conv3d_input(x, past, 2, "replicate", out=buf)
    assert out.data_ptr() == buf.data_ptr() and torch.equal(buf, torch.cat([past, x], dim=2))
    cache = torch.empty(2, 4, 2, 5, 3).contiguous(memory_format=CL)
    out = L.causal_conv3d_history(x, past, 2, out=cache)
    assert out.data_ptr() == cache.data_ptr() and torch.equal(cache, x[:, :, -2:])
    past = past.contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="overlap"):  # [past | x] would shift within past
        L.causal_conv3d_history(x[:, :, :1], past, 2, out=past)
    with pytest.raises(ValueError, match="channels-last"):
        L.causal_conv3d_history(x, past, 2, out=torch.empty(2, 4, 2, 5, 3))


# ---- the denoise epilogue ----------------------------------------------------------------------

COEFFS = (
    torch.tensor(1.0000305),
    torch.tensor(0.0078125),
    torch.tensor(0.9999),
    torch.tensor(0.0141),
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
def test_ddim_update(dtype, clamp, layout):
    x_t, x0 = rand(2, 3, 5, 7, 9, dtype=dtype), rand(2, 3, 5, 7, 9, dtype=dtype, scale=1.5)
    if layout != "contiguous":
        x_t = x_t.contiguous(memory_format=CL)
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=CL)
    out = L.ddim_update(x_t, x0, COEFFS, clamp=clamp)
    ref = CF.ddim_update(x_t, x0, COEFFS, clamp=clamp)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0, rtol=0)  # same fp32 arithmetic, same order


def test_ddim_update_mixed_dtypes():
    x_t, x0 = rand(1, 3, 1, 4, 6), rand(1, 3, 1, 4, 6, dtype=torch.bfloat16)
    torch.testing.assert_close(
        L.ddim_update(x_t, x0, COEFFS), CF.ddim_update(x_t, x0, COEFFS), atol=0, rtol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_uint8_frames(dtype):
    x = (
        torch.cat(
            [
                torch.linspace(-1.2, 1.2, 2 * 3 * 3 * 5 * 7 - 4),
                torch.tensor([-1.0, 1.0, 0.0, 1 / 255]),
            ]
        )
        .reshape(2, 3, 3, 5, 7)
        .to(dtype)
    )
    for inp in (x, x.contiguous(memory_format=CL)):
        out = L.to_uint8_frames(inp)
        assert out.dtype == torch.uint8 and out.shape == (2, 3, 5, 7, 3)
        assert torch.equal(out, CF.to_uint8_frames(x))


@pytest.mark.parametrize("clamp", [False, True])
def test_fused_ddim_to_uint8_frames(clamp):
    x_t, x0 = rand(2, 3, 5, 7, 9), rand(2, 3, 5, 7, 9, scale=1.5)
    ref = CF.ddim_update(x_t, x0, COEFFS, clamp=clamp)
    x_next, frames = L.ddim_to_uint8_frames(x_t, x0, COEFFS, clamp=clamp)
    torch.testing.assert_close(x_next, ref, atol=0, rtol=0)
    assert torch.equal(frames, CF.to_uint8_frames(ref))
    none, frames_only = L.ddim_to_uint8_frames(x_t, x0, COEFFS, clamp=clamp, keep_x_next=False)
    assert none is None and torch.equal(frames_only, frames)


def test_ddim_update_reads_no_coefficient_on_the_host():
    """The kernel reads (a, b, c, d) where x_t lives: coefficients given as tensors there are
    never brought to the host (on CUDA such a read is a sync per step, and refused inside a CUDA
    graph capture; the code path is the same for CPU tensors, checked here)."""
    x_t, x0 = rand(2, 3, 2, 5, 7), rand(2, 3, 2, 5, 7, scale=1.5)
    ref = CF.ddim_update(x_t, x0, COEFFS, clamp=True)
    for coefficients in (COEFFS, torch.stack(COEFFS)):
        got = {}

        def run(coefficients=coefficients, got=got):
            got["x_next"] = L.ddim_update(x_t, x0, coefficients, clamp=True)
            got["fused"], _ = L.ddim_to_uint8_frames(x_t, x0, coefficients, clamp=True)

        assert host_reads_of(run) == []
        assert torch.equal(got["x_next"], ref) and torch.equal(got["fused"], ref)


def test_thread_count_does_not_change_results():
    """Work is split by rows/frames, never inside a reduction: any thread count, same bits."""
    x = rand(2, 6, 3, 17, 23)
    g, b, tb = rand(6), rand(6), rand(2, 6)
    qkv = rand(6, 17 * 23, 3 * 8)  # the attention core alone: torch's GEMMs may vary with threads
    results = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        core = torch.empty(6, 17 * 23, 8)
        L._invoke("linear_attention", qkv, qkv, core, 2, 0.5, None)
        results.append((L.channel_norm(x, g, b, relu=True, time_bias=tb), core))
    torch.set_num_threads(1)
    for one, many in zip(*results):
        assert torch.equal(one, many)


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_named():
    x = rand(1, 4, 2, 3, 3)
    g = b = torch.ones(4)
    with pytest.raises(TypeError, match="x must be float32"):
        L.channel_norm(x.double(), g, b)
    with pytest.raises(ValueError, match="rank 5"):
        L.channel_norm(x[0], g, b)
    with pytest.raises(ValueError, match="g must have 4 elements"):
        L.channel_norm(x, torch.ones(3), b)
    with pytest.raises(ValueError, match="residual"):
        L.channel_norm(x, g, b, residual=x[:, :, :1])
    with pytest.raises(ValueError, match="pad_mode"):
        L.time_downsample(x, rand(4, 4, 3), None, pad_mode="reflect")
    with pytest.raises(ValueError, match="past must be one frame"):
        L.time_downsample(x, rand(4, 4, 3), None, past=rand(1, 4, 2, 3, 3))
    with pytest.raises(ValueError, match="too few frames"):
        L.time_downsample(x[:, :, :1], rand(4, 4, 3), None, past=rand(1, 4, 1, 3, 3))
    with pytest.raises(ValueError, match="history"):
        L.causal_conv3d_history(x, None, -1)
    with pytest.raises(ValueError, match="x0 must have the shape"):
        L.ddim_update(x, x[:, :, :1], COEFFS)


def test_autograd_is_refused_not_silently_dropped():
    x = rand(1, 4, 2, 3, 3).requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only"):
        L.channel_norm(x, torch.ones(4), torch.zeros(4))
    with torch.no_grad():
        L.channel_norm(x, torch.ones(4), torch.zeros(4))


def test_extension_rejects_non_dense_descriptors():
    """The C++ side re-checks the layout promise: a strided buffer is a ValueError, not garbage."""
    lib = L.library()
    x = rand(2, 3, 4, 8)  # [B, T, P, C] rows
    g, b = torch.ones(8), torch.zeros(8)
    view = x[:, :, :, ::2]
    desc = L._desc(view)
    with pytest.raises(ValueError, match="dense"):
        lib.channel_norm(
            desc,
            L._desc(torch.empty(2, 3, 4, 4)),
            L._desc(g[:4]),
            L._desc(b[:4]),
            1e-5,
            False,
            None,
            None,
        )
    with pytest.raises(ValueError, match="dtype"):
        lib.channel_norm(
            L._desc(x),
            L._desc(torch.empty(2, 3, 4, 8, dtype=torch.float16)),
            L._desc(g),
            L._desc(b),
            1e-5,
            False,
            None,
            None,
        )
    flat, out = rand(8), torch.empty(8)
    for coefficients, message in (
        (torch.ones(3), r"coefficients: expected shape \(4,\)"),
        (torch.ones(4, dtype=torch.uint8), "coefficients must be float32"),
    ):
        with pytest.raises(ValueError, match=message):
            lib.ddim_update(
                L._desc(flat), L._desc(flat), L._desc(coefficients), False, L._desc(out), None
            )


# ---- CUDA (when a GPU and a CUDA build exist) ----------------------------------------------------


def _cuda_cases(dtype):
    """(name, extension call, contract call) on CUDA tensors: both vector-width paths (C = 16 and
    C = 5), an attention head wide enough for several tiles and 3 position splits (d = 40,
    N = 600), and a narrow one with 16 splits of 4096 positions summed in order (d = 8)."""
    dev = "cuda"

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev) * scale).to(dtype)

    cases = []
    for c in (16, 5):
        x, res = r(2, c, 3, 17, 23, scale=2.0), r(2, c, 3, 17, 23)
        g, b, tb = r(c), r(c), r(2, c)
        cases.append(
            (
                f"channel_norm C={c}",
                lambda x=x, g=g, b=b, tb=tb, res=res: L.channel_norm(
                    x, g, b, relu=True, time_bias=tb, residual=res
                ),
                lambda x=x, g=g, b=b, tb=tb, res=res: CF.channel_norm(
                    *up(x, g, b), relu=True, time_bias=tb.float(), residual=res.float()
                ),
            )
        )
        wd, bd, past = r(c, c, 3), r(c), r(2, c, 1, 17, 23)
        cases.append(
            (
                f"time_downsample C={c}",
                lambda x=x, wd=wd, bd=bd, past=past: L.time_downsample(
                    x[:, :, :2], wd, bd, past=past
                ),
                lambda x=x, wd=wd, bd=bd, past=past: CF.time_downsample(
                    *up(x[:, :, :2], wd, bd), past=past.float()
                ),
            )
        )
        wu, bu = r(2 * c, c, 1), r(2 * c)
        cases.append(
            (
                f"time_upsample C={c}",
                lambda x=x, wu=wu, bu=bu: L.time_upsample(x, wu, bu, drop_first=True),
                lambda x=x, wu=wu, bu=bu: CF.time_upsample(*up(x, wu, bu), drop_first=True),
            )
        )
        p2 = r(2, c, 1, 17, 23)
        cases.append(
            (
                f"causal_conv3d_history C={c}",
                lambda x=x, p2=p2: L.causal_conv3d_history(x[:, :, :1], p2, 2),
                lambda x=x, p2=p2: CF.causal_conv3d_history(x[:, :, :1], p2, 2).float(),
            )
        )
        cases.append(
            (
                f"causal_conv3d_input C={c}",
                lambda x=x, p2=p2: L.causal_conv3d_input(x, p2, 2, "replicate"),
                lambda x=x, p2=p2: F.pad(
                    torch.cat([p2, x], 2).float(), (0, 0, 0, 0, 1, 0), mode="replicate"
                ),
            )
        )
    xa = r(2, 24, 2, 20, 30)
    wq, wo, bo = r(3 * 40, 24, 1, 1, 1, scale=0.3), r(24, 40, 1, 1, 1), r(24)
    cases.append(
        (
            "linear_attention d=40 N=600",
            lambda: L.linear_attention(xa, wq, wo, bo, heads=1),
            lambda: CF.linear_attention(*up(xa, wq, wo, bo), heads=1),
        )
    )
    xn = r(1, 8, 1, 64, 64)
    wqn, won = r(3 * 8, 8, 1, 1, 1, scale=0.5), r(8, 8, 1, 1, 1)
    cases.append(
        (
            "linear_attention d=8 N=4096",
            lambda: L.linear_attention(xn, wqn, won, None, heads=1),
            lambda: CF.linear_attention(*up(xn, wqn, won), None, heads=1),
        )
    )
    xt, x0 = r(2, 3, 5, 16, 16), r(2, 3, 5, 16, 16, scale=1.5)
    cases.append(
        (
            "ddim_update",
            lambda: L.ddim_update(xt, x0, COEFFS, clamp=True),
            lambda: CF.ddim_update(xt, x0, COEFFS, clamp=True),
        )
    )
    cases.append(
        (
            "to_uint8_frames",
            lambda: L.to_uint8_frames(xt).float(),
            lambda: CF.to_uint8_frames(xt.float()).float(),
        )
    )
    return cases


@pytest.mark.gpu
@pytest.mark.skipif(
    not L.cuda_available(), reason="needs a CUDA GPU and a CUDA build of cdt_fast._C"
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_parity(dtype):
    with torch.no_grad():
        for name, ours, ref in _cuda_cases(dtype):
            out, want = ours(), ref()
            torch.cuda.synchronize()
            atol, rtol = TOL[dtype]
            if name == "to_uint8_frames":
                atol, rtol = 1.0, 0.0  # one step where fp32 rounding of a half-way value differs
            torch.testing.assert_close(out.float(), want.float(), atol=atol, rtol=rtol, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(
    not L.cuda_available(), reason="needs a CUDA GPU and a CUDA build of cdt_fast._C"
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ops_are_deterministic(dtype):
    """Every CUDA stage gives the same bits on a second run (no atomics: the attention's position
    splits are summed in a fixed order)."""
    with torch.no_grad():
        for name, ours, _ in _cuda_cases(dtype):
            first, second = ours(), ours()
            torch.cuda.synchronize()
            assert torch.equal(first, second), name


@pytest.mark.gpu
@pytest.mark.skipif(
    not L.cuda_available(), reason="needs a CUDA GPU and a CUDA build of cdt_fast._C"
)
def test_cuda_ops_replay_in_a_cuda_graph():
    """The attention (16 position splits, scratch from torch's allocator) and the DDIM step
    captured in one CUDA graph replay new inputs and new coefficients: the kernel reads the
    coefficients on the device, so a value taken at capture would show as a stale step."""
    from cdt_fast.functional import ddim_coefficients
    from cdt_fast.reference.diffusion import DDIMSchedule

    schedule = DDIMSchedule.create(1000, 4)
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, device="cuda", generator=g)

    w_qkv, w_out = r(24, 8, 1, 1, 1) * 0.5, r(8, 8, 1, 1, 1)
    x, x_t, x0 = r(1, 8, 1, 64, 64), r(2, 3, 5, 16, 16), r(2, 3, 5, 16, 16)
    coef = ddim_coefficients(schedule.coefficients(0), "cuda")

    def step():
        return (
            L.linear_attention(x, w_qkv, w_out, None, heads=1),
            L.ddim_update(x_t, x0, coef, clamp=True),
        )

    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up where the capture runs
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            captured = step()
        for s in (1, 2, 3):
            for t in (x, x_t, x0):
                t.copy_(r(*t.shape))
            coef.copy_(ddim_coefficients(schedule.coefficients(s), "cuda"))
            graph.replay()
            attention, x_next = step()
            torch.cuda.synchronize()
            torch.testing.assert_close(captured[0], attention, atol=1e-5, rtol=1e-5)
            assert torch.equal(captured[1], x_next), f"timestep {s}"
            want = CF.ddim_update(x_t, x0, coef, clamp=True)
            torch.testing.assert_close(x_next, want, atol=1e-6, rtol=1e-6)
