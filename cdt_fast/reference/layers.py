"""CDT's building blocks in plain PyTorch: the parity oracle for every fast path.

Parameter names and shapes equal upstream's (``block.0.weight``, ``block.1.g``, ``mlp.1``,
``fn.fn.to_qkv`` ...) so upstream state dicts load unchanged. Every layer that carries state across
chunks takes an explicit ``cache`` (a :class:`~cdt_fast.cache.FeatureCache`, or None for a
self-contained clip); nothing here is global.

Dtypes: a layer computes in the dtype of its input and casts its parameters to it when they differ.
That is how upstream's fp32 islands (quant/post-quant convs, the time MLP) behave when the model is
half precision: upstream converts those modules to fp32 on first use, after the weights were already
rounded to the model's dtype, which is exactly what casting at call time gives.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as CF
from ..cache import FeatureCache
from ..functional import PAD_MODES, cast_like

__all__ = [
    "CausalConv3d",
    "ChannelLayerNorm",
    "Block",
    "ResnetBlock",
    "LinearAttention",
    "PreNorm",
    "Residual",
    "Downsample",
    "Upsample",
    "TimeDownsample",
    "TimeUpsample",
    "Identity",
    "Linear",
    "PAD_MODES",
]

Triple = Union[int, Sequence[int]]


def _triple(value: Triple) -> Tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"expected an int or 3 ints, got {value!r}")
    return value


class Identity(nn.Identity):
    """A no-op slot in a level (upstream uses nn.Identity); accepts the cache like its siblings."""

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        return x


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, cast_like(self.weight, x), cast_like(self.bias, x))


class CausalConv3d(nn.Conv3d):
    """Conv3d that sees only the past in time.

    ``padding=(pt, ph, pw)`` means upstream's: ``ph``/``pw`` on both spatial sides, ``2*pt`` frames
    before the clip and none after. The spatial and temporal padding use ``pad_mode`` ("zeros" or
    "replicate"). With a cache, the ``2*pt`` frames before a chunk are the last frames of the
    previous chunks' inputs; only a stream's first chunk is padded.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        kernel_size: Triple,
        stride: Triple = 1,
        padding: Triple = 0,
        bias: bool = True,
        pad_mode: str = "zeros",
    ):
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
        super().__init__(
            dim_in, dim_out, _triple(kernel_size), stride=_triple(stride), padding=0, bias=bias
        )
        pt, ph, pw = _triple(padding)
        self.history = 2 * pt
        self.space_padding = (ph, pw)
        self.pad_mode = pad_mode

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", history={self.history}, "
            f"space_padding={self.space_padding}, pad_mode={self.pad_mode}"
        )

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        past = None
        if self.history and cache is not None:
            past = cache.get(self)
            cache.put(self, CF.causal_conv3d_history(x, past, self.history))
        return CF.causal_conv3d(
            x,
            self.weight,
            self.bias,
            past=past,
            history=self.history,
            space_padding=self.space_padding,
            stride=self.stride,
            pad_mode=self.pad_mode,
        )


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of every voxel (biased variance), upstream's ``LayerNorm``."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return CF.channel_norm(x, self.g, self.b, self.eps)


class Block(nn.Module):
    """Causal conv -> channel LayerNorm -> ReLU."""

    def __init__(self, dim: int, dim_out: int, large_filter: bool = False, pad_mode: str = "zeros"):
        super().__init__()
        kernel, padding = ((3, 7, 7), (1, 3, 3)) if large_filter else ((3, 3, 3), (1, 1, 1))
        self.block = nn.ModuleList(
            [
                CausalConv3d(dim, dim_out, kernel, padding=padding, pad_mode=pad_mode),
                ChannelLayerNorm(dim_out),
                nn.ReLU(),
            ]
        )

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        conv, norm, _ = self.block
        return CF.channel_norm(conv(x, cache), norm.g, norm.b, norm.eps, relu=True)


