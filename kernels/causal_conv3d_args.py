"""The causal conv's arguments, checked before anything is allocated or launched: the fused
epilogue's (:class:`Epilogue`), the call's geometry (:func:`check_conv`: shapes, strides,
padding, the part of ``past`` it reads) and the output shape (:func:`output_shape`). Each bad
argument raises naming it and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from cdt_fast.functional import PAD_MODES

from ._common import check_activation, check_launchable, param_vector, same_data

__all__ = ["Epilogue", "ConvGeometry", "EpilogueTensors", "check_conv", "check_epilogue"]


@dataclass(frozen=True)
class Epilogue:
    """Ops fused after the conv (see :mod:`.causal_conv3d` for order and contract)."""

    norm_weight: Optional[torch.Tensor] = None
    norm_bias: Optional[torch.Tensor] = None
    eps: float = 1e-5
    relu: bool = False
    channel_bias: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class ConvGeometry:
    """A checked conv call: its sizes, the virtual input ``[front | past frames | x]`` and the
    output shape. ``past`` is in x's dtype, None when no past frame is read."""

    cin: int
    cout: int
    kernel: Tuple[int, int, int]
    stride: Tuple[int, int, int]
    padding: Tuple[int, int]
    front: int
    past: Optional[torch.Tensor]
    past_offset: int
    past_frames: int
    out_shape: Tuple[int, int, int, int, int]

    @property
    def rows(self) -> int:
        """Output voxels: the GEMM's M."""
        b, _, t, h, w = self.out_shape
        return b * t * h * w


@dataclass(frozen=True)
class EpilogueTensors:
    """A checked :class:`Epilogue`: flat norm affine, the channel bias as [B, Cout] with its
    strides, the residual (None where a stage is off)."""

    norm_weight: Optional[torch.Tensor]
    norm_bias: Optional[torch.Tensor]
    channel_bias: Optional[torch.Tensor]
    channel_bias_strides: Tuple[int, int]
    residual: Optional[torch.Tensor]
    eps: float
    relu: bool


def _ints(value, n: int, name: str, minimum: int) -> Tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of {n} ints, got {value!r}") from None
    if len(out) != n or any(v < minimum for v in out):
        raise ValueError(f"{name} must be {n} ints >= {minimum}, got {value!r}")
    return out


