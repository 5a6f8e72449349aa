"""The FLOP model of CDT behind the benchmark's ``tflops`` and ``pct_peak`` columns.

What is counted: multiply-accumulates (MACs) of the contractions, the work tensor cores do --
every convolution (causal 3D convs, the 1x1x1 shortcut and qkv/out projections, the transposed
upsampling conv of CDT-small, the temporal down/upsampling convs), the time-MLP linears, and the
two batched matmuls of each linear attention (``k v^T`` and ``context^T q``). FLOPs = 2 x MACs.
Norms, softmaxes, activations, padding, nearest upsampling and the DDIM update are not counted
(they are memory-bound and a small fraction of the work); this is the usual convention of
model-FLOP utilisation figures and of ``torch.utils.flop_counter``.

How: the reference networks are built on the ``meta`` device (no memory, no arithmetic) and run
on a whole clip with forward hooks on the layers that contract; each hook counts its layer's MACs
from its input/output shapes and weight shape. So the model follows the reference architecture
exactly, for any config and input shape, and gives a per-layer breakdown. Chunking does not
change the conv and attention work (every causal conv computes each output frame exactly once),
so one whole-clip pass stands for any chunk plan; the only per-chunk work, the time MLP and the
per-block time-bias linears on a [B, 1] input (thousands of MACs), is counted once per clip.
Convs count every kernel tap they compute, including taps that read padding (what a dense conv
kernel executes), and the temporal upsample counts the frame the first chunk drops (it is
computed, then sliced off).

Ops: ``encode`` = the encoder on the clip; ``decode`` = the context decoder once plus ``steps``
U-Net passes (the DDIM loop); ``roundtrip`` = both. The same count is used for every
implementation (reference, compiled, engine): it is the algorithm's work, not what a backend
happens to execute.

``aten_macs`` counts the same pass with ``torch.utils.flop_counter.FlopCounterMode`` (at the
level of aten ops: convolution, mm/addmm, bmm) as an independent check of the hooks
(tests/test_bench_flops.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable, Dict, List, Optional, Tuple

import torch

from cdt_fast import CDT, CDTConfig
from cdt_fast.chunking import latent_frames, video_frames
from cdt_fast.reference.layers import (
    CausalConv3d,
    Linear,
    LinearAttention,
    TimeDownsample,
    TimeUpsample,
    Upsample,
)

__all__ = [
    "OPS",
    "LayerMacs",
    "FlopReport",
    "count_macs",
    "aten_macs",
]

OPS = ("encode", "decode", "roundtrip")


@dataclass(frozen=True)
class LayerMacs:
    name: str  # module path inside CDT, e.g. "model.denoise_fn.downs.0.0.block1.block.0"
    kind: str  # layer class
    macs: int  # summed over every call in the pass


@dataclass(frozen=True)
class FlopReport:
    op: str
    config_name: str
    shape: Tuple[int, int, int, int]  # batch, frames, height, width of the video
    steps: int
    layers: Tuple[LayerMacs, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def by_kind(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for layer in self.layers:
            out[layer.kind] = out.get(layer.kind, 0) + layer.macs
        return out

    def by_network(self) -> Dict[str, int]:
        """MACs of the encoder / context decoder (``context_fn``) and the U-Net (``denoise_fn``)."""
        out: Dict[str, int] = {}
        for layer in self.layers:
            net = layer.name.split(".")[1] if layer.name.count(".") else layer.name
            out[net] = out.get(net, 0) + layer.macs
        return out


# -- per-layer MAC rules: (module, inputs, output) -> MACs ----------------------------------------


def _conv_macs(module: CausalConv3d, inputs, out: torch.Tensor) -> int:
    # Every output element is a dot product over C_in/groups x kernel volume.
    return out.numel() * prod(module.weight.shape[1:])


def _transposed_up_macs(module: Upsample, inputs, out: torch.Tensor) -> int:
    if module.new_upsample:
        return 0  # nearest upsample + CausalConv3d: the inner conv's hook counts it
    x = inputs[0]
    # weight [C_in, C_out, kt, kh, kw]: every input element is scattered to C_out x kernel taps.
    return x.numel() * prod(module.conv.weight.shape[1:])


def _linear_attention_macs(module: LinearAttention, inputs, out: torch.Tensor) -> int:
    x = inputs[0]
    b, c, t, h, w = x.shape
    positions = b * t * h * w
    hidden = module.heads * module.dim_head
    qkv = positions * c * 3 * hidden
    # Per frame and head: context = k v^T (d x d over h*w) and out = context^T q (d x h*w over d).
    attention = 2 * b * t * module.heads * module.dim_head * module.dim_head * h * w
    projection = positions * hidden * module.to_out.weight.shape[0]
    return qkv + attention + projection


def _time_down_macs(module: TimeDownsample, inputs, out: torch.Tensor) -> int:
    return out.numel() * prod(module.conv.weight.shape[1:])


def _time_up_macs(module: TimeUpsample, inputs, out: torch.Tensor) -> int:
    x = inputs[0]
    # pointwise conv C -> 2C on every input voxel, including the frame the first chunk drops
    return x.numel() * module.conv.weight.shape[0]


def _linear_macs(module: Linear, inputs, out: torch.Tensor) -> int:
    return inputs[0].numel() * module.out_features


_RULES: Tuple[Tuple[type, Callable], ...] = (
    (CausalConv3d, _conv_macs),
    (Upsample, _transposed_up_macs),
    (LinearAttention, _linear_attention_macs),
    (TimeDownsample, _time_down_macs),
    (TimeUpsample, _time_up_macs),
    (Linear, _linear_macs),
)


def _check_shape(
    op: str, frames: int, height: int, width: int, batch: int, steps: int, config: CDTConfig
) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    for name, value in (
        ("frames", frames),
        ("height", height),
        ("width", width),
        ("batch", batch),
        ("steps", steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    tf, sf = config.time_factor, config.space_factor
    if (frames - 1) % tf:
        raise ValueError(f"frames must be 1 + {tf}k, got {frames}")
    if height % sf or width % sf:
        raise ValueError(f"height and width must be multiples of {sf}, got {height}x{width}")


def _meta_model(config: CDTConfig) -> CDT:
    with torch.device("meta"):
        return CDT(config).eval()


@torch.no_grad()
def _whole_clip_pass(
    model: CDT, op: str, batch: int, frames: int, height: int, width: int, steps: int
) -> None:
    """The networks' work for ``op`` on one whole clip, on meta tensors (no input checks, which
    would read values). Mirrors ``CDT.encode`` / ``CDT.decode`` with a single chunk."""
    cfg = model.config
    meta = torch.device("meta")
    if op in ("encode", "roundtrip"):
        model.context_model.encode(
            torch.empty(batch, cfg.channels, frames, height, width, device=meta)
        )
    if op in ("decode", "roundtrip"):
        sf = cfg.space_factor
        lt = latent_frames(frames, cfg.time_factor)
        z = torch.empty(batch, cfg.latent_dim, lt, height // sf, width // sf, device=meta)
        context = model.context_model.decode(z)
        x = torch.empty(
            batch, cfg.channels, video_frames(lt, cfg.time_factor), height, width, device=meta
        )
        time = torch.zeros(batch, 1, device=meta)
        for _ in range(steps):
            model.unet(x, time, context)


def count_macs(
    config: CDTConfig,
    op: str,
    frames: int,
    height: int,
    width: int,
    *,
    batch: int = 1,
    steps: Optional[int] = None,
) -> FlopReport:
    """MACs per layer of ``op`` on a ``[batch, 3, frames, height, width]`` video (see module doc).
    ``steps`` defaults to the config's ``sample_steps``."""
    steps = config.sample_steps if steps is None else steps
    _check_shape(op, frames, height, width, batch, steps, config)
    model = _meta_model(config)
    totals: Dict[str, List] = {}
    handles = []
    for name, module in model.named_modules():
        for cls, rule in _RULES:
            if isinstance(module, cls):

                def hook(mod, inputs, out, name=name, rule=rule):
                    entry = totals.setdefault(name, [type(mod).__name__, 0])
                    entry[1] += int(rule(mod, inputs, out))

                handles.append(module.register_forward_hook(hook))
                break
    try:
        _whole_clip_pass(model, op, batch, frames, height, width, steps)
    finally:
        for handle in handles:
            handle.remove()
    layers = tuple(LayerMacs(name, kind, macs) for name, (kind, macs) in totals.items() if macs)
    return FlopReport(op, config.name, (batch, frames, height, width), steps, layers)


def aten_macs(
    config: CDTConfig,
    op: str,
    frames: int,
    height: int,
    width: int,
    *,
    batch: int = 1,
    steps: Optional[int] = None,
) -> int:
    """The same pass counted by ``torch.utils.flop_counter.FlopCounterMode`` (aten-level), in MACs."""
    from torch.utils.flop_counter import FlopCounterMode

    steps = config.sample_steps if steps is None else steps
    _check_shape(op, frames, height, width, batch, steps, config)
    model = _meta_model(config)
    with FlopCounterMode(display=False) as counter:
        _whole_clip_pass(model, op, batch, frames, height, width, steps)
    return counter.get_total_flops() // 2
