"""Compiled plans of the three networks: the reference modules' structure, the engine's ops.

A plan is built once from a reference :class:`~cdt_fast.reference.ContextModel` /
:class:`~cdt_fast.reference.DenoisingUNet`: every layer becomes a node holding its packed weights
(channels-last, in the dtype the layer computes in) and calling its op through the engine's
:class:`~cdt_fast.engine.dispatch.OpTable`. The nodes compute exactly what the reference layers
compute -- same ops, same order, same dtype casts (fp32 islands included) -- so the engine differs
from the reference only in which function runs each op and in where the causal state lives.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ..reference import layers as L
from ..reference.context import ContextModel
from ..reference.unet import DenoisingUNet
from .state import StreamState

__all__ = ["Run", "EncoderPlan", "ContextDecoderPlan", "UNetPlan", "pack"]


def pack(param: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A parameter as the ops want it: ``dtype``, in the memory format the engine converted the
    model to (kept by ``.to``). Shares storage with the module's parameter when the dtype is the
    model's, so the plans add no second copy of the weights."""
    return None if param is None else param.detach().to(dtype)


def layout(memory_format: torch.memory_format):
    """The function that brings a network input to the engine's dtype and activation layout."""

    def to_activation(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return x.to(dtype).contiguous(memory_format=memory_format)

    return to_activation


class Run:
    """What one network call needs besides its input: the stream state and, for the U-Net, the
    time bias of every ResnetBlock at the current sampling step."""

    __slots__ = ("state", "time_bias")

    def __init__(self, state: StreamState, time_bias: Optional[Dict[object, torch.Tensor]] = None):
        self.state = state
        self.time_bias = time_bias


class Conv:
    def __init__(
        self,
        module: L.CausalConv3d,
        dtype: torch.dtype,
        ops,
        upsample2x: bool = False,
        in_pad: int = 0,
    ):
        self.ops = ops
        self.weight, self.bias = pack(module.weight, dtype), pack(module.bias, dtype)
        if in_pad:  # zero weights for the zero channels appended to this conv's input
            self.weight = F.pad(self.weight, (0, 0, 0, 0, 0, 0, 0, in_pad)).contiguous(
                memory_format=torch.channels_last_3d
            )
        self.kwargs = dict(
            history=module.history,
            space_padding=module.space_padding,
            stride=tuple(module.stride),
            pad_mode=module.pad_mode,
            upsample2x=upsample2x,
        )
        self.history = module.history

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        return self.apply("causal_conv3d", x, run)

    def apply(self, op: str, x: torch.Tensor, run: Run, *args, **kwargs) -> torch.Tensor:
        """Run ``op`` (this conv, or a fused op that starts with it: the conv's arguments, then
        ``args``/``kwargs``) on chunk ``x``, reading and advancing the layer's history."""
        if not self.history:
            return self.ops(
                op, x, self.weight, self.bias, *args, past=None, **self.kwargs, **kwargs
            )
        hist = run.state.history(self, self.history)
        past = hist.past(x)
        y = self.ops(op, x, self.weight, self.bias, *args, past=past, **self.kwargs, **kwargs)
        hist.advance(x, past, self.ops)
        return y


class Norm:
    def __init__(self, module: L.ChannelLayerNorm, dtype: torch.dtype, ops):
        self.ops, self.eps = ops, module.eps
        self.g, self.b = pack(module.g, dtype), pack(module.b, dtype)

    def __call__(self, x: torch.Tensor, relu: bool = False, time_bias=None, residual=None):
        return self.ops(
            "channel_norm",
            x,
            self.g,
            self.b,
            self.eps,
            relu=relu,
            time_bias=time_bias,
            residual=residual,
        )


class Block:
    """A CDT Block (conv, channel LayerNorm, ReLU) and the adds that follow it in a ResnetBlock:
    one ``causal_conv3d_norm`` op, which a backend may run as the conv with the norm in its
    epilogue."""

    def __init__(self, module: L.Block, dtype: torch.dtype, ops, in_pad: int = 0):
        self.conv = Conv(module.block[0], dtype, ops, in_pad=in_pad)
        norm = module.block[1]
        self.g, self.b, self.eps = pack(norm.g, dtype), pack(norm.b, dtype), norm.eps

    def __call__(self, x: torch.Tensor, run: Run, time_bias=None, residual=None) -> torch.Tensor:
        return self.conv.apply(
            "causal_conv3d_norm",
            x,
            run,
            self.g,
            self.b,
            self.eps,
            relu=True,
            time_bias=time_bias,
            residual=residual,
        )


class Resnet:
    """Block1 (+ time bias) -> Block2 (+ shortcut).

    ``in_pad``: zero channels the caller appends to this block's input (see :func:`input_pad`);
    block1's conv and the shortcut get matching zero weights, so the result is unchanged."""

    def __init__(self, module: L.ResnetBlock, dtype: torch.dtype, ops, in_pad: int = 0):
        self.module = module  # its ``time_bias`` computes the per-step constants
        self.block1 = Block(module.block1, dtype, ops, in_pad=in_pad)
        self.block2 = Block(module.block2, dtype, ops)
        self.shortcut = (
            Conv(module.res_conv, dtype, ops, in_pad=in_pad)
            if isinstance(module.res_conv, L.CausalConv3d)
            else None
        )
        self.timed = module.mlp is not None

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        bias = run.time_bias[self] if self.timed else None
        h = self.block1(x, run, time_bias=bias)
        residual = self.shortcut(x, run) if self.shortcut is not None else x
        return self.block2(h, run, residual=residual)


class Attention:
    """x + LinearAttention(LayerNorm(x)): one ``linear_attention_block`` op."""

    def __init__(self, module: L.Residual, dtype: torch.dtype, ops):
        prenorm = module.fn
        attn = prenorm.fn
        self.ops = ops
        self.norm_g, self.norm_b = pack(prenorm.norm.g, dtype), pack(prenorm.norm.b, dtype)
        self.eps = prenorm.norm.eps
        self.w_qkv, self.w_out = pack(attn.to_qkv.weight, dtype), pack(attn.to_out.weight, dtype)
        self.b_out = pack(attn.to_out.bias, dtype)
        self.heads, self.scale = attn.heads, attn.scale

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        return self.ops(
            "linear_attention_block",
            x,
            self.norm_g,
            self.norm_b,
            self.w_qkv,
            self.w_out,
            self.b_out,
            heads=self.heads,
            scale=self.scale,
            eps=self.eps,
        )


class Upsample:
    def __init__(self, module: L.Upsample, dtype: torch.dtype, ops):
        self.ops = ops
        if module.new_upsample:  # nearest 2x folded into the conv's loads
            self.conv = Conv(module.conv, dtype, ops, upsample2x=True)
        else:
            self.conv = None
            self.weight, self.bias = pack(module.conv.weight, dtype), pack(module.conv.bias, dtype)

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        if self.conv is not None:
            return self.conv(x, run)
        return self.ops("conv_transpose_up2x", x, self.weight, self.bias)


class TimeDownsample:
    def __init__(self, module: L.TimeDownsample, dtype: torch.dtype, ops):
        self.ops, self.pad_mode = ops, module.pad_mode
        weight = pack(module.conv.weight, dtype)
        # [C_out, C_in, 3] stored C_in-innermost: the channels-last layout cuDNN wants for the
        # conv3d view of it, and 16-byte weight loads in the Triton kernel (same logical tensor).
        self.weight = weight.permute(0, 2, 1).contiguous().permute(0, 2, 1)
        self.bias = pack(module.conv.bias, dtype)

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        hist = run.state.history(self, 1)
        past = hist.past(x)
        y = self.ops(
            "time_downsample", x, self.weight, self.bias, past=past, pad_mode=self.pad_mode
        )
        hist.advance(x, past, self.ops)
        return y


class TimeUpsample:
    def __init__(self, module: L.TimeUpsample, dtype: torch.dtype, ops):
        self.ops = ops
        self.weight, self.bias = pack(module.conv.weight, dtype), pack(module.conv.bias, dtype)

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        return self.ops(
            "time_upsample", x, self.weight, self.bias, drop_first=run.state.first_call(self)
        )


_NODES = [
    (L.ResnetBlock, Resnet),
    (L.Residual, Attention),
    (L.Upsample, Upsample),
    (L.TimeDownsample, TimeDownsample),
    (L.TimeUpsample, TimeUpsample),
    (L.CausalConv3d, Conv),
]


def node(module, dtype: torch.dtype, ops):
    """The plan node of a reference layer; None for an identity slot."""
    if isinstance(module, L.Identity):
        return None
    if isinstance(module, L.Downsample):
        return Conv(module.conv, dtype, ops)
    for kind, make in _NODES:
        if isinstance(module, kind):
            return make(module, dtype, ops)
    raise TypeError(f"no engine node for {type(module).__name__}")


def _level(modules, dtype, ops, in_pad: int = 0) -> List:
    """The nodes of one U-Net/context level; ``in_pad`` zero channels are appended to the input
    of its first node (a ResnetBlock)."""
    return [
        Resnet(m, dtype, ops, in_pad) if in_pad and i == 0 else node(m, dtype, ops)
        for i, m in enumerate(modules)
    ]


def input_pad(block: L.ResnetBlock, align: int) -> int:
    """Zero channels to append to a ResnetBlock's (concatenated) input so that its width is a
    multiple of ``align``. CDT's first U-Net level reads ``noise | context`` = 3 + 16 (CDT-base)
    or 3 + 3 (CDT-small) channels: with a voxel stride of 19 or 6 elements the Triton conv cannot
    prove its loads aligned and reads one element at a time (sm_90 code: 16-bit loads, register
    spills), and cuDNN pads such inputs itself. Zero channels with zero weights change no sum.
    Not for a block whose shortcut is the identity (its input is the residual)."""
    cin = block.block1.block[0].weight.shape[1]
    if align <= 1 or not isinstance(block.res_conv, L.CausalConv3d):
        return 0
    return -cin % align


def concat_channels(parts: List[torch.Tensor], pad: int) -> torch.Tensor:
    """``torch.cat(parts, dim=1)`` followed by ``pad`` zero channels, in the first part's layout."""
    if not pad:
        return torch.cat(parts, dim=1)
    first = parts[0]
    width = sum(p.shape[1] for p in parts)
    fmt = (
        torch.channels_last_3d
        if (first.is_contiguous(memory_format=torch.channels_last_3d) and not first.is_contiguous())
        else torch.contiguous_format
    )
    out = torch.empty(
        (first.shape[0], width + pad, *first.shape[2:]),
        dtype=first.dtype,
        device=first.device,
        memory_format=fmt,
    )
    torch.cat(parts, dim=1, out=out[:, :width])
    out[:, width:].zero_()
    return out


def _chain(nodes, h: torch.Tensor, run: Run) -> torch.Tensor:
    for n in nodes:
        if n is not None:
            h = n(h, run)
    return h


class EncoderPlan:
    """ContextModel.encode: video chunk -> fp32 posterior parameters."""

    def __init__(self, model: ContextModel, ops, memory_format=torch.channels_last_3d):
        self.to_activation = layout(memory_format)
        self.dtype = dtype = model.dtype
        self.levels = [_level(level, dtype, ops) for level in model.enc]
        # upstream's fp32 island: quant path computes in fp32 from the model-dtype weights
        self.quant = Conv(model.quant_conv, torch.float32, ops)
        self.quant_res = _level(model.quant_conv_res, torch.float32, ops)

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        h = self.to_activation(x, self.dtype)
        for level in self.levels:
            h = _chain(level, h, run)
        h = h.float()
        return self.quant(h, run) + _chain(self.quant_res, h, run)


class ContextDecoderPlan:
    """ContextModel.decode: latent chunk -> conditioning pyramid, finest first."""

    def __init__(self, model: ContextModel, ops, memory_format=torch.channels_last_3d):
        self.to_activation = layout(memory_format)
        self.dtype = dtype = model.dtype
        self.post_quant = Conv(model.post_quant_conv, torch.float32, ops)
        self.post_quant_res = _level(model.post_quant_conv_res, torch.float32, ops)
        self.levels = [_level(level, dtype, ops) for level in model.dec]

    def __call__(self, z: torch.Tensor, run: Run) -> List[torch.Tensor]:
        h = self.to_activation(z, torch.float32)
        h = (self.post_quant(h, run) + _chain(self.post_quant_res, h, run)).to(self.dtype)
        features = []
        for level in self.levels:
            h = _chain(level, h, run)
            features.append(h)
        return features[::-1]


class UNetPlan:
    """DenoisingUNet.forward with the time biases supplied by the caller (constants per step)."""

    def __init__(
        self,
        model: DenoisingUNet,
        ops,
        memory_format=torch.channels_last_3d,
        align_channels: int = 1,
    ):
        self.to_activation = layout(memory_format)
        self.model = model
        self.dtype = dtype = model.dtype
        self.ops = ops
        self.condition_times = model.condition_times
        # Zero channels appended to each level's concatenated input (see input_pad).
        self.down_pads = [
            input_pad(level[0], align_channels) if ind < self.condition_times else 0
            for ind, level in enumerate(model.downs)
        ]
        self.up_pads = [input_pad(level[0], align_channels) for level in model.ups]
        self.downs = [
            _level(level, dtype, ops, pad) for level, pad in zip(model.downs, self.down_pads)
        ]
        self.mid = _level([model.mid_block1, model.mid_attn, model.mid_block2], dtype, ops)
        self.ups = [_level(level, dtype, ops, pad) for level, pad in zip(model.ups, self.up_pads)]
        self.final_norm = Norm(model.final_conv[0], dtype, ops)
        self.final_conv = Conv(model.final_conv[1], dtype, ops)
        self.timed = [
            n
            for level in self.downs + [self.mid] + self.ups
            for n in level
            if isinstance(n, Resnet) and n.timed
        ]

    @torch.no_grad()
    def time_biases(self, time: torch.Tensor) -> Dict[object, torch.Tensor]:
        """Every ResnetBlock's ``mlp(time_emb)`` for one sampling step, by the reference modules."""
        emb = self.model.time_embedding(time)
        return {
            n: n.module.time_bias(emb).reshape(emb.shape[0], -1).contiguous() for n in self.timed
        }

    def __call__(self, x: torch.Tensor, context: List[torch.Tensor], run: Run) -> torch.Tensor:
        h = self.to_activation(x, self.dtype)
        skips = []
        for ind, (block1, block2, attn, down, time_down) in enumerate(self.downs):
            if ind < self.condition_times:
                h = concat_channels([h, context[ind]], self.down_pads[ind])
            h = attn(block2(block1(h, run), run), run)
            skips.append(h)
            h = _chain((down, time_down), h, run)
        h = _chain(self.mid, h, run)
        for (block1, block2, attn, up, time_up), pad in zip(self.ups, self.up_pads):
            skip = skips.pop()
            if h.shape[2:] != skip.shape[2:]:  # odd sizes, as the reference crops
                h = F.interpolate(h.float(), size=skip.shape[2:], mode="nearest").type_as(h)
            h = concat_channels([h, skip], pad)
            h = attn(block2(block1(h, run), run), run)
            h = _chain((up, time_up), h, run)
        return self.final_conv(self.final_norm(h), run)
