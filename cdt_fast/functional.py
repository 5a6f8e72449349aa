"""CDT's ops as plain functions over tensors: the torch backend and the contract of every other.

Each fast backend (Triton in ``cdt_fast.kernels``, the C++/CUDA extension ``cdt_fast._C``)
implements these signatures with the same semantics; the reference layers call these functions,
so the oracle and the torch backend are one piece of code.

Layout: activations are logical ``[B, C, T, H, W]`` tensors in any memory format (the engine uses
``torch.channels_last_3d``); results keep the input's memory format where torch does.
Dtypes: an op computes in the dtype of ``x``; parameters are cast to it when they differ.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .validation import check_attention

__all__ = [
    "PAD_MODES",
    "cast_like",
    "causal_conv3d",
    "causal_conv3d_history",
    "causal_conv3d_norm",
    "channel_norm",
    "linear_attention",
    "linear_attention_block",
    "time_downsample",
    "time_upsample",
    "upsample_nearest2x",
    "conv_transpose_up2x",
    "ddim_coefficients",
    "ddim_update",
    "to_uint8_frames",
    "causal_attention_mask",
    "temporal_attention",
]

PAD_MODES = {"zeros": "constant", "replicate": "replicate"}
# Convs whose input holds more elements than this run one output frame at a time (upstream's
# guard against 32-bit indexing limits in conv kernels).
_MAX_CONV_INPUT_NUMEL = 2**31


def cast_like(param: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    if param is None or param.dtype == x.dtype:
        return param
    return param.to(x.dtype)


def causal_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    past: Optional[torch.Tensor] = None,
    history: int = 0,
    space_padding: Tuple[int, int] = (0, 0),
    stride: Sequence[int] = (1, 1, 1),
    pad_mode: str = "zeros",
    upsample2x: bool = False,
) -> torch.Tensor:
    """Conv3d over ``[pad | past | x]`` along time, with no padding after the chunk.

    ``history`` frames precede every output's window (``kt - 1`` for a causal conv, 0 for kt=1).
    ``past`` holds up to ``history`` frames from earlier chunks of the stream; the frames it lacks
    are padding (zeros, or copies of the first available frame for ``pad_mode="replicate"``).
    ``space_padding=(ph, pw)`` pads both spatial sides with the same mode.
    ``upsample2x``: the conv reads ``x`` (and ``past``) nearest-exact upsampled 2x in space, as
    CDT-base's ``Upsample`` (a fast backend folds this into its loads).
    """
    if upsample2x:
        x = upsample_nearest2x(x)
        past = upsample_nearest2x(past) if past is not None else None
    front = history
    if past is not None and history:
        x = torch.cat([past, x], dim=2)
        front -= past.shape[2]
    ph, pw = space_padding
    if front or ph or pw:
        x = F.pad(x, (pw, pw, ph, ph, front, 0), mode=PAD_MODES[pad_mode])
    weight, bias = cast_like(weight, x), cast_like(bias, x)
    if x.numel() <= _MAX_CONV_INPUT_NUMEL:
        return F.conv3d(x, weight, bias, tuple(stride))
    kt = weight.shape[2]
    frames = [
        F.conv3d(x[:, :, t : t + kt], weight, bias, tuple(stride))
        for t in range(max(1, x.shape[2] - kt + 1))
    ]
    return torch.cat(frames, dim=2)


def causal_conv3d_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    g: torch.Tensor,
    b: torch.Tensor,
    eps: float = 1e-5,
    *,
    past: Optional[torch.Tensor] = None,
    history: int = 0,
    space_padding: Tuple[int, int] = (0, 0),
    stride: Sequence[int] = (1, 1, 1),
    pad_mode: str = "zeros",
    upsample2x: bool = False,
    relu: bool = False,
    time_bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A CDT ``Block`` and the ResnetBlock's adds after it: :func:`channel_norm` of
    :func:`causal_conv3d` (arguments as there). One op so that a backend can run the norm in the
    conv's epilogue, on the fp32 accumulator: the conv's output then never reaches memory."""
    y = causal_conv3d(
        x,
        weight,
        bias,
        past=past,
        history=history,
        space_padding=space_padding,
        stride=stride,
        pad_mode=pad_mode,
        upsample2x=upsample2x,
    )
    return channel_norm(y, g, b, eps, relu=relu, time_bias=time_bias, residual=residual)


def causal_conv3d_history(
    x: torch.Tensor, past: Optional[torch.Tensor], history: int
) -> torch.Tensor:
    """The ``past`` a causal conv needs for the next chunk: the last ``history`` frames of
    ``[past | x]`` (fewer while the stream is shorter). A copy, so the chunk can be freed."""
    if past is not None and x.shape[2] < history:
        x = torch.cat([past, x], dim=2)
    return x[:, :, -history:].clone()


