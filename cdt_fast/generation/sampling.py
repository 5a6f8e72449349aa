"""Sampling latents from a trained generator and decoding them to video with the CDT engine.

The sampler integrates the rectified-flow ODE ``dx/dt = v(x, t)`` from noise at ``t = 1`` to a
latent at ``t = 0`` with Euler steps, with classifier-free guidance when a class is asked for. A
causal generator can instead produce the clip ``chunk`` latent frames at a time: each chunk is
sampled attending to the cached keys/values of the finished ones, then run once more, clean
(``t = 0``), to append its own keys/values to the cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..checkpoint import load_into, read_state_dict
from ..config import CDTConfig, safetensors_metadata
from .attention import AttentionTable
from .model import GenConfig, KVCache, VideoDiT
from .stats import LatentNormalizer

__all__ = [
    "Generator",
    "load_generator",
    "demo_generator_path",
    "sample_latents",
    "sample",
    "latent_shape",
]

PathLike = Union[str, os.PathLike]
DEMO_GENERATOR = "generator_demo.safetensors"


@dataclass
class Generator:
    """A loaded generator with what it needs to make videos: the latent normalisation it was
    trained in and the tokenizer whose latents it models."""

    model: VideoDiT
    normalizer: LatentNormalizer
    tokenizer: CDTConfig
    tokenizer_hash: str
    frames: int  # latent frames per training clip
    latent_size: Tuple[int, int]  # (h, w) it samples at by default: its commonest training size
    fps: str = "24"
    class_names: List[str] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)
    # ((h, w), clips) of every latent size it was trained on, the most clips first
    latent_sizes: List[Tuple[Tuple[int, int], int]] = field(default_factory=list)


def demo_generator_path() -> Path:
    """The bundled tiny generator, trained on the demo tokenizer's latents of synthetic clips."""
    path = Path(__file__).resolve().parent.parent / "assets" / DEMO_GENERATOR
    if not path.is_file():
        raise FileNotFoundError(f"the demo generator is missing from the installation: {path}")
    return path


def _weights_file(path: Path, ema: bool) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"generator not found: {path} (a gen-train run folder or a file)")
    names = ["ema.safetensors", "model.safetensors"] if ema else ["model.safetensors"]
    for folder in (path, None):
        if folder is None:  # an unfinished run: its latest checkpoint
            pointer = path / "checkpoints" / "latest"
            if not pointer.is_file():
                break
            folder = path / "checkpoints" / pointer.read_text().strip()
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"{path} holds no generator weights (model.safetensors/ema.safetensors)"
    )


def load_generator(
    path: Optional[PathLike] = None, device: Optional[Union[str, torch.device]] = None, ema=True
) -> Generator:
    """A generator from a ``gen-train`` run folder (its EMA weights by default; an unfinished run's
    latest checkpoint) or a weights file; ``None``: the bundled demo generator."""
    from .train import GENERATOR_KEY

    file = _weights_file(Path(path) if path is not None else demo_generator_path(), ema)
    meta = safetensors_metadata(file).get(GENERATOR_KEY)
    if meta is None:
        raise ValueError(f"{file} is not a generator written by gen-train (no {GENERATOR_KEY})")
    info = json.loads(meta)
    model = VideoDiT(GenConfig.from_dict(info["config"]))
    load_into(model, read_state_dict(file), strict=True, source=str(file))
    model.to(device or "cpu").eval()
    return Generator(
        model=model,
        normalizer=LatentNormalizer.from_dict(info["normalizer"]),
        tokenizer=CDTConfig.from_dict(info["tokenizer"]),
        tokenizer_hash=info["tokenizer_hash"],
        frames=int(info["frames"]),
        latent_size=tuple(info["latent_size"]),
        fps=str(info.get("fps", "24")),
        class_names=list(info.get("class_names", [])),
        info=info,
        latent_sizes=[((int(h), int(w)), int(n)) for h, w, n in info.get("latent_sizes", [])],
    )


def latent_shape(
    gen: Generator, frames: int, size: Optional[Tuple[int, int]] = None
) -> Tuple[int, int, int, int]:
    """(C, T, h, w) of the latent of a ``frames``-frame video at ``size`` = (H, W) (default: the
    commonest size of the training latents)."""
    tok, p = gen.tokenizer, gen.model.config.patch_size
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    if (frames - 1) % tok.time_factor:
        raise ValueError(f"frames must be 1+{tok.time_factor}k, got {frames}")
    t = 1 + (frames - 1) // tok.time_factor
    if size is None:
        h, w = gen.latent_size
    else:
        step = tok.space_factor * p
        if len(size) != 2 or any(s < step or s % step for s in size):
            raise ValueError(f"size must be HxW, multiples of {step}, got {size}")
        h, w = size[0] // tok.space_factor, size[1] // tok.space_factor
    return gen.model.config.in_channels, t, h, w


@torch.no_grad()
def _velocity(model, x, t, y, cfg_scale, backend, cache):
    if y is None or cfg_scale == 1.0:
        return model(x, t, y, backend=backend, cache=cache)
    b = x.shape[0]
    null = torch.full_like(y, model.null_class)
    # One batch of conditional and unconditional inputs; the cache holds each sample once, so a
    # cached (chunked) model evaluates the two halves separately.
    if cache is not None:
        cond = model(x, t, y, backend=backend, cache=cache)
        uncond = model(x, t, null, backend=backend, cache=cache)
    else:
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), backend=backend)
        cond, uncond = both[:b], both[b:]
    return uncond + cfg_scale * (cond - uncond)


@torch.no_grad()
def _integrate(model, noise, steps, y, cfg_scale, backend, cache=None):
    x = noise
    times = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    for i in range(steps):
        t = times[i].expand(x.shape[0])
        v = _velocity(model, x, t, y, cfg_scale, backend, cache)
        x = x + (times[i + 1] - times[i]) * v
    return x


