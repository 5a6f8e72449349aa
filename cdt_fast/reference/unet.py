"""The denoising 3D causal U-Net (upstream ``Unet``), conditioned on the context pyramid."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import FeatureCache
from ..config import CDTConfig
from .layers import (
    CausalConv3d,
    ChannelLayerNorm,
    Downsample,
    Identity,
    Linear,
    ResnetBlock,
    TimeDownsample,
    TimeUpsample,
    Upsample,
    attention_block,
)

__all__ = ["DenoisingUNet"]


class DenoisingUNet(nn.Module):
    """Predicts the clean video x0 from a noisy sample, a time in [0, 1) and context features."""

    def __init__(self, config: CDTConfig):
        super().__init__()
        self.compute_dtype: Optional[torch.dtype] = None  # see CDT.compute_dtype
        dim, pad = config.unet_dim, config.pad_mode
        mults = config.unet_dim_mults
        levels = len(mults)
        dims = [config.channels] + [dim * m for m in mults]
        in_out = list(zip(dims[:-1], dims[1:]))
        context_dims = [config.out_channels] + [
            config.context_dim * m for m in config.context_dim_mults
        ]
        # The U-Net goes deeper than the context model: extra levels downsample in space (except
        # the bottom one) and never in time.
        extra = levels - len(config.space_down) - 1
        space_down = list(config.space_down) + [1] * extra + [0]
        time_down = list(config.time_down) + [0] * (levels - len(config.time_down))
        rev_space_down = list(reversed(space_down[:-1]))
        rev_time_down = list(reversed(time_down[:-1]))
        self.condition_times = config.condition_times
        time_dim = dim

        self.time_mlp = nn.Sequential(Linear(1, dim * 4), nn.GELU(), Linear(dim * 4, dim))

        self.downs = nn.ModuleList()
        for ind, (dim_in, dim_out) in enumerate(in_out):
            conditioned = ind < levels - 1 and ind < config.condition_times
            self.downs.append(
                nn.ModuleList(
                    [
                        ResnetBlock(
                            dim_in + (context_dims[ind] if conditioned else 0),
                            dim_out,
                            time_dim,
                            large_filter=(ind == 0),
                            pad_mode=pad,
                        ),
                        ResnetBlock(dim_out, dim_out, time_dim, pad_mode=pad),
                        attention_block(dim_out),
                        Downsample(dim_out, pad_mode=pad) if space_down[ind] else Identity(),
                        TimeDownsample(dim_out, pad_mode=pad) if time_down[ind] else Identity(),
                    ]
                )
            )

        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_dim, pad_mode=pad)
        self.mid_attn = attention_block(mid)
        self.mid_block2 = ResnetBlock(mid, mid, time_dim, pad_mode=pad)

        self.ups = nn.ModuleList()
        for ind, (dim_in, dim_out) in enumerate(reversed(in_out[1:])):
            self.ups.append(
                nn.ModuleList(
                    [
                        ResnetBlock(dim_out * 2, dim_in, time_dim, pad_mode=pad),
                        ResnetBlock(dim_in, dim_in, time_dim, pad_mode=pad),
                        attention_block(dim_in),
                        Upsample(dim_in, new_upsample=config.new_upsample, pad_mode=pad)
                        if rev_space_down[ind]
                        else Identity(),
                        TimeUpsample(dim_in) if rev_time_down[ind] else Identity(),
                    ]
                )
            )

        self.final_conv = nn.ModuleList(
            [
                ChannelLayerNorm(dim),
                CausalConv3d(dim, config.channels, (3, 7, 7), padding=(1, 3, 3), pad_mode=pad),
            ]
        )

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations compute in: ``compute_dtype`` when set, else the weights'."""
        return self.compute_dtype or self.final_conv[1].weight.dtype

    def time_embedding(self, time: torch.Tensor) -> torch.Tensor:
        """[B, 1] times in [0, 1) -> [B, unet_dim] embedding, computed in fp32 as upstream."""
        return self.time_mlp(time.float()).to(self.dtype)

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: List[torch.Tensor],
        cache: Optional[FeatureCache] = None,
    ) -> torch.Tensor:
        t = self.time_embedding(time)
        h = x.to(self.dtype)
        skips = []
        for ind, (block1, block2, attn, down, time_down) in enumerate(self.downs):
            if ind < self.condition_times:
                h = torch.cat([h, context[ind]], dim=1)
            h = block1(h, t, cache)
            h = block2(h, t, cache)
            h = attn(h)
            skips.append(h)
            h = time_down(down(h), cache)

        h = self.mid_block1(h, t, cache)
        h = self.mid_attn(h)
        h = self.mid_block2(h, t, cache)

        for block1, block2, attn, up, time_up in self.ups:
            skip = skips.pop()
            if h.shape[2:] != skip.shape[2:]:
                # Odd sizes: 2x upsampling overshoots a ceil-halved level; crop back as upstream.
                h = F.interpolate(h.float(), size=skip.shape[2:], mode="nearest").type_as(h)
            h = torch.cat([h, skip], dim=1)
            h = block1(h, t, cache)
            h = block2(h, t, cache)
            h = attn(h)
            h = time_up(up(h), cache)

        norm, conv = self.final_conv
        return conv(norm(h), cache)
