"""AutoencoderCDT: CDT behind diffusers' autoencoder interface (``pip install cdt-fast[diffusers]``).

CDT's latents have the layout of Wan 2.1's VAE (16 channels, 4x in time, 8x in space), so an
``AutoencoderCDT`` can be the ``vae`` of diffusers' video pipelines and training scripts::

    vae = AutoencoderCDT.from_upstream("cdt_base.ckpt", preset="base")
    z = vae.encode(video).latent_dist.sample(generator)   # video [B, 3, 1+4k, H, W] in [-1, 1]
    video = vae.decode(z, generator=generator).sample
    vae.save_pretrained("cdt-base-diffusers"); AutoencoderCDT.from_pretrained("cdt-base-diffusers")

The decoder is a diffusion model: ``decode`` draws its starting noise from ``generator`` (or the
global RNG). The saved weights keep upstream's names (``model.context_fn.…``), so the folder's
``diffusion_pytorch_model.safetensors`` also loads with :func:`cdt_fast.load`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput
    from diffusers.models.modeling_utils import ModelMixin
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cdt_fast.integrations.diffusers needs diffusers: pip install 'cdt-fast[diffusers]'"
    ) from err

from .. import tiling
from ..config import CDTConfig
from ..reference import CDT

__all__ = ["AutoencoderCDT", "CDTLatentDistribution", "read_latent_stats"]

PathLike = Union[str, os.PathLike]
_STATS_KEY = "latent_stats"


class CDTLatentDistribution(DiagonalGaussianDistribution):
    """diffusers' diagonal Gaussian over CDT's posterior parameters; ``kl()`` sums over every
    latent element (channels, time and space), one value per sample."""

    def kl(self, other: Optional[DiagonalGaussianDistribution] = None) -> torch.Tensor:
        dims = list(range(1, self.mean.dim()))
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (
                (self.mean - other.mean).pow(2) / other.var
                + self.var / other.var
                - 1.0
                - self.logvar
                + other.logvar
            )
        return 0.5 * torch.sum(terms, dim=dims)


def read_latent_stats(path: PathLike) -> Tuple[List[float], List[float]]:
    """Per-channel (mean, std) of latents from an ``encode-dataset`` folder's ``manifest.json``
    (or the manifest file itself), as ``cdt-fast latent-stats`` stores them."""
    path = Path(path)
    manifest = path / "manifest.json" if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(f"no latents manifest at {manifest}")
    stats = json.loads(manifest.read_text()).get(_STATS_KEY)
    if not stats or "mean" not in stats or "std" not in stats:
        raise ValueError(
            f"{manifest} holds no per-channel latent statistics ('{_STATS_KEY}' with 'mean' and "
            "'std'); run `cdt-fast latent-stats` on the folder first"
        )
    return [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]


def _channel_list(values, channels: int, name: str, default: float) -> List[float]:
    if values is None:
        return [default] * channels
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    try:
        out = [float(v) for v in values]
    except TypeError:
        raise TypeError(
            f"{name} must be a sequence of floats, got {type(values).__name__}"
        ) from None
    if len(out) != channels:
        raise ValueError(
            f"{name} must hold one value per latent channel ({channels}), got {len(out)}"
        )
    if name == "latents_std" and any(v <= 0 for v in out):
        raise ValueError(f"latents_std must be positive, got {out}")
    return out


class AutoencoderCDT(ModelMixin, ConfigMixin):
    """CDT with the interface of diffusers' ``AutoencoderKL`` / ``AutoencoderKLWan``.

    Config: ``cdt_config`` (a :class:`cdt_fast.CDTConfig` as a dict; None: CDT-base),
    ``scaling_factor`` (default the model's ``latent_scale``), per-channel ``latents_mean`` /
    ``latents_std`` (what Wan-style pipelines un-normalise with; default 0 / 1), ``decode_steps``
    (DDIM steps of the decoder; default the model's). ``z_dim``, ``scale_factor_temporal`` and
    ``scale_factor_spatial`` are derived from the CDT config (pipelines read them).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        cdt_config: Optional[Dict[str, Any]] = None,
        scaling_factor: Optional[float] = None,
        latents_mean: Optional[Sequence[float]] = None,
        latents_std: Optional[Sequence[float]] = None,
        decode_steps: Optional[int] = None,
        z_dim: Optional[int] = None,
        scale_factor_temporal: Optional[int] = None,
        scale_factor_spatial: Optional[int] = None,
    ):
        super().__init__()
        if cdt_config is None:
            config = CDTConfig.base()
        elif isinstance(cdt_config, CDTConfig):
            config = cdt_config
        elif isinstance(cdt_config, dict):
            config = CDTConfig.from_dict(cdt_config)
        else:
            raise TypeError(
                f"cdt_config must be a dict, a CDTConfig or None, got {type(cdt_config).__name__}"
            )
        derived = {
            "z_dim": config.latent_dim,
            "scale_factor_temporal": config.time_factor,
            "scale_factor_spatial": config.space_factor,
        }
        for name, value in (
            ("z_dim", z_dim),
            ("scale_factor_temporal", scale_factor_temporal),
            ("scale_factor_spatial", scale_factor_spatial),
        ):
            if value is not None and value != derived[name]:
                raise ValueError(f"{name}={value} contradicts the CDT config ({derived[name]})")
        channels = config.latent_dim
        if decode_steps is not None and (
            isinstance(decode_steps, bool) or not isinstance(decode_steps, int) or decode_steps < 1
        ):
            raise ValueError(f"decode_steps must be an int >= 1 or None, got {decode_steps!r}")
        self.register_to_config(
            cdt_config=config.to_dict(),
            scaling_factor=float(config.latent_scale if scaling_factor is None else scaling_factor),
            latents_mean=_channel_list(latents_mean, channels, "latents_mean", 0.0),
            latents_std=_channel_list(latents_std, channels, "latents_std", 1.0),
            decode_steps=int(decode_steps or config.sample_steps),
            **derived,
        )
        cdt = CDT(config)
        # The networks are this module's only submodule, under upstream's name, so the state dict
        # (and the saved safetensors) reads ``model.context_fn.…`` as cdt_fast.load expects.
        self.model = cdt.model
        object.__setattr__(self, "_cdt", cdt)  # shares ``model``; not a second submodule
        object.__setattr__(self, "_engine", None)
        self.use_tiling = False
        self.use_slicing = False
        self._tiling: Optional[tiling.Tiling] = None

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_cdt(
        cls,
        model: CDT,
        latents_manifest: Optional[PathLike] = None,
        **config: Any,
    ) -> "AutoencoderCDT":
        """Wrap a :class:`cdt_fast.CDT`'s weights. ``latents_manifest``: an encode-dataset folder
        (or its manifest.json) whose per-channel statistics become ``latents_mean`` /
        ``latents_std``. Other keywords go to the config."""
        if not isinstance(model, CDT):
            raise TypeError(f"model must be a cdt_fast.CDT, got {type(model).__name__}")
        if latents_manifest is not None:
            if "latents_mean" in config or "latents_std" in config:
                raise ValueError("pass latents_manifest or latents_mean/latents_std, not both")
            config["latents_mean"], config["latents_std"] = read_latent_stats(latents_manifest)
        out = cls(cdt_config=model.config.to_dict(), **config)
        out.model.load_state_dict(model.model.state_dict(), strict=True)
        return out.to(device=model.device, dtype=model.dtype).eval()

    @classmethod
    def from_upstream(
        cls,
        ckpt: PathLike,
        preset: Union[str, CDTConfig] = "base",
        latents_manifest: Optional[PathLike] = None,
        **config: Any,
    ) -> "AutoencoderCDT":
        """From an upstream checkpoint (``cdt_base.ckpt`` / ``cdt_small.ckpt``, or anything
        :func:`cdt_fast.load` reads) and its preset ("base", "small" or a CDTConfig)."""
        from ..api import load

        return cls.from_cdt(load(preset, ckpt), latents_manifest=latents_manifest, **config)

    # -- the model behind the interface --------------------------------------------------------
    @property
    def cdt(self) -> CDT:
        """The reference :class:`cdt_fast.CDT` sharing this module's weights."""
        return self._cdt

    @property
    def runner(self):
        """What encode/decode run on: the engine after :meth:`accelerate`, else the reference."""
        return self._engine if self._engine is not None else self._cdt

    def accelerate(
        self, backend: str = "auto", dtype=None, device=None, **kwargs
    ) -> "AutoencoderCDT":
        """Run encode/decode on the engine (:func:`cdt_fast.accelerate`). The engine converts the
        weights in place; move or cast the module before, not after. Returns self."""
        from ..engine import accelerate

        engine = accelerate(self._cdt, backend=backend, dtype=dtype, device=device, **kwargs)
        object.__setattr__(self, "_engine", engine)
        return self

    def enable_tiling(
        self,
        tile: Union[int, Tuple[int, int]] = 256,
        overlap: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Encode and decode in overlapping spatial tiles of ``tile`` video pixels (``overlap``
        pixels shared by neighbours, default a quarter of the tile), one tile at a time, so that
        memory is bounded by the tile at any resolution (see :mod:`cdt_fast.tiling`)."""
        self._tiling = tiling.resolve(tile, overlap, self.config.scale_factor_spatial)
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        """Encode and decode a batch one sample at a time (same numbers, less memory)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def _tile(self):
        return self._tiling if self.use_tiling else None

    # -- encode / decode -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self,
        x: torch.Tensor,
        return_dict: bool = True,
        slice_batch: Optional[bool] = None,
    ):
        """Video [B, 3, 1+4k, H, W] in [-1, 1] -> ``AutoencoderKLOutput(latent_dist=...)`` over
        latents [B, z_dim, 1+k, H/8, W/8] (not scaled nor normalised, as diffusers' VAEs).
        ``slice_batch``: one sample at a time (default: :meth:`enable_slicing`'s setting)."""
        slice_batch = self.use_slicing if slice_batch is None else slice_batch
        samples = x.split(1) if slice_batch and x.shape[0] > 1 else (x,)
        params = torch.cat([self._encode_params(s) for s in samples], dim=0)
        dist = CDTLatentDistribution(params.to(self.dtype))
        if not return_dict:
            return (dist,)
        return AutoencoderKLOutput(latent_dist=dist)

    def _encode_params(self, x: torch.Tensor) -> torch.Tensor:
        _, posterior = self.runner.encode(x, return_posterior=True, tile=self._tile())
        return posterior.parameters

    @torch.no_grad()
    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        generator: Optional[torch.Generator] = None,
        steps: Optional[int] = None,
        noise: Optional[torch.Tensor] = None,
        slice_batch: Optional[bool] = None,
    ):
        """Latents [B, z_dim, T, h, w] -> ``DecoderOutput(sample=video)``, video
        [B, 3, 1+4(T-1), 8h, 8w] clamped to [-1, 1]. The decoder's starting noise is drawn from
        ``generator`` (global RNG without one) or given as ``noise``; ``steps`` defaults to the
        config's ``decode_steps``. ``slice_batch``: one sample at a time (same noise draw, same
        result; default: :meth:`enable_slicing`'s setting)."""
        steps = self.config.decode_steps if steps is None else steps
        slice_batch = self.use_slicing if slice_batch is None else slice_batch
        run = self.runner
        if slice_batch and z.shape[0] > 1:
            if noise is None:  # one draw for the batch, as unsliced, so slicing changes nothing
                noise = self._cdt.initial_noise(z, generator)
            video = torch.cat(
                [
                    run.decode(zi, steps=steps, noise=ni, tile=self._tile())
                    for zi, ni in zip(z.split(1), noise.split(1))
                ],
                dim=0,
            )
        else:
            video = run.decode(z, steps=steps, noise=noise, generator=generator, tile=self._tile())
        video = video.clamp(-1.0, 1.0).to(z.dtype)
        if not return_dict:
            return (video,)
        return DecoderOutput(sample=video)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: Optional[torch.Generator] = None,
    ):
        """Reconstruct ``sample``: decode the posterior's mode (or a sample of it)."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator=generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict, generator=generator)