@torch.no_grad()
def sample_latents(
    model: VideoDiT,
    shape: Tuple[int, int, int, int, int],
    *,
    steps: int = 25,
    cfg_scale: float = 1.0,
    labels: Optional[torch.Tensor] = None,
    seed: int = 0,
    backend: Union[str, AttentionTable] = "auto",
    chunk: Optional[int] = None,
) -> torch.Tensor:
    """Normalised latents [B, C, T, h, w] from ``model``. Noise is drawn on the CPU from ``seed``,
    so a seed gives the same sample on any device. ``chunk`` (causal models): latent frames
    generated at a time, with a key/value cache of the earlier ones. ``backend``: the attention
    backend's name (the model keeps its op table, see :meth:`VideoDiT.forward`) or an
    :class:`~cdt_fast.generation.attention.AttentionTable`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    noise = noise.to(device, dtype)
    if labels is not None:
        labels = labels.to(device)
    if chunk is None:
        return _integrate(model, noise, steps, labels, cfg_scale, backend)
    if not model.config.causal:
        raise ValueError("chunk: chunked generation needs a causal generator (GenConfig.causal)")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    cache, out = KVCache(), []
    for start in range(0, shape[2], chunk):
        part = _integrate(
            model, noise[:, :, start : start + chunk], steps, labels, cfg_scale, backend, cache
        )
        zero = torch.zeros(part.shape[0], device=device, dtype=dtype)
        model(part, zero, labels, backend=backend, cache=cache, update_cache=True)
        out.append(part)
    return torch.cat(out, 2)


def _tokenizer_for(gen: Generator, tokenizer, device):
    """The CDT (engine when available) that decodes ``gen``'s latents; the bundled demo model when
    none is given and it is the right one."""
    from ..api import load

    if tokenizer is None:
        from ..train import demo_model_path

        tokenizer = demo_model_path()
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load(tokenizer, device=device)
    config = tokenizer.config
    if config.architecture_hash() != gen.tokenizer_hash:
        raise ValueError(
            f"tokenizer: the generator models latents of CDT {gen.tokenizer.name} (hash "
            f"{gen.tokenizer_hash}), not of {config.name} (hash {config.architecture_hash()}); "
            "pass the tokenizer it was trained on"
        )
    return tokenizer


def sample(
    generator: Union[Generator, PathLike, None] = None,
    *,
    frames: int = 17,
    steps: int = 25,
    cfg: float = 1.0,
    class_label: Optional[int] = None,
    seed: int = 0,
    size: Optional[Tuple[int, int]] = None,
    batch: int = 1,
    chunk: Optional[int] = None,
    backend: str = "auto",
    device: Optional[Union[str, torch.device]] = None,
    output: Optional[PathLike] = None,
    tokenizer=None,
    decode_steps: Optional[int] = None,
    save_latents: Optional[PathLike] = None,
    fps: Optional[Fraction] = None,
    crf: Optional[int] = None,
    engine: bool = True,
) -> torch.Tensor:
    """Sample ``batch`` latents of a ``frames``-frame video (``size`` = (H, W) pixels, default the
    commonest training size) and return them un-normalised, as the tokenizer's encoder would give
    them [B, C, T, h, w]. ``generator``: a :class:`Generator`, a run folder / weights file, or None for
    the bundled demo. ``class_label`` with ``cfg`` > 1: classifier-free guidance.

    ``output``: decode the first sample with ``tokenizer`` (a CDT, or a path; default the bundled
    demo tokenizer), accelerated by :func:`cdt_fast.accelerate` unless ``engine=False``, streaming frames into the video
    file, written atomically. ``save_latents``: also write the first sample as a latent file
    (``cdt-fast decode`` reads it)."""
    gen = generator if isinstance(generator, Generator) else load_generator(generator, device)
    model = gen.model
    if device is not None:
        model.to(device)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    labels = None
    if class_label is not None:
        n = model.config.num_classes
        if n == 0:
            raise ValueError("class_label: this generator is unconditional")
        if not 0 <= class_label < n:
            raise ValueError(f"class_label must be in [0, {n}), got {class_label}")
        labels = torch.full((batch,), class_label, dtype=torch.long)
    shape = (batch,) + latent_shape(gen, frames, size)
    z = sample_latents(
        model,
        shape,
        steps=steps,
        cfg_scale=cfg,
        labels=labels,
        seed=seed,
        backend=backend,
        chunk=chunk,
    )
    z = gen.normalizer.denormalize(z.float()).cpu()
    if output is None and save_latents is None:
        return z
    height, width = shape[3] * gen.tokenizer.space_factor, shape[4] * gen.tokenizer.space_factor
    video = {
        "fps": str(Fraction(fps if fps is not None else gen.fps)),
        "frames": frames,
        "height": height,
        "width": width,
        "source_height": height,
        "source_width": width,
        "padding": {"frames": 0, "bottom": 0, "right": 0},
        "source": "generated",
    }
    if save_latents is not None:
        from ..latents import save_latent

        save_latent(save_latents, z[:1], gen.tokenizer, video)
    if output is not None:
        from .. import video_io
        from ..engine import AcceleratedCDT, accelerate
        from ..pipelines import decode_frames

        video_io.check_output_path(output)
        dev = torch.device(device or "cpu")
        cdt = _tokenizer_for(gen, tokenizer, dev)
        if engine and not isinstance(cdt, AcceleratedCDT):
            cdt = accelerate(cdt)
        chunks = decode_frames(cdt, z[:1], frames, height, width, decode_steps, seed)
        video_io.write_video(output, chunks, Fraction(video["fps"]), crf)
    return z