class ResnetBlock(nn.Module):
    """Two Blocks with an optional per-sample time bias between them, plus a 1x1x1 shortcut."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        time_emb_dim: Optional[int] = None,
        large_filter: bool = False,
        pad_mode: str = "zeros",
    ):
        super().__init__()
        self.mlp = (
            nn.Sequential(nn.LeakyReLU(0.2), Linear(time_emb_dim, dim_out))
            if time_emb_dim is not None
            else None
        )
        self.block1 = Block(dim, dim_out, large_filter, pad_mode)
        self.block2 = Block(dim_out, dim_out, pad_mode=pad_mode)
        self.res_conv = CausalConv3d(dim, dim_out, 1) if dim != dim_out else Identity()

    def time_bias(self, time_emb: torch.Tensor) -> torch.Tensor:
        """The [B, dim_out, 1, 1, 1] bias this block adds for a time embedding."""
        return self.mlp(time_emb)[:, :, None, None, None]

    def forward(
        self,
        x: torch.Tensor,
        time_emb: Optional[torch.Tensor] = None,
        cache: Optional[FeatureCache] = None,
    ) -> torch.Tensor:
        h = self.block1(x, cache)
        if time_emb is not None:
            h = h + self.time_bias(time_emb)
        h = self.block2(h, cache)
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    """Per-frame linear attention over spatial positions (softmax of q over channels, k over
    positions), as upstream. It never looks across frames, so it needs no cache."""

    def __init__(self, dim: int, heads: int = 1, dim_head: Optional[int] = None):
        super().__init__()
        dim_head = dim_head or dim
        self.scale = dim_head**-0.5
        self.heads = heads
        self.dim_head = dim_head
        hidden = dim_head * heads
        self.to_qkv = CausalConv3d(dim, hidden * 3, 1, bias=False)
        self.to_out = CausalConv3d(hidden, dim, 1)

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        return CF.linear_attention(
            x,
            self.to_qkv.weight,
            self.to_out.weight,
            self.to_out.bias,
            heads=self.heads,
            scale=self.scale,
        )


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        return self.fn(self.norm(x), cache)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        return self.fn(x, cache) + x


def attention_block(dim: int) -> Residual:
    """x + LinearAttention(LayerNorm(x)), with upstream's module nesting."""
    return Residual(PreNorm(dim, LinearAttention(dim)))


class Downsample(nn.Module):
    """2x spatial downsample: a (1,3,3) conv with stride (1,2,2)."""

    def __init__(self, dim_in: int, dim_out: Optional[int] = None, pad_mode: str = "zeros"):
        super().__init__()
        self.conv = CausalConv3d(
            dim_in, dim_out or dim_in, (1, 3, 3), (1, 2, 2), (0, 1, 1), pad_mode=pad_mode
        )

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """2x spatial upsample: nearest-exact + (1,5,5) causal conv (``new_upsample``, CDT-base) or a
    (1,5,5) transposed conv with stride (1,2,2) (CDT-small)."""

    def __init__(
        self,
        dim_in: int,
        dim_out: Optional[int] = None,
        new_upsample: bool = False,
        pad_mode: str = "zeros",
    ):
        super().__init__()
        dim_out = dim_out or dim_in
        self.new_upsample = new_upsample
        if new_upsample:
            self.conv = CausalConv3d(
                dim_in, dim_out, (1, 5, 5), padding=(0, 2, 2), pad_mode=pad_mode
            )
        else:
            self.conv = nn.ConvTranspose3d(
                dim_in, dim_out, (1, 5, 5), (1, 2, 2), (0, 2, 2), output_padding=(0, 1, 1)
            )

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        if self.new_upsample:
            return self.conv(CF.upsample_nearest2x(x))
        return CF.conv_transpose_up2x(x, self.conv.weight, self.conv.bias)


class TimeDownsample(nn.Module):
    """Causal 2x temporal downsample: kernel 3, stride 2 along time, per pixel.

    The whole clip is padded with 2 frames in front; a later chunk is preceded by the last frame of
    the previous chunk instead. Chunks after the first must hold an even number of frames (the
    tokenizer's chunk plans guarantee it)."""

    def __init__(self, dim: int, dim_out: Optional[int] = None, pad_mode: str = "zeros"):
        super().__init__()
        dim_out = dim_out or dim
        self.pad_mode = pad_mode
        self.conv = nn.Conv1d(dim, dim_out, 3, stride=2)
        with torch.no_grad():  # upstream's start: the sum of the last two frames
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            idx = torch.arange(min(dim, dim_out))
            self.conv.weight[idx, idx, 1:] = 1.0

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        past = cache.get(self) if cache is not None else None
        if cache is not None:
            cache.put(self, x[:, :, -1:].clone())
        return CF.time_downsample(
            x, self.conv.weight, self.conv.bias, past=past, pad_mode=self.pad_mode
        )


class TimeUpsample(nn.Module):
    """2x temporal upsample: a pointwise conv to 2C channels, then channel pairs become frame pairs.

    On a stream's first chunk the first output frame is dropped (it would precede frame 0), which is
    what turns 1+k latent frames into 1+4k video frames. Upstream signals this with the global
    ``CLIP_FIRST_CHUNK``; here the cache knows whether this layer has run before."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim * 2, 1)
        with torch.no_grad():  # upstream's start: each frame copied into both of its children
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            idx = torch.arange(dim)
            self.conv.weight[2 * idx, idx, 0] = 1.0
            self.conv.weight[2 * idx + 1, idx, 0] = 1.0

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        first_chunk = cache is None or not cache.started(self)
        if cache is not None:
            cache.put(self, None)
        return CF.time_upsample(x, self.conv.weight, self.conv.bias, drop_first=first_chunk)
