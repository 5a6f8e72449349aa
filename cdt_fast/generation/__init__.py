"""Latent video generation on CDT latents: a Latte-style diffusion transformer
(:class:`VideoDiT`), its attention dispatch, latent statistics, training, sampling and
evaluation. Import-light: submodules load on first use."""

from __future__ import annotations

import importlib

# Eager, and light (torch only): the submodule shares the function's name, and a lazy attribute
# would be replaced by the submodule once anything imports it.
from .attention import AttentionTable, attention, attention_backends

__all__ = [
    "GenConfig",
    "VideoDiT",
    "KVCache",
    "AttentionTable",
    "attention",
    "attention_backends",
    "ChannelMoments",
    "latent_stats",
    "sample",
    "load_generator",
    "frechet_distance",
    "latent_frechet_distance",
]

_WHERE = {
    "GenConfig": "model",
    "VideoDiT": "model",
    "KVCache": "model",
    "ChannelMoments": "stats",
    "latent_stats": "stats",
    "sample": "sampling",
    "load_generator": "sampling",
    "frechet_distance": "evaluation",
    "latent_frechet_distance": "evaluation",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
