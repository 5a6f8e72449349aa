"""The encoder and the multi-scale context decoder (upstream ``Compressor``)."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ..cache import FeatureCache
from ..config import CDTConfig
from .layers import (
    CausalConv3d,
    Downsample,
    Identity,
    ResnetBlock,
    TimeDownsample,
    TimeUpsample,
    Upsample,
)

__all__ = ["ContextModel"]


class ContextModel(nn.Module):
    """Video -> posterior parameters (``encode``) and latent -> context features (``decode``).

    ``encode`` returns the raw posterior parameters in fp32 (mean then log-variance on channels).
    ``decode`` returns the conditioning pyramid for the U-Net, finest level first. The quant and
    post-quant paths run in fp32 whatever the model dtype, as upstream.
    """

    def __init__(self, config: CDTConfig):
        super().__init__()
        self.compute_dtype: Optional[torch.dtype] = None  # see CDT.compute_dtype
        c, pad = config.context_dim, config.pad_mode
        dims = [config.channels] + [c * m for m in config.context_dim_mults]
        in_out = list(zip(dims[:-1], dims[1:]))
        rev_dims = [c * m for m in reversed(config.context_dim_mults)] + [config.out_channels]
        rev_in_out = list(zip(rev_dims[:-1], rev_dims[1:]))
        rev_space_down = list(reversed(config.space_down))
        rev_time_down = list(reversed(config.time_down))
        latent = config.latent_dim

        self.enc = nn.ModuleList()
        for ind, (dim_in, dim_out) in enumerate(in_out):
            self.enc.append(
                nn.ModuleList(
                    [
                        ResnetBlock(dim_in, dim_out, None, large_filter=(ind == 0), pad_mode=pad),
                        Downsample(dim_out, pad_mode=pad) if config.space_down[ind] else Identity(),
                        TimeDownsample(dim_out, pad_mode=pad)
                        if config.time_down[ind]
                        else Identity(),
                    ]
                )
            )

        self.dec = nn.ModuleList()
        for ind, (dim_in, dim_out) in enumerate(rev_in_out):
            is_last = ind == len(rev_in_out) - 1
            if rev_space_down[ind]:
                up = Upsample(dim_in if is_last else dim_out, dim_out, config.new_upsample, pad)
            elif is_last:  # the last level maps channels with a ResnetBlock instead
                up = ResnetBlock(dim_in, dim_out, pad_mode=pad)
            else:
                up = Identity()
            self.dec.append(
                nn.ModuleList(
                    [
                        ResnetBlock(dim_in, dim_in if is_last else dim_out, pad_mode=pad),
                        up,
                        TimeUpsample(dim_out) if rev_time_down[ind] else Identity(),
                    ]
                )
            )

        self.quant_conv = CausalConv3d(dims[-1], 2 * latent, 1)
        self.post_quant_conv = CausalConv3d(latent, dims[-1], 1)
        self.quant_conv_res = nn.ModuleList(
            [ResnetBlock(i, o, pad_mode=pad) for i, o in rev_in_out[:-1]]
            + [CausalConv3d(rev_dims[-2], 2 * latent, 1)]
        )
        self.post_quant_conv_res = nn.ModuleList(
            [CausalConv3d(latent, dims[1], 1)]
            + [ResnetBlock(i, o, pad_mode=pad) for i, o in in_out[1:]]
        )

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations compute in: ``compute_dtype`` when set, else the weights'."""
        return self.compute_dtype or self.enc[0][0].block1.block[0].weight.dtype

    def encode(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        h = x.to(self.dtype)
        for resnet, down, time_down in self.enc:
            h = time_down(down(resnet(h, cache=cache)), cache)
        h = h.float()
        return self.quant_conv(h) + _run_chain(self.quant_conv_res, h, cache)

    def decode(self, z: torch.Tensor, cache: Optional[FeatureCache] = None) -> List[torch.Tensor]:
        h = z.float()
        h = (self.post_quant_conv(h) + _run_chain(self.post_quant_conv_res, h, cache)).to(
            self.dtype
        )
        features = []
        for resnet, up, time_up in self.dec:
            h = resnet(h, cache=cache)
            # Upstream runs the mapping ResnetBlock of CDT-base's last level without its cache, so
            # its chunked decode differs from its whole-clip decode; we give it the cache.
            h = up(h, cache=cache)
            h = time_up(h, cache)
            features.append(h)
        return features[::-1]


def _run_chain(
    layers: nn.ModuleList, h: torch.Tensor, cache: Optional[FeatureCache]
) -> torch.Tensor:
    for layer in layers:
        h = layer(h, cache=cache) if isinstance(layer, ResnetBlock) else layer(h)
    return h
