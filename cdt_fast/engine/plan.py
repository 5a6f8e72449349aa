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
    def __init__(self, module: L.CausalConv3d, dtype: torch.dtype, ops, upsample2x: bool = False):
        self.ops = ops
        self.weight, self.bias = pack(module.weight, dtype), pack(module.bias, dtype)
        self.kwargs = dict(
            history=module.history,
            space_padding=module.space_padding,
            stride=tuple(module.stride),
            pad_mode=module.pad_mode,
            upsample2x=upsample2x,
        )
        self.history = module.history

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        if not self.history:
            return self.ops("causal_conv3d", x, self.weight, self.bias, past=None, **self.kwargs)
        hist = run.state.history(self, self.history)
        past = hist.past(x)
        y = self.ops("causal_conv3d", x, self.weight, self.bias, past=past, **self.kwargs)
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


class Resnet:
    """Block1 (+ time bias) -> Block2 (+ shortcut), each Block a conv then one fused norm op."""

    def __init__(self, module: L.ResnetBlock, dtype: torch.dtype, ops):
        self.module = module  # its ``time_bias`` computes the per-step constants
        self.conv1 = Conv(module.block1.block[0], dtype, ops)
        self.norm1 = Norm(module.block1.block[1], dtype, ops)
        self.conv2 = Conv(module.block2.block[0], dtype, ops)
        self.norm2 = Norm(module.block2.block[1], dtype, ops)
        self.shortcut = (
            Conv(module.res_conv, dtype, ops)
            if isinstance(module.res_conv, L.CausalConv3d)
            else None
        )
        self.timed = module.mlp is not None

    def __call__(self, x: torch.Tensor, run: Run) -> torch.Tensor:
        bias = run.time_bias[self] if self.timed else None
        h = self.norm1(self.conv1(x, run), relu=True, time_bias=bias)
        residual = self.shortcut(x, run) if self.shortcut is not None else x
        return self.norm2(self.conv2(h, run), relu=True, residual=residual)


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


def _level(modules, dtype, ops) -> List:
    return [node(m, dtype, ops) for m in modules]


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

    def __init__(self, model: DenoisingUNet, ops, memory_format=torch.channels_last_3d):
        self.to_activation = layout(memory_format)
        self.model = model
        self.dtype = dtype = model.dtype
        self.ops = ops
        self.condition_times = model.condition_times
        self.downs = [_level(level, dtype, ops) for level in model.downs]
        self.mid = _level([model.mid_block1, model.mid_attn, model.mid_block2], dtype, ops)
        self.ups = [_level(level, dtype, ops) for level in model.ups]
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
                h = torch.cat([h, context[ind]], dim=1)
            h = attn(block2(block1(h, run), run), run)
            skips.append(h)
            h = _chain((down, time_down), h, run)
        h = _chain(self.mid, h, run)
        for block1, block2, attn, up, time_up in self.ups:
            skip = skips.pop()
            if h.shape[2:] != skip.shape[2:]:  # odd sizes, as the reference crops
                h = F.interpolate(h.float(), size=skip.shape[2:], mode="nearest").type_as(h)
            h = torch.cat([h, skip], dim=1)
            h = attn(block2(block1(h, run), run), run)
            h = _chain((up, time_up), h, run)
        return self.final_conv(self.final_norm(h), run)
