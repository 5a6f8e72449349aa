"""CDT: the tokenizer's public face, encode/decode chunk loops over the two networks."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple, Union

import torch
from torch import nn

from .. import chunking, tiling
from ..cache import FeatureCache
from ..config import CDTConfig
from ..validation import (
    check_chunk_frames,
    check_generator,
    check_latent,
    check_noise,
    check_steps,
    check_video,
)
from .context import ContextModel
from .diffusion import DDIMSchedule
from .posterior import DiagonalGaussian
from .unet import DenoisingUNet

__all__ = ["CDT", "CDTNetworks"]


def _grad_mode(grad: bool):
    """Autograd off (upstream's encode/decode never record), or with ``grad`` the caller's mode."""
    return contextlib.nullcontext() if grad else torch.no_grad()


@torch.no_grad()
def _without_grad(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``chunks`` advanced with autograd off at every step: a stream runs where it is consumed,
    outside the method that built it, so the method's own grad mode would not cover it (and a
    feature cache would chain every chunk's graph to the next)."""
    yield from chunks


class CDTNetworks(nn.Module):
    """Holds the two networks under upstream's names (``context_fn``, ``denoise_fn``), so that the
    state dict of :class:`CDT` reads ``model.context_fn.…`` / ``model.denoise_fn.…``."""

    def __init__(self, config: CDTConfig):
        super().__init__()
        self.context_fn = ContextModel(config)
        self.denoise_fn = DenoisingUNet(config)


class CDT(nn.Module):
    """Conditioned Diffusion-based video Tokenizer, reference implementation.

    ``encode``: [B, 3, 1+4k, H, W] video in [-1, 1] -> [B, latent_dim, 1+k, H/8, W/8] latents.
    ``decode``: latents -> video, by a conditional causal diffusion model (DDIM, x-prediction,
    ``steps`` steps, 1 by default) starting from ``sample_gamma * noise``.
    Both run in chunks of frames with an explicit :class:`~cdt_fast.cache.FeatureCache`; any chunk
    plan gives the whole-clip result.
    """

    def __init__(self, config: Optional[CDTConfig] = None):
        super().__init__()
        self.config = config if config is not None else CDTConfig.base()
        if not isinstance(self.config, CDTConfig):
            raise TypeError(f"config must be a CDTConfig, got {type(self.config).__name__}")
        self.model = CDTNetworks(self.config)
        self.latent_scale = self.config.latent_scale
        self.sample_steps = self.config.sample_steps

    # -- conveniences ------------------------------------------------------------------------
    @property
    def context_model(self) -> ContextModel:
        return self.model.context_fn

    @property
    def unet(self) -> DenoisingUNet:
        return self.model.denoise_fn

    @property
    def dtype(self) -> torch.dtype:
        return self.context_model.dtype

    @property
    def compute_dtype(self) -> Optional[torch.dtype]:
        """The dtype activations compute in when it is not the weights' (None: the weights').

        For weights stored narrower than they compute, cast up layer by layer as each runs
        (diffusers' layerwise casting: float8 storage, bf16 compute). Every layer casts its
        parameters to its input's dtype, so this decides the dtype of the whole computation.
        """
        return self.context_model.compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, dtype: Optional[torch.dtype]) -> None:
        if dtype is not None and (
            not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
        ):
            raise TypeError(f"compute_dtype must be a floating torch.dtype or None, got {dtype!r}")
        self.context_model.compute_dtype = dtype
        self.unet.compute_dtype = dtype

    @property
    def device(self) -> torch.device:
        return self.unet.final_conv[1].weight.device

    @property
    def z_dim(self) -> int:  # upstream's name
        return self.config.latent_dim

    def extra_repr(self) -> str:
        return f"config={self.config}"

    # -- encode ------------------------------------------------------------------------------
    def encode(
        self,
        x: torch.Tensor,
        return_posterior: bool = False,
        chunk_frames: Optional[int] = None,
        scale_factor: float = 1.0,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
        grad: bool = False,
        **_upstream_kwargs,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, DiagonalGaussian]]:
        """Video [B, 3, 1+4k, H, W] in [-1, 1] -> posterior mode [B, latent_dim, 1+k, H/8, W/8].

        ``chunk_frames``: video frames per chunk after the first frame (a multiple of 4); None uses
        upstream's resolution-based default. ``scale_factor`` multiplies the latent (upstream API).
        With ``return_posterior=True`` returns ``(z, posterior)``. ``tile``: encode in
        overlapping spatial tiles of this many pixels (side or (height, width)), one tile at a
        time, with ``tile_overlap`` pixels shared by neighbours (see :mod:`cdt_fast.tiling`).
        ``grad``: follow the caller's grad mode (gradients reach ``x`` and the weights, for
        training through the tokenizer); by default no autograd graph is built, as upstream.
        """
        check_video(x, "x", self.config.space_factor)
        chunk = check_chunk_frames(chunk_frames, self.config.time_factor)
        tiles = tiling.resolve(tile, tile_overlap, self.config.space_factor)
        with _grad_mode(grad):
            if tiles is None:
                params = torch.cat(list(self._encode_chunks(x, chunk)), dim=2)
            else:
                params = tiling.tiled_encode(
                    x,
                    tiles,
                    self.config.space_factor,
                    lambda x_tile: self._encode_chunks(x_tile, chunk),
                    time_factor=self.config.time_factor,
                )
            posterior = DiagonalGaussian(params)
            z = posterior.mode() * scale_factor
        return (z, posterior) if return_posterior else z

    def encode_chunks(
        self,
        x: torch.Tensor,
        chunk_frames: Optional[int] = None,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> Iterator[torch.Tensor]:
        """Posterior parameters chunk by chunk (fp32, on the model's device). No input checks
        (``x`` may be a lazily sliced clip). Without gradients, like ``encode`` (training calls
        ``context_model.encode`` directly). With ``tile``, ``x`` must be a tensor; all tiles
        advance chunk by chunk together, each with its own feature cache."""
        tiles = tiling.resolve(tile, tile_overlap, self.config.space_factor)
        if tiles is None:
            return _without_grad(self._encode_chunks(x, chunk_frames))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor when tiling, got {type(x).__name__}")
        return _without_grad(
            tiling.tiled_encode(
                x,
                tiles,
                self.config.space_factor,
                lambda x_tile: self._encode_chunks(x_tile, chunk_frames),
                lockstep=True,
                time_factor=self.config.time_factor,
            )
        )

    def _encode_chunks(self, x, chunk_frames: Optional[int]) -> Iterator[torch.Tensor]:
        _, _, frames, height, width = x.shape
        chunk = chunk_frames or self.config.encode_chunk_frames(height, width)
        cache = FeatureCache()
        for start, stop in chunking.encode_plan(frames, chunk, self.config.time_factor):
            yield self.context_model.encode(x[:, :, start:stop].to(self.device), cache)

    # -- decode ------------------------------------------------------------------------------
    def output_shape(self, z_shape) -> Tuple[int, int, int, int, int]:
        b, _, t, h, w = z_shape
        s = self.config.space_factor
        return (
            b,
            self.config.channels,
            chunking.video_frames(t, self.config.time_factor),
            h * s,
            w * s,
        )

    def initial_noise(
        self, z: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Standard normal noise of the decode's output shape, drawn as upstream draws it
        (``time_factor`` frames per latent frame, the first ``time_factor - 1`` dropped)."""
        b, c, t, h, w = self.output_shape(z.shape)
        tf = self.config.time_factor
        full = torch.randn(
            (b, c, t + tf - 1, h, w),
            generator=generator,
            dtype=z.dtype,
            device=generator.device if generator is not None else z.device,
        )
        return full[:, :, tf - 1 :].to(z.device)

    def decode(
        self,
        z: torch.Tensor,
        steps: Optional[int] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        chunk_frames: Optional[int] = None,
        scale_factor: float = 1.0,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
        grad: bool = False,
        **_upstream_kwargs,
    ) -> torch.Tensor:
        """Latent [B, latent_dim, T, h, w] -> video [B, 3, 1+4(T-1), 8h, 8w] (fp32).

        ``steps``: DDIM steps (default ``self.sample_steps``, 1). ``noise``: standard normal of the
        output shape; None draws it from ``generator`` (or the global RNG). ``chunk_frames``: latent
        frames per chunk; None uses upstream's resolution-based default. ``tile``: decode in
        overlapping spatial tiles of this many video pixels, one tile at a time through all its
        chunks (activation memory bounded by the tile), ``tile_overlap`` pixels shared by
        neighbours; the noise is drawn whole, as without tiling. ``grad``: follow the caller's
        grad mode (gradients reach ``z``, ``noise`` and the weights through every sampling step);
        by default no autograd graph is built, as upstream.
        """
        tiles = tiling.resolve(tile, tile_overlap, self.config.space_factor)
        with _grad_mode(grad):
            if tiles is None:
                chunks = self._untiled_stream(
                    z, steps, noise, generator, chunk_frames, scale_factor
                )
                return torch.cat(list(chunks), dim=2)
            return self._tiled_decode(z, steps, noise, generator, chunk_frames, scale_factor, tiles)

    def decode_stream(
        self,
        z: torch.Tensor,
        steps: Optional[int] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        chunk_frames: Optional[int] = None,
        scale_factor: float = 1.0,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> Iterator[torch.Tensor]:
        """Like :meth:`decode`, but yields each chunk's frames as soon as they are done. With
        ``tile``, all tiles advance chunk by chunk together, each with its own feature caches."""
        tiles = tiling.resolve(tile, tile_overlap, self.config.space_factor)
        if tiles is None:
            chunks = self._untiled_stream(z, steps, noise, generator, chunk_frames, scale_factor)
        else:
            chunks = self._tiled_decode(
                z, steps, noise, generator, chunk_frames, scale_factor, tiles, lockstep=True
            )
        return _without_grad(chunks)

    def _untiled_stream(self, z, steps, noise, generator, chunk_frames, scale_factor):
        """A whole-frame decode's chunks; the arguments are checked now, not at the first chunk."""
        z, steps, noise, chunk = self._check_decode(z, steps, noise, generator, chunk_frames)
        return self._decode_stream(z / scale_factor, steps, noise, generator, chunk)

    def _tiled_decode(
        self, z, steps, noise, generator, chunk_frames, scale_factor, tiles, lockstep=False
    ):
        """A decode in ``tiles``: the noise is drawn whole, as an untiled decode draws it, and each
        tile gets its slice. ``lockstep``: a stream whose tiles advance chunk by chunk together;
        else the whole video, one tile at a time."""
        z, steps, noise, chunk = self._check_decode(z, steps, noise, generator, chunk_frames)
        noise = self.initial_noise(z, generator) if noise is None else noise
        return tiling.tiled_decode(
            z / scale_factor,
            noise,
            tiles,
            self.config.space_factor,
            lambda z_tile, noise_tile: self._decode_stream(z_tile, steps, noise_tile, None, chunk),
            lockstep=lockstep,
        )

    def _check_decode(self, z, steps, noise, generator, chunk_frames):
        """Validated decode arguments (tiled decodes then draw the noise whole, as an untiled
        decode draws it, and give each tile its slice)."""
        check_latent(z, self.config.latent_dim, "z")
        steps = check_steps(self.sample_steps if steps is None else steps)
        check_noise(noise, self.output_shape(z.shape))
        check_generator(generator)
        chunk = check_chunk_frames(chunk_frames)
        return z, steps, noise, chunk

    def _decode_stream(self, z, steps, noise, generator, chunk) -> Iterator[torch.Tensor]:
        cfg = self.config
        _, _, frames, height, width = z.shape
        chunk = chunk or cfg.decode_chunk_frames(height, width)
        if noise is None:
            noise = self.initial_noise(z, generator)
        schedule = DDIMSchedule.create(cfg.num_timesteps, steps)
        context_cache = FeatureCache()
        # One U-Net cache per sampling step: chunk i at step s needs step s of chunks < i only, so
        # looping chunks outside steps is upstream's steps-outside-chunks loop reordered.
        unet_caches = [FeatureCache() for _ in range(steps)]
        for start, stop in chunking.decode_plan(frames, chunk):
            context = self.context_model.decode(z[:, :, start:stop].to(self.device), context_cache)
            a, b = chunking.video_span(start, stop, cfg.time_factor)
            x = (cfg.sample_gamma * noise[:, :, a:b]).float().to(self.device)
            for step in reversed(range(steps)):
                time = schedule.time_input(step, x.shape[0], x.device)
                x0 = self.unet(x, time, context, unet_caches[step]).float()
                x = schedule.step(x, x0, step)
            yield x

    # -- round trip --------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Reconstruct a video: decode(encode(x)). Keyword arguments go to ``decode``."""
        return self.decode(self.encode(x), **kwargs)

    @torch.no_grad()
    def forward_with_info(self, x: torch.Tensor, **kwargs):
        """Upstream's ``forward_with_info``: (reconstruction, mu, logvar, std of mu)."""
        z, posterior = self.encode(x, return_posterior=True)
        return self.decode(z, **kwargs), posterior.mean, posterior.logvar, posterior.mean.std()
