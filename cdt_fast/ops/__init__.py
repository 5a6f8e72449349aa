"""Launchers that pick an implementation per op and own per-layer buffers (the engine's layer).

- :class:`ConvSelector` / :func:`causal_conv3d`: causal conv on Triton, cuDNN (channels-last) or
  the reference op, chosen from measurements cached per shape in the selector object.
- :class:`CausalConvCache`: one causal conv with its zero-copy [history | chunk] input buffer.
"""

from .conv_cache import CausalConvCache
from .conv_select import (
    BACKENDS,
    ConvSelector,
    apply_epilogue,
    causal_conv3d,
    conv_transpose_up2x,
    time_downsample,
)

__all__ = [
    "BACKENDS",
    "CausalConvCache",
    "ConvSelector",
    "apply_epilogue",
    "causal_conv3d",
    "conv_transpose_up2x",
    "time_downsample",
]
