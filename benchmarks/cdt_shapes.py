"""The activation shapes of a real CDT decode, for the op microbenchmarks to time.

- :data:`CDT_BASE_720`: the CDT-base U-Net's levels while decoding a 720x720 chunk (what the
  norm, attention and history benchmarks run at);
- :func:`decode_shapes`: every causal conv call of one decode (and CDT-small's transposed
  upsampling conv), read off the reference model itself with hooks: a decode at a small probe
  size with the preset's real channel widths and the chunk plan of the target resolution, then
  spatial sizes scaled to the target;
- :func:`block_shapes`: the Block convs among them (causal conv -> channel norm -> ReLU ->
  + residual), as the engine runs them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch

__all__ = ["CDT_BASE_720", "CHANNEL_ALIGN", "ConvShape", "decode_shapes", "block_shapes"]

# CDT-base U-Net levels while decoding a 720x720 chunk of 8 video frames (2 latent frames):
# (name, channels, frames, side). Levels 1-2 halve space, levels 2-3 halve time (upstream's
# space_down (0,1,1,1) + one extra U-Net level, time_down (0,0,1,1)).
CDT_BASE_720 = [
    ("L0", 64, 8, 720),
    ("L1", 128, 8, 720),
    ("L2", 192, 8, 360),
    ("L3", 256, 4, 180),
    ("L4", 320, 2, 90),
    ("L5", 384, 2, 45),
]
CHANNEL_ALIGN = 16  # what the engine pads the U-Net's concatenated input to under Triton


@dataclass(frozen=True)
class ConvShape:
    """One causal conv call of a decode (``h``/``w``: the conv's source frame size)."""

    cin: int
    cout: int
    kernel: tuple
    stride: tuple
    space_padding: tuple
    history: int
    pad_mode: str
    upsample2x: bool
    frames: int
    past: int
    h: int
    w: int
    batch: int = 1
    transposed: bool = False

    def out_size(self):
        if self.transposed:
            return self.frames, 2 * self.h, 2 * self.w
        s = 2 if self.upsample2x else 1
        kt, kh, kw = self.kernel
        ph, pw = self.space_padding
        t = (self.history + self.frames - kt) // self.stride[0] + 1
        return (
            t,
            (s * self.h + 2 * ph - kh) // self.stride[1] + 1,
            (s * self.w + 2 * pw - kw) // self.stride[2] + 1,
        )

    def flops(self) -> float:
        t, h, w = self.out_size()
        taps = self.kernel[0] * self.kernel[1] * self.kernel[2]
        return 2.0 * self.batch * t * h * w * self.cout * self.cin * taps

    def bytes_moved(self, path: str, itemsize: int) -> float:
        """Bytes read + written by the arrangement, each tensor pass counted once; weights included.
        An analytic count (caches are not modelled), for comparing arrangements."""
        t, h, w = self.out_size()
        frame = self.batch * self.cin * self.h * self.w * itemsize
        weight = self.cout * self.cin * self.kernel[0] * self.kernel[1] * self.kernel[2] * itemsize
        out = self.batch * self.cout * t * h * w * itemsize
        window = self.history + self.frames
        if self.transposed or path == "triton":
            # One read of [history | chunk] (upsampling folded into the loads), the output, and
            # the refresh of the cached frames. cuDNN's arrangements concatenate and pad first.
            return window * frame + weight + out + 2 * self.past * frame
        scale = 2 if self.upsample2x else 1
        big = frame * scale * scale  # a frame at the conv's resolution
        ph, pw = self.space_padding
        padded = (
            big
            * (self.h * scale + 2 * ph)
            * (self.w * scale + 2 * pw)
            / (self.h * self.w * scale * scale)
        )
        total = weight + out
        if self.upsample2x:
            total += self.frames * (frame + big)
        if self.past:
            total += 2 * (self.past + self.frames) * big  # cat
        if self.history > self.past or ph or pw:
            total += window * (big + padded)  # F.pad
            total += window * padded  # the conv reads the padded copy
        else:
            total += window * big
        if self.history:
            total += 2 * min(self.history, self.past + self.frames) * frame  # clone of the cache
        return total


def _conv_recorder(
    shapes: Counter, upsample_convs: set, scaled: Callable[[int, int], int], size: Tuple[int, int]
):
    """A forward pre-hook of CausalConv3d that counts its call's :class:`ConvShape`."""

    def record(module, args):
        x = args[0]
        cache = args[1] if len(args) > 1 else None
        past = 0
        if module.history and cache is not None and cache.started(module):
            past = cache.get(module).shape[2]
        up = module in upsample_convs
        h, w = x.shape[3], x.shape[4]
        if up:  # Upsample(new_upsample) feeds the conv an upsampled frame: fold it into the conv
            h, w = h // 2, w // 2
        shape = ConvShape(
            module.in_channels,
            module.out_channels,
            tuple(module.kernel_size),
            tuple(module.stride),
            tuple(module.space_padding),
            module.history,
            module.pad_mode,
            up,
            x.shape[2],
            past,
            scaled(h, size[0]),
            scaled(w, size[1]),
        )
        shapes[shape] += 1

    return record


def _transposed_recorder(shapes: Counter, scaled: Callable[[int, int], int], size: Tuple[int, int]):
    """A forward pre-hook of an Upsample(transposed conv) that counts its conv's shape (the
    ConvTranspose3d runs through the functional op, so its Upsample module is hooked)."""

    def record(upsample, args):
        x, conv = args[0], upsample.conv
        shape = ConvShape(
            conv.in_channels,
            conv.out_channels,
            tuple(conv.kernel_size),
            tuple(conv.stride),
            (2, 2),
            0,
            "zeros",
            False,
            x.shape[2],
            0,
            scaled(x.shape[3], size[0]),
            scaled(x.shape[4], size[1]),
            transposed=True,
        )
        shapes[shape] += 1

    return record


def decode_shapes(
    preset: str, height: int, width: int, frames: int = 17, probe: int = 16
) -> Counter:
    """Counter of :class:`ConvShape` over one decode of ``frames`` video frames at
    ``height`` x ``width`` (batch 1), chunked as the decoder runs at that resolution."""
    from cdt_fast import CDT, CDTConfig, chunking
    from cdt_fast.reference.layers import CausalConv3d, Upsample

    cfg = CDTConfig.preset(preset)
    model = CDT(cfg).eval()
    factor = cfg.space_factor
    shapes: Counter = Counter()

    def scaled(n: int, full: int) -> int:
        return max(1, round(n * full / probe))

    upsample_convs = {m.conv for m in model.modules() if isinstance(m, Upsample)}
    conv_hook = _conv_recorder(shapes, upsample_convs, scaled, (height, width))
    transposed_hook = _transposed_recorder(shapes, scaled, (height, width))
    hooks = []
    for m in model.modules():
        if isinstance(m, CausalConv3d):
            hooks.append(m.register_forward_pre_hook(conv_hook))
        elif isinstance(m, Upsample) and not m.new_upsample:
            hooks.append(m.register_forward_pre_hook(transposed_hook))
    lt = chunking.latent_frames(frames, cfg.time_factor)
    latent = torch.zeros(1, cfg.latent_dim, lt, probe // factor, probe // factor)
    try:
        with torch.no_grad():
            model.decode(
                latent, chunk_frames=cfg.decode_chunk_frames(height // factor, width // factor)
            )
    finally:
        for h in hooks:
            h.remove()
    return shapes


def block_shapes(preset: str, resolution: int) -> List[Tuple[tuple, int]]:
    """[((cin, cout, kernel, pad_mode, frames, h, w), count)] of the Block convs of one decode, most
    expensive first. Steady state: every chunk is taken with its cache full; the 19- or 6-channel
    U-Net input is padded to :data:`CHANNEL_ALIGN` channels as the engine pads it."""
    blocks: Counter = Counter()
    for s, count in decode_shapes(preset, resolution, resolution).items():
        if (
            s.transposed
            or s.upsample2x
            or s.stride != (1, 1, 1)
            or s.cout <= 3
            or s.kernel not in ((3, 3, 3), (3, 7, 7))
        ):
            continue
        cin = s.cin + -s.cin % CHANNEL_ALIGN
        blocks[(cin, s.cout, s.kernel, s.pad_mode, s.frames, s.h, s.w)] += count

    def cost(item):
        (cin, cout, kernel, _, frames, h, w), count = item
        return count * frames * h * w * cin * cout * kernel[0] * kernel[1] * kernel[2]

    return sorted(blocks.items(), key=cost, reverse=True)
