"""AutoencoderCDT: CDT behind diffusers' autoencoder interface (``pip install cdt-fast[diffusers]``).

CDT's latents have the layout of Wan 2.1's VAE (16 channels, 4x in time, 8x in space), so an
``AutoencoderCDT`` can be the ``vae`` of diffusers' video pipelines and training scripts::

    vae = AutoencoderCDT.from_upstream("base")  # the released CDT-base (Hugging Face Hub)
    z = vae.encode(video).latent_dist.sample(generator)   # video [B, 3, 1+4k, H, W] in [-1, 1]
    video = vae.decode(z).sample
    vae.save_pretrained("cdt-base-diffusers"); AutoencoderCDT.from_pretrained("cdt-base-diffusers")

The decoder is a diffusion model: ``decode`` starts from noise drawn from ``generator`` when one is
given, else from a fresh generator seeded with the config's ``decode_seed`` (pipelines pass no
generator to ``decode``; the seed makes their runs repeat), else (``decode_seed=None``) from the
global RNG. The saved weights keep upstream's names (``model.context_fn.…``), so the folder's
``diffusion_pytorch_model.safetensors`` also loads with :func:`cdt_fast.load`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.autoencoders.vae import (
        AutoencoderMixin,
        DecoderOutput,
        DiagonalGaussianDistribution,
    )
    from diffusers.models.modeling_outputs import AutoencoderKLOutput
    from diffusers.models.modeling_utils import ModelMixin
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cdt_fast.integrations.diffusers needs diffusers: pip install 'cdt-fast[diffusers]'"
    ) from err

from .. import hub, tiling
from ..config import CDTConfig
from ..reference import CDT

__all__ = ["AutoencoderCDT", "CDTLatentDistribution", "read_latent_stats"]

PathLike = Union[str, os.PathLike]
_STATS_KEY = "latent_stats"
# enable_tiling's first tile, in video pixels; the overlap defaults to a quarter of it. The same
# grid as the Wan VAE's defaults (256-pixel tiles, stride 192).
_DEFAULT_TILE = 256
_WAN_TILE_KEYS = (
    ("tile_sample_min_height", "tile_sample_stride_height"),
    ("tile_sample_min_width", "tile_sample_stride_width"),
)


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


def _runs_offload_hook(method):
    """Run the module's accelerate hook (``_hf_hook``, which ``enable_model_cpu_offload`` and
    ``cpu_offload`` attach) before ``method``. Such a hook wraps ``forward`` only, while pipelines
    call ``encode`` and ``decode``; its ``pre_forward`` moves the weights to the execution device.
    (diffusers' ``apply_forward_hook`` does the same, but only where accelerate was importable when
    diffusers was imported; a hook exists only then, so looking for the hook is equivalent.) The
    weights that sequential offload keeps off the device are brought in for the call
    (:func:`_offloaded_weights_on_device`)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        hook = getattr(self, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self)
        with _offloaded_weights_on_device(self):
            return method(self, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def _offloaded_weights_on_device(module: torch.nn.Module):
    """For the length of one encode or decode, the weights that accelerate's sequential offload
    (``enable_sequential_cpu_offload``, ``cpu_offload``, a ``device_map`` with offload) keeps on
    the 'meta' device are on their execution device, and the layers' hooks leave them there.

    Those hooks load a layer's weights when its ``forward`` runs and drop them after, but CDT's
    fused layers read the weights of the layers they hold (a conv's norm, an attention's
    projections) without calling them, and its chunk loops move each chunk to the weights'
    device. So the VAE's weights are on the device for the call, then offloaded again: peak
    memory holds the VAE's weights (CDT-base: 193M parameters), as model offload does; the
    pipeline's other models stay offloaded layer by layer."""
    try:
        from accelerate.utils import has_offloaded_params
    except ImportError:  # no accelerate, no offload hooks
        yield
        return
    offloaded = [m for m in module.modules() if has_offloaded_params(m)]
    loaded = []
    try:
        for m in offloaded:
            m._hf_hook.pre_forward(m)  # the weights to the execution device
            m._hf_hook.offload = False  # kept there when the layer itself runs
            loaded.append(m)
        yield
    finally:
        for m in loaded:
            m._hf_hook.offload = True
            m._hf_hook.post_forward(m, None)  # back to 'meta'


def _check_seed(seed) -> None:
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64
    ):
        raise ValueError(f"decode_seed must be an int in [0, 2**64) or None, got {seed!r}")


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


