"""FeatureCache: the causal state carried from one chunk of a video to the next.

Upstream keeps this state in lists on the modules and steers it with module-level globals
(``CLIP_FIRST_CHUNK``, ``CausalConv3d.PAD_MODE``), so two videos cannot be in flight at once. Here
one encode or decode call owns one cache object and hands it to every layer it runs; a layer keys
its slot by itself, so the cache needs no registration and no running index.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

__all__ = ["FeatureCache"]


class FeatureCache:
    """Per-layer tensors kept between chunks of one stream (one video, one encode/decode call).

    A layer that has never been called on this cache is at the start of the stream: causal convs
    pad the past instead of reading it, temporal upsampling drops the frame that precedes the
    video. Memory is bounded by the layers' history lengths, not by the video length.
    """

    def __init__(self) -> None:
        self._slots: Dict[nn.Module, Optional[torch.Tensor]] = {}

    def started(self, layer: nn.Module) -> bool:
        """Whether ``layer`` has already processed a chunk of this stream."""
        return layer in self._slots

    def get(self, layer: nn.Module) -> Optional[torch.Tensor]:
        return self._slots.get(layer)

    def put(self, layer: nn.Module, value: Optional[torch.Tensor]) -> None:
        """Store ``value`` (or just the fact that the layer ran, with None) for the next chunk."""
        self._slots[layer] = value

    def __len__(self) -> int:
        return len(self._slots)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._slots.values() if t is not None)

    def clear(self) -> None:
        self._slots.clear()

    def __repr__(self) -> str:
        return f"FeatureCache(layers={len(self)}, nbytes={self.nbytes()})"