def channel_norm(
    x: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    eps: float = 1e-5,
    *,
    relu: bool = False,
    time_bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """LayerNorm over channels of every voxel (biased variance) with affine ``g``, ``b`` (shape
    [1, C, 1, 1, 1] or [C]), then optionally ReLU, + ``time_bias`` ([B, C] or [B, C, 1, 1, 1]),
    + ``residual`` (same shape as x), in that order (a CDT Block, then the ResnetBlock's adds)."""
    c = x.shape[1]
    var = torch.var(x, dim=1, unbiased=False, keepdim=True)
    mean = torch.mean(x, dim=1, keepdim=True)
    y = (x - mean) / (var + eps).sqrt() * cast_like(g, x).reshape(1, c, 1, 1, 1) + cast_like(
        b, x
    ).reshape(1, c, 1, 1, 1)
    if relu:
        y = torch.relu(y)
    if time_bias is not None:
        y = y + time_bias.reshape(time_bias.shape[0], c, 1, 1, 1).to(y.dtype)
    if residual is not None:
        y = y + residual
    return y


def linear_attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: Optional[torch.Tensor],
    *,
    heads: int = 1,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """CDT's per-frame linear attention (no residual, no norm): 1x1 qkv projection, softmax of q
    over channels (times ``scale``, default dim_head**-0.5), softmax of k over positions,
    context = k v^T per frame, out = context^T q, 1x1 output projection + bias.

    ``w_qkv``: [3*heads*d, C(, 1, 1, 1)], ``w_out``: [C_out, heads*d(, 1, 1, 1)].
    """
    b, _, t, h, w = x.shape
    hidden = w_qkv.shape[0] // 3
    d = hidden // heads
    scale = d**-0.5 if scale is None else scale
    qkv = F.conv3d(x, cast_like(w_qkv, x).reshape(3 * hidden, -1, 1, 1, 1))

    def per_frame(u: torch.Tensor) -> torch.Tensor:  # [b, heads*d, t, h, w] -> [b*t, heads, d, h*w]
        return (
            u.reshape(b, heads, d, t, h * w).permute(0, 3, 1, 2, 4).reshape(b * t, heads, d, h * w)
        )

    q, k, v = map(per_frame, qkv.chunk(3, dim=1))
    q = q.softmax(dim=-2) * scale
    k = k.softmax(dim=-1)
    context = torch.einsum("bhdn,bhen->bhde", k, v)
    out = torch.einsum("bhde,bhdn->bhen", context, q)
    out = out.reshape(b, t, hidden, h, w).transpose(1, 2)
    return F.conv3d(
        out, cast_like(w_out, x).reshape(w_out.shape[0], hidden, 1, 1, 1), cast_like(b_out, x)
    )


def linear_attention_block(
    x: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: Optional[torch.Tensor],
    *,
    heads: int = 1,
    scale: Optional[float] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """CDT's attention block, upstream's ``Residual(PreNorm(dim, LinearAttention(dim)))``:
    ``x + linear_attention(channel_norm(x, g, b, eps), ...)``, composed of the ops above in the
    reference's order. One op so that a backend can fuse it (norm into the projection, residual
    into the output GEMM): two passes over the activation instead of four."""
    return (
        linear_attention(channel_norm(x, g, b, eps), w_qkv, w_out, b_out, heads=heads, scale=scale)
        + x
    )


def time_downsample(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    past: Optional[torch.Tensor] = None,
    pad_mode: str = "zeros",
) -> torch.Tensor:
    """Causal 2x temporal downsample: kernel 3, stride 2 along time, per pixel (``weight`` is
    upstream's Conv1d weight [C_out, C_in, 3]). A stream's first chunk is padded with 2 frames in
    front; a later chunk is preceded by ``past``, the last frame of the previous chunk."""
    if past is not None:
        x = torch.cat([past, x], dim=2)
    else:
        x = F.pad(x, (0, 0, 0, 0, 2, 0), mode=PAD_MODES[pad_mode])
    return F.conv3d(x, cast_like(weight, x)[..., None, None], cast_like(bias, x), stride=(2, 1, 1))


def time_upsample(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, drop_first: bool
) -> torch.Tensor:
    """2x temporal upsample: pointwise conv to 2C channels (``weight`` [2C, C, 1]), channel 2c+p
    becomes frame 2t+p of channel c; ``drop_first`` drops output frame 0 (a stream's first chunk)."""
    b, c, t, h, w = x.shape
    out = F.conv3d(x, cast_like(weight, x)[..., None, None], cast_like(bias, x))
    out = out.reshape(b, c, 2, t, h, w).transpose(2, 3).reshape(b, c, 2 * t, h, w)
    return out[:, :, 1:] if drop_first else out


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-exact 2x spatial upsample (computed in fp32 as upstream; copying is exact)."""
    return F.interpolate(x.float(), scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact").type_as(x)


def conv_transpose_up2x(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """CDT-small's upsample: ConvTranspose3d (1,5,5), stride (1,2,2), padding (0,2,2), output
    padding (0,1,1); ``weight`` is [C_in, C_out, 1, 5, 5]."""
    return F.conv_transpose3d(
        x, cast_like(weight, x), cast_like(bias, x), (1, 2, 2), (0, 2, 2), output_padding=(0, 1, 1)
    )


def ddim_coefficients(coefficients, device) -> torch.Tensor:
    """The ``(a, b, c, d)`` of :func:`ddim_update` as one contiguous 4-element fp32 tensor on
    ``device`` (what the compiled kernels read). Values already on ``device`` stay there: four
    scalar tensors are stacked by one device op and a 4-element tensor is used as it is, so no
    value crosses to the host (no sync; allowed inside a CUDA graph capture). Anything else
    (Python numbers, tensors on another device) is read on the host and copied over once."""
    device = torch.device(device)
    if isinstance(coefficients, torch.Tensor):
        if coefficients.shape != (4,):
            raise ValueError(
                f"coefficients must be (a, b, c, d): a 4-element tensor has shape (4,), got "
                f"{tuple(coefficients.shape)}"
            )
        return coefficients.to(device=device, dtype=torch.float32).contiguous()
    if len(coefficients) != 4:
        raise ValueError(f"coefficients must be (a, b, c, d), got {len(coefficients)} values")
    for v in coefficients:
        if isinstance(v, torch.Tensor) and v.numel() != 1:
            raise ValueError(f"each coefficient must be a scalar, got shape {tuple(v.shape)}")
    if all(isinstance(v, torch.Tensor) and v.device == device for v in coefficients):
        return torch.stack([v.reshape(()).to(torch.float32) for v in coefficients])
    return torch.tensor([float(v) for v in coefficients], dtype=torch.float32, device=device)


def ddim_update(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coefficients: Sequence[torch.Tensor],
    *,
    clamp: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0) for an x-prediction, in fp32:
    ``x_next = c*x0 + d*(a*x_t - x0)/b`` with ``(a, b, c, d)`` from
    :meth:`cdt_fast.reference.diffusion.DDIMSchedule.coefficients` (four scalars or one
    4-element tensor, see :func:`ddim_coefficients`). ``clamp`` clips x0 to [-1, 1] first
    (upstream's ``clip_denoised``)."""
    a, b, c, d = ddim_coefficients(coefficients, x_t.device)
    x0 = x0.float()
    if clamp:
        x0 = x0.clamp(-1.0, 1.0)
    return c * x0 + d * ((a * x_t.float() - x0) / b)


def to_uint8_frames(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> [B, T, H, W, 3] uint8: clamp, ``round((x + 1) / 2 * 255)``
    (upstream's evaluation scripts' conversion)."""
    y = ((x.float().clamp(-1.0, 1.0) + 1.0) / 2 * 255).round()
    return y.to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


def causal_attention_mask(tq: int, tk: int, device) -> torch.Tensor:
    """[Tq, Tk] bool, True where query ``i`` may see key ``j``: ``j <= i + Tk - Tq`` (the last
    query aligned with the last key, so a chunk's queries see the cached keys before it)."""
    i = torch.arange(tq, device=device)[:, None]
    return torch.arange(tk, device=device)[None, :] <= i + (tk - tq)


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Softmax attention over ``q`` [S, heads, Tq, d], ``k``/``v`` [S, heads, Tk, d] (any
    strides): ``softmax(q k^T * scale [+ causal mask]) v``, ``scale`` defaulting to
    ``d ** -0.5``; ``causal`` masks with :func:`causal_attention_mask` (needs Tk >= Tq).

    The latent video generator calls it along time (``S = B*h*w`` short sequences of frames) and
    across a frame (``S = B*T``). This is the plain computation, the oracle every backend is
    tested against: scores and softmax in fp32 (fp64 for fp64 inputs), the result in q's dtype.
    """
    scale = check_attention(q, k, v, causal=causal, scale=scale)
    tq, tk = q.shape[2], k.shape[2]
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    if causal:
        scores = scores.masked_fill(~causal_attention_mask(tq, tk, q.device), float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v.to(compute)).to(q.dtype)