class AutoencoderCDT(ModelMixin, AutoencoderMixin, ConfigMixin):
    """CDT with the interface of diffusers' ``AutoencoderKL`` / ``AutoencoderKLWan``.

    Config: ``cdt_config`` (a :class:`cdt_fast.CDTConfig` as a dict; None: CDT-base),
    ``scaling_factor`` (default the model's ``latent_scale``), per-channel ``latents_mean`` /
    ``latents_std`` (what Wan-style pipelines un-normalise with; default 0 / 1), ``decode_steps``
    (DDIM steps of the decoder; default the model's), ``decode_seed`` (seed of the decoder's noise
    when ``decode`` gets no generator; default 0; None: the global RNG). ``z_dim``,
    ``scale_factor_temporal`` and ``scale_factor_spatial`` are derived from the CDT config
    (pipelines read them), as are the Wan VAE's attributes ``temperal_downsample``,
    ``temperal_upsample``, ``spatial_compression_ratio`` and ``temporal_compression_ratio``.

    ``encode`` and ``decode`` follow the caller's grad mode (gradients reach the input and the
    weights, so the VAE can be trained or a loss taken through it); pipelines run them under
    ``torch.no_grad()``.
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
        decode_seed: Optional[int] = 0,
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
        _check_seed(decode_seed)
        self.register_to_config(
            cdt_config=config.to_dict(),
            scaling_factor=float(config.latent_scale if scaling_factor is None else scaling_factor),
            latents_mean=_channel_list(latents_mean, channels, "latents_mean", 0.0),
            latents_std=_channel_list(latents_std, channels, "latents_std", 1.0),
            decode_steps=int(decode_steps or config.sample_steps),
            decode_seed=decode_seed,
            **derived,
        )
        cdt = CDT(config)
        # The networks are this module's only submodule, under upstream's name, so the state dict
        # (and the saved safetensors) reads ``model.context_fn.…`` as cdt_fast.load expects.
        self.model = cdt.model
        object.__setattr__(self, "_cdt", cdt)  # shares ``model``; not a second submodule
        object.__setattr__(self, "_engine", None)
        # The Wan VAE's spelling of the compression, which Wan and SkyReels-V2 pipelines read:
        # one flag per 2x spatial stage (their count gives the spatial factor), set where the stage
        # also halves time (their sum gives the temporal factor). It describes the factors, not
        # the order of CDT's layers (CDT-small halves time at a stage that keeps space).
        space, time = int(math.log2(config.space_factor)), int(math.log2(config.time_factor))
        self.temperal_downsample = [False] * (space - time) + [True] * time
        self.temperal_upsample = self.temperal_downsample[::-1]
        self.spatial_compression_ratio = config.space_factor
        self.temporal_compression_ratio = config.time_factor
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
        # ``model`` holds every weight; ModelMixin.to would warn about fp32 modules it has none of
        out.model.to(device=model.device, dtype=model.dtype)
        return out.eval()

    @classmethod
    def from_upstream(
        cls,
        ckpt: Optional[PathLike] = None,
        preset: Union[str, CDTConfig, None] = None,
        latents_manifest: Optional[PathLike] = None,
        *,
        repo_id: Optional[str] = None,
        filename: Optional[str] = None,
        revision: Optional[str] = None,
        **config: Any,
    ) -> "AutoencoderCDT":
        """From upstream's weights: ``from_upstream("base")`` / ``("small")`` (or ``ckpt=None``
        with ``preset``) loads the released checkpoint from the Hugging Face Hub, as
        :func:`cdt_fast.load` does (``repo_id``, ``filename``, ``revision`` override where from);
        ``from_upstream(path, preset=...)`` reads a local checkpoint (``cdt_base.ckpt``, or
        anything :func:`cdt_fast.load` reads) of the preset ("base", the default, "small" or a
        CDTConfig). Other keywords as :meth:`from_cdt`."""
        from ..api import load

        if isinstance(ckpt, str) and ckpt in hub.RELEASED_PRESETS:
            if preset is not None and preset != ckpt:
                raise ValueError(f"from_upstream({ckpt!r}) names the preset; got preset={preset!r}")
            ckpt, preset = None, ckpt
        model = load(
            "base" if preset is None else preset,
            ckpt,
            repo_id=repo_id,
            filename=filename,
            revision=revision,
        )
        return cls.from_cdt(model, latents_manifest=latents_manifest, **config)

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
        """Run encode/decode on the engine (:func:`cdt_fast.accelerate`). The engine computes from
        its own copy of the weights, without gradients: the module's weights stop requiring
        grad, and it cannot be moved or cast afterwards (do that before). Returns self."""
        from ..engine import accelerate

        stored = {p.dtype for p in self.parameters()}
        if stored != {self.dtype}:
            raise ValueError(
                f"the weights are stored in {sorted(map(str, stored))} and compute in "
                f"{self.dtype} (layerwise casting): the engine computes from its own copies of "
                "the weights, in one dtype; accelerate a model without layerwise casting and pass "
                "dtype= instead"
            )
        engine = accelerate(self._cdt, backend=backend, dtype=dtype, device=device, **kwargs)
        object.__setattr__(self, "_engine", engine)
        return self.requires_grad_(False)

    def _apply(self, fn, *args, **kwargs):
        # The engine holds packed copies of the weights and device buffers that a move or cast of
        # the parameters would leave behind (cpu offload moves the module before every call).
        if getattr(self, "_engine", None) is not None:
            raise RuntimeError(
                "an accelerated AutoencoderCDT cannot be moved or cast (so no model cpu offload "
                "either): move or cast it first, then call accelerate()"
            )
        return super()._apply(fn, *args, **kwargs)

    def enable_layerwise_casting(self, *args, **kwargs) -> None:
        """diffusers' layerwise casting: weights stored in ``storage_dtype``, each layer cast to
        ``compute_dtype`` as it runs; encode and decode compute in ``compute_dtype``. Not after
        :meth:`accelerate` (the engine computes from its own copies of the weights)."""
        if self._engine is not None:
            raise RuntimeError(
                "layerwise casting cannot apply to an accelerated AutoencoderCDT: the engine "
                "computes from its own copies of the weights; enable it on a model that is not "
                "accelerated"
            )
        super().enable_layerwise_casting(*args, **kwargs)

    def enable_group_offload(self, *args, **kwargs) -> None:
        """Not supported: diffusers' group offloading loads a group's weights when the group's
        ``forward`` runs, and CDT's fused layers read the weights of layers they hold without
        calling them (and pipelines call ``encode``/``decode``, never ``forward``), so the
        weights would be on the offload device when they are used. Raises ValueError saying what
        to do instead."""
        raise ValueError(
            "AutoencoderCDT does not support group offloading (its fused layers read weights of "
            "layers they do not call): leave the VAE out, pipe.enable_group_offload(..., "
            "exclude_modules=['vae']), which puts it on the onload device, or use "
            "enable_model_cpu_offload() / enable_sequential_cpu_offload()"
        )

    def _runner_for(self, tensor: torch.Tensor) -> Tuple[Any, Dict[str, Any]]:
        """What runs a call on ``tensor``, with its keywords. The reference follows the caller's
        grad mode and computes in ``self.dtype`` (diffusers' model dtype: under layerwise casting
        the compute dtype, not the storage dtype); the engine is inference-only."""
        if self._engine is None:
            # the weights' dtype, unless diffusers computes in another one
            self._cdt.compute_dtype = None
            if self._cdt.dtype != self.dtype:
                self._cdt.compute_dtype = self.dtype
            return self._cdt, {"grad": True}
        if torch.is_grad_enabled() and (
            tensor.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            raise RuntimeError(
                "AutoencoderCDT runs on the engine (accelerate()), which computes no gradients: "
                "call encode/decode under torch.no_grad() with vae.requires_grad_(False), or "
                "train without accelerate()"
            )
        return self._engine, {}

    # -- memory options -------------------------------------------------------------------------
    def enable_tiling(
        self,
        tile: Optional[Union[int, Tuple[int, int]]] = None,
        overlap: Optional[Union[int, Tuple[int, int]]] = None,
        *,
        tile_sample_min_height: Optional[int] = None,
        tile_sample_min_width: Optional[int] = None,
        tile_sample_stride_height: Optional[int] = None,
        tile_sample_stride_width: Optional[int] = None,
    ) -> None:
        """Encode and decode in overlapping spatial tiles of ``tile`` video pixels (side or
        (height, width)), ``overlap`` pixels shared by neighbours (default a quarter of the tile),
        one tile at a time, so that memory is bounded by the tile at any resolution (see
        :mod:`cdt_fast.tiling`). A frame that fits in one tile is not tiled.

        The Wan VAE's keywords are accepted instead: ``tile_sample_min_height`` / ``_width`` (the
        tile) and ``tile_sample_stride_height`` / ``_width`` (tile minus overlap). Whatever is
        not given keeps its current value (at first: 256-pixel tiles, stride 192, Wan's defaults).
        """
        s = self.config.scale_factor_spatial
        wan = {
            "tile_sample_min_height": tile_sample_min_height,
            "tile_sample_min_width": tile_sample_min_width,
            "tile_sample_stride_height": tile_sample_stride_height,
            "tile_sample_stride_width": tile_sample_stride_width,
        }
        current = self._tiling or tiling.resolve(_DEFAULT_TILE, None, s)
        if any(v is not None for v in wan.values()):
            if tile is not None or overlap is not None:
                raise ValueError(
                    "pass tile/overlap or the Wan VAE's tile_sample_* keywords, not both"
                )
            self._tiling = _wan_tiling(current, wan, s)
        elif tile is not None or overlap is not None:
            self._tiling = tiling.resolve(current.tile if tile is None else tile, overlap, s)
        else:
            self._tiling = current
        self.use_tiling = True

    def clear_cache(self) -> None:
        """The Wan VAE's reset of its causal feature cache between calls. Each CDT encode or
        decode owns its cache for the length of the call, so nothing is kept to clear."""

    def _tile(self) -> Optional[tiling.Tiling]:
        return self._tiling if self.use_tiling else None

    # -- encode / decode -----------------------------------------------------------------------
    @_runs_offload_hook
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
        tf = self.config.scale_factor_temporal
        if isinstance(x, torch.Tensor) and x.dim() == 5 and (x.shape[2] - 1) % tf:
            # Wan's VAE drops the frames past the last whole group unasked; a video pipeline
            # given any clip (video-to-video, VACE) then meets this message, not a shape error
            raise ValueError(
                f"x has {x.shape[2]} frames; AutoencoderCDT encodes 1+{tf}k frames: pass the "
                f"first {1 + tf * ((x.shape[2] - 1) // tf)} (the Wan VAE drops the rest unasked)"
            )
        run, kwargs = self._runner_for(x)
        samples = x.split(1) if slice_batch and x.shape[0] > 1 else (x,)
        params = torch.cat(
            [
                run.encode(s, return_posterior=True, tile=self._tile(), **kwargs)[1].parameters
                for s in samples
            ],
            dim=0,
        )
        dist = CDTLatentDistribution(params.to(self.dtype))
        if not return_dict:
            return (dist,)
        return AutoencoderKLOutput(latent_dist=dist)

    @_runs_offload_hook
    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        steps: Optional[int] = None,
        noise: Optional[torch.Tensor] = None,
        slice_batch: Optional[bool] = None,
    ):
        """Latents [B, z_dim, T, h, w] -> ``DecoderOutput(sample=video)``, video
        [B, 3, 1+4(T-1), 8h, 8w] clamped to [-1, 1]. The decoder's starting noise is given as
        ``noise``, or drawn from ``generator`` (a list: one generator per sample, each sample's
        noise drawn from its own, as diffusers' pipelines take them), or without one from a fresh
        generator on ``z``'s device seeded with the config's ``decode_seed`` (the same latents
        give the same video), or with ``decode_seed=None`` from the global RNG. ``steps``
        defaults to the config's ``decode_steps``. ``slice_batch``: one sample at a time (same
        noise draw, same result; default: :meth:`enable_slicing`'s setting)."""
        steps = self.config.decode_steps if steps is None else steps
        slice_batch = self.use_slicing if slice_batch is None else slice_batch
        run, kwargs = self._runner_for(z)
        if isinstance(generator, (list, tuple)):
            noise, generator = self._noise_per_sample(z, generator, noise), None
        if noise is None and generator is None and self.config.decode_seed is not None:
            generator = torch.Generator(device=z.device).manual_seed(self.config.decode_seed)
        if slice_batch and z.shape[0] > 1:
            if noise is None:  # one draw for the batch, as unsliced, so slicing changes nothing
                noise = self._cdt.initial_noise(z, generator)
            video = torch.cat(
                [
                    run.decode(zi, steps=steps, noise=ni, tile=self._tile(), **kwargs)
                    for zi, ni in zip(z.split(1), noise.split(1))
                ],
                dim=0,
            )
        else:
            video = run.decode(
                z, steps=steps, noise=noise, generator=generator, tile=self._tile(), **kwargs
            )
        video = video.clamp(-1.0, 1.0).to(z.dtype)
        if not return_dict:
            return (video,)
        return DecoderOutput(sample=video)

    def _noise_per_sample(self, z: torch.Tensor, generators, noise) -> torch.Tensor:
        """The decoder's starting noise for ``z``, sample ``i`` drawn from ``generators[i]``."""
        if noise is not None:
            raise ValueError("pass noise or generator, not both")
        if len(generators) != z.shape[0] or not all(
            isinstance(g, torch.Generator) for g in generators
        ):
            raise ValueError(
                f"generator: a list must hold one torch.Generator per sample ({z.shape[0]}), got "
                f"{len(generators)} items"
            )
        return torch.cat([self._cdt.initial_noise(zi, g) for zi, g in zip(z.split(1), generators)])

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
    ):
        """Reconstruct ``sample``: decode the posterior's mode (or a sample of it)."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator=generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict, generator=generator)


def _wan_tiling(current: tiling.Tiling, wan: Dict[str, Optional[int]], s: int) -> tiling.Tiling:
    """The Tiling that the Wan VAE's tile_sample_* keywords describe; a keyword left out keeps
    ``current``'s value (tile, or stride = tile - overlap)."""
    sizes, strides = [], []
    for axis, (size_key, stride_key) in enumerate(_WAN_TILE_KEYS):
        size = current.tile[axis] if wan[size_key] is None else wan[size_key]
        stride = (
            current.tile[axis] - current.overlap[axis]
            if wan[stride_key] is None
            else wan[stride_key]
        )
        for key, value in ((size_key, size), (stride_key, stride)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{key} must be an int of video pixels, got {value!r}")
            if value < 1:
                raise ValueError(f"{key} must be positive, got {value}")
        if stride > size:
            raise ValueError(f"{stride_key}={stride} exceeds the tile ({size_key}={size})")
        sizes.append(size)
        strides.append(stride)
    overlap = tuple(size - stride for size, stride in zip(sizes, strides))
    try:
        return tiling.resolve(tuple(sizes), overlap, s)
    except ValueError as err:
        raise ValueError(
            f"tile_sample_* keywords give tiles of {tuple(sizes)} pixels with strides "
            f"{tuple(strides)}: {err}"
        ) from None