def check_tensor(t: torch.Tensor, name: str, x: torch.Tensor, ndim: int) -> None:
    """``t`` is a tensor of ``ndim`` dims on x's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def output_shape(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    frames_in: int,
    space_padding: Sequence[int],
    stride: Sequence[int],
    upsample2x: bool,
) -> Tuple[int, int, int, int, int]:
    """Output shape of a conv over ``frames_in`` virtual frames ([pad | past | x])."""
    b, _, _, h, w = x_shape
    cout, _, kt, kh, kw = weight_shape
    scale = 2 if upsample2x else 1
    hv, wv = h * scale + 2 * space_padding[0], w * scale + 2 * space_padding[1]
    if frames_in < kt or hv < kh or wv < kw:
        raise ValueError(
            f"causal_conv3d: input of {frames_in} frames (padding and past included) x {hv}x{wv} "
            f"(padded) is smaller than the kernel {kt}x{kh}x{kw}"
        )
    return (
        b,
        cout,
        (frames_in - kt) // stride[0] + 1,
        (hv - kh) // stride[1] + 1,
        (wv - kw) // stride[2] + 1,
    )


def _check_input(x: torch.Tensor) -> None:
    check_activation(x, "x", "causal_conv3d")
    check_launchable(x, "causal_conv3d")


def _check_weight_and_bias(x, weight, bias) -> None:
    cin, cout, wcin = x.shape[1], weight.shape[0], weight.shape[1]
    if wcin != cin:
        raise ValueError(f"weight expects {wcin} input channels but x has {cin}")
    if bias is not None:
        check_tensor(bias, "bias", x, 1)
        if bias.shape[0] != cout:
            raise ValueError(f"bias must have {cout} elements, got shape {tuple(bias.shape)}")


def _past_read(x, past, past_offset: int, past_frames: int):
    """(past in x's dtype or None, offset, frames) of the past frames the conv reads."""
    if past is None:
        return None, 0, 0
    if past.shape[:2] != x.shape[:2] or past.shape[3:] != x.shape[3:]:
        raise ValueError(
            f"past must match x in batch, channels and frame size: past "
            f"{tuple(past.shape)} vs x {tuple(x.shape)}"
        )
    if past_offset < 0 or past_frames < 0 or past_offset + past_frames > past.shape[2]:
        raise ValueError(
            f"past_offset={past_offset}, past_frames={past_frames} do not fit "
            f"past's {past.shape[2]} frames"
        )
    past = past.to(x.dtype)
    return (past if past_frames else None), past_offset, past_frames


def check_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    front: int,
    past: Optional[torch.Tensor],
    past_offset: int,
    past_frames: int,
    space_padding: Sequence[int],
    stride: Sequence[int],
    pad_mode: str,
    upsample2x: bool,
) -> ConvGeometry:
    """The geometry of a :func:`~.causal_conv3d.causal_conv3d_frames` call, after checking every
    argument it takes but ``out`` and ``epilogue``."""
    _check_input(x)
    check_tensor(weight, "weight", x, 5)
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    stride = _ints(stride, 3, "stride", 1)
    padding = _ints(space_padding, 2, "space_padding", 0)
    _check_weight_and_bias(x, weight, bias)
    if front < 0:
        raise ValueError(f"front must be >= 0, got {front}")
    past, past_offset, past_frames = _past_read(x, past, past_offset, past_frames)
    shape = output_shape(
        x.shape,
        weight.shape,
        frames_in=front + past_frames + x.shape[2],
        space_padding=padding,
        stride=stride,
        upsample2x=upsample2x,
    )
    cout, cin, kt, kh, kw = weight.shape
    return ConvGeometry(
        cin, cout, (kt, kh, kw), stride, padding, front, past, past_offset, past_frames, shape
    )


def check_epilogue(
    epilogue: Epilogue, x: torch.Tensor, out: torch.Tensor, shape: Sequence[int]
) -> EpilogueTensors:
    """``epilogue``'s tensors checked against the conv's output ``shape`` (``out`` must not be
    the residual: tuning reruns the kernel)."""
    bsz, cout = shape[0], shape[1]
    g = beta = cbias = None
    strides = (0, 0)
    if epilogue.norm_weight is not None or epilogue.norm_bias is not None:
        if epilogue.norm_weight is None or epilogue.norm_bias is None:
            raise ValueError("epilogue: norm_weight and norm_bias go together")
        g = param_vector(epilogue.norm_weight, cout, "epilogue.norm_weight")
        beta = param_vector(epilogue.norm_bias, cout, "epilogue.norm_bias")
    if epilogue.channel_bias is not None:
        cbias = epilogue.channel_bias.reshape(epilogue.channel_bias.shape[0], -1)
        if tuple(cbias.shape) != (bsz, cout):
            raise ValueError(
                f"epilogue: channel_bias must be [{bsz}, {cout}](, 1, 1, 1), got "
                f"{tuple(epilogue.channel_bias.shape)}"
            )
        strides = cbias.stride()
    res = epilogue.residual
    if res is not None:
        if tuple(res.shape) != tuple(shape):
            raise ValueError(
                f"epilogue: residual must have the output's shape {shape}, got {tuple(res.shape)}"
            )
        if same_data(res, out):
            raise ValueError("epilogue: residual must not alias out (autotuning reruns the kernel)")
    for name, t in (("norm_weight", g), ("channel_bias", cbias), ("residual", res)):
        if t is not None and t.device != x.device:
            raise ValueError(f"epilogue: {name} is on {t.device} but x is on {x.device}")
    return EpilogueTensors(g, beta, cbias, tuple(strides), res, float(epilogue.eps), epilogue.relu)
