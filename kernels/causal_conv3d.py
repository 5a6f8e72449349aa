"""Causal 3D convolution as a Triton implicit GEMM, reading cached frames and padding in place.

The launcher :func:`causal_conv3d` has the signature and semantics of
:func:`cdt_fast.functional.causal_conv3d` (plus keyword-only ``out=`` and ``epilogue=``): the conv
reads the virtual sequence ``[temporal pad | past | x]`` and the spatial padding through index
clamps (``pad_mode="replicate"``) or masks (``"zeros"``), so no concatenated or padded tensor is
ever built. ``upsample2x`` reads the inputs nearest-2x-upsampled by index arithmetic
(``h_src = h_up // 2``), which is exactly ``nearest-exact`` at scale 2.

GEMM view: M runs over output voxels ``(b, t, h, w)``, N over output channels, K over
``kt * kh * kw * Cin`` (taps outer, channels inner, so a K tile is a run of channels of one input
voxel: contiguous in channels-last ``NDHWC`` memory). Any strides are accepted; channels-last
activations (``torch.channels_last_3d``) give coalesced loads. The weight is read as it comes when
either Cin or Cout is its innermost dim: a ``channels_last_3d`` weight (what the engine holds, and
what cuDNN wants) or one from :func:`pack_weight` compile to the same 16-byte ``cp.async`` loads
and ``wgmma`` on sm_90 (``tools/sass_audit.py``); any other layout is repacked per call.
Accumulation is fp32 for fp16/bf16/fp32 inputs; the output has ``x``'s dtype.

Epilogue hook (the contract other kernels build on)
---------------------------------------------------
``epilogue=Epilogue(...)`` appends, on the fp32 accumulator and in this fixed order (the order of
:func:`cdt_fast.functional.channel_norm`, i.e. a CDT ``Block`` followed by ``ResnetBlock``'s adds):

1. ``+ bias[n]`` (the conv's own bias, always fused when given);
2. ``norm_weight``/``norm_bias`` given: LayerNorm over the output channels of each voxel (biased
   variance, ``eps``) with that affine. This needs every channel of a voxel in one program, so the
   launcher then uses one N tile of ``next_pow2(Cout)`` columns (fine for CDT's <= 512 channels);
3. ``relu=True``: ReLU;
4. ``channel_bias`` ([B, Cout] or [B, Cout, 1, 1, 1]): ``+ channel_bias[b, n]`` (the time bias);
5. ``residual`` (the output's logical shape, any strides, must not alias ``out``): ``+ residual``.

In the kernel each stage is a ``tl.constexpr`` flag (``NORM``, ``RELU``, ``HAS_CBIAS``,
``HAS_RES``) read by the kernel's epilogue, so a disabled stage costs nothing and a new stage is
one more flag and pointer there, not a copy of the main loop.

The family's modules, one job each: this launcher; its argument checks
(``causal_conv3d_args.py``); the kernel body (``causal_conv3d_kernel.py``); the tiles
(``causal_conv3d_tiles.py``: one config per shape class from :func:`conv_tile`, see
``kernels/_tiles.py``; autotuning only on request, keyed on the conv geometry, never the row
count). Under the Triton interpreter (``TRITON_INTERPRET=1``) the launch takes the same path and
tile (the ``sm_80`` family's, or another one's inside ``tile_options(arch=...)``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton

from . import _tiles
from ._common import exact_fp32, loop_arg, param_vector, same_data
from ._tiles import autotune_enabled, launch_dtype, tile_family
from .causal_conv3d_args import (
    ConvGeometry,
    Epilogue,
    EpilogueTensors,
    check_conv,
    check_epilogue,
    check_tensor,
    output_shape,
)
from .causal_conv3d_kernel import _causal_conv3d_kernel, conv_tuned, conv_tuned_full_n
from .causal_conv3d_tiles import FUSED_NORM_MAX_CHANNELS, conv_shared_memory, conv_tile
from .channel_norm import channel_norm

__all__ = [
    "Epilogue",
    "causal_conv3d",
    "causal_conv3d_frames",
    "causal_conv3d_norm",
    "pack_weight",
    "output_shape",
    "FUSED_NORM_MAX_CHANNELS",
    "MAX_ROWS",
    "conv_tile",
    "conv_shared_memory",
]


# Output voxels a call may have: the kernel indexes rows in 32 bits, and its last row tile
# reaches up to BLOCK_M - 1 rows past the last voxel (256-row tiles at most, autotuning's
# largest), which must stay below 2**31 (else they wrap negative and pass the row mask).
MAX_ROWS = 2**31 - 256


def pack_weight(weight: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``weight`` ([Cout, Cin, kt, kh, kw]) cast to ``dtype`` and stored channels-innermost
    (memory order kt, kh, kw, Cin, Cout) so the kernel's weight tiles load coalesced. The result
    has the same logical shape: any op that takes the weight accepts it."""
    w = weight.to(dtype or weight.dtype)
    return w.permute(2, 3, 4, 1, 0).contiguous().permute(4, 3, 0, 1, 2)


def _loads_coalesced(w: torch.Tensor) -> bool:
    """Whether the kernel reads ``w`` with wide loads as it is: Cout innermost (:func:`pack_weight`)
    or Cin innermost (``channels_last_3d``)."""
    return w.stride(0) == 1 or w.stride(1) == 1


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
    out: Optional[torch.Tensor] = None,
    epilogue: Optional[Epilogue] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.causal_conv3d` on the Triton kernel (see the module docstring).

    ``out``: a preallocated output (logical shape of the result, ``x``'s dtype, any strides, e.g. a
    view into the next conv's cache buffer). ``epilogue``: fused ops after the conv.
    """
    if not isinstance(history, int) or isinstance(history, bool) or history < 0:
        raise ValueError(f"history must be an int >= 0, got {history!r}")
    if past is not None and history:
        check_tensor(past, "past", x, 5)
        used = min(past.shape[2], history)  # the reference crops a longer past to `history`
        p_off = past.shape[2] - used
    else:
        past, used, p_off = None, 0, 0
    return causal_conv3d_frames(
        x,
        weight,
        bias,
        past=past,
        past_offset=p_off,
        past_frames=used,
        front=history - used,
        space_padding=space_padding,
        stride=stride,
        pad_mode=pad_mode,
        upsample2x=upsample2x,
        out=out,
        epilogue=epilogue,
    )


def causal_conv3d_frames(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    front: int,
    past: Optional[torch.Tensor] = None,
    past_offset: int = 0,
    past_frames: int = 0,
    space_padding: Tuple[int, int] = (0, 0),
    stride: Sequence[int] = (1, 1, 1),
    pad_mode: str = "zeros",
    upsample2x: bool = False,
    out: Optional[torch.Tensor] = None,
    epilogue: Optional[Epilogue] = None,
) -> torch.Tensor:
    """The conv over ``[front padding frames | past[:, :, past_offset:past_offset+past_frames] | x]``.

    The form a cache buffer uses: its valid history and the chunk are one tensor ``x`` and only
    the missing history is padding (``front``).
    """
    conv = check_conv(
        x,
        weight,
        bias,
        front=front,
        past=past,
        past_offset=past_offset,
        past_frames=past_frames,
        space_padding=space_padding,
        stride=stride,
        pad_mode=pad_mode,
        upsample2x=upsample2x,
    )
    out = _output(out, conv.out_shape, x)
    if not _loads_coalesced(weight) or weight.dtype != x.dtype:
        weight = pack_weight(weight, x.dtype)
    # The kernel reads the bias as a dense vector: a strided view is copied.
    bias = param_vector(bias, conv.cout, "bias").to(x.dtype) if bias is not None else None
    ep = check_epilogue(epilogue or Epilogue(), x, out, conv.out_shape)
    if conv.rows == 0 or conv.cout == 0:
        return out
    if conv.rows > MAX_ROWS:
        raise ValueError(
            f"causal_conv3d: {conv.rows} output voxels exceed the kernel's 32-bit row index "
            f"(at most {MAX_ROWS}); split the batch or the chunk"
        )
    flags = dict(
        ZERO_PAD=pad_mode == "zeros",
        UPSAMPLE=bool(upsample2x),
        HAS_BIAS=bias is not None,
        DOT_PRECISION="ieee" if exact_fp32(x) else "tf32",
    )
    _launch(_kernel_args(x, weight, bias, out, conv, ep), x, conv, ep, flags)
    return out


def _output(out: Optional[torch.Tensor], shape, x: torch.Tensor) -> torch.Tensor:
    """The caller's ``out`` (checked), else a new one: contiguous like a contiguous ``x``,
    channels-last otherwise."""
    if out is None:
        fmt = (
            torch.contiguous_format
            if x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last_3d)
            else torch.channels_last_3d
        )
        return torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=fmt)
    check_tensor(out, "out", x, 5)
    if tuple(out.shape) != shape or out.dtype != x.dtype:
        raise ValueError(f"out must be {shape} {x.dtype}, got {tuple(out.shape)} {out.dtype}")
    return out


def _kernel_args(x, weight, bias, out, conv: ConvGeometry, ep: EpilogueTensors) -> tuple:
    """The kernel's positional arguments; an absent tensor is passed as ``x`` (never read: its
    flag is off, or no past frame is in range)."""
    p = conv.past if conv.past is not None else x
    r = ep.residual if ep.residual is not None else out
    tensors = (bias, ep.norm_weight, ep.norm_bias, ep.channel_bias)
    bias, g, beta, cbias = (t if t is not None else x for t in tensors)
    _, _, t_out, h_out, w_out = conv.out_shape
    sizes = (conv.rows, conv.cout, t_out, h_out, w_out, conv.past_frames, conv.past_offset)
    sizes += (conv.front, x.shape[3], x.shape[4], *conv.padding)
    strides = (*x.stride(), *p.stride(), *weight.stride(), *out.stride(), *r.stride())
    return (x, p, weight, bias, out, g, beta, cbias, r, *sizes, *strides)


def _launch(args: tuple, x, conv: ConvGeometry, ep: EpilogueTensors, flags: dict) -> None:
    """Launches the kernel with the tile of the call's shape class (autotuned on request)."""
    norm = ep.norm_weight is not None
    kt, kh, kw = conv.kernel
    st, sh, sw = conv.stride
    geometry = dict(CIN=conv.cin, KT=kt, KH=kh, KW=kw, ST=st, SH=sh, SW=sw)
    # Always the past path (a missing past is x with P_FRAMES = 0, never read): the first chunk
    # of a clip then shares the later chunks' compilation.
    meta = dict(geometry, **flags, HAS_PAST=True, NORM=norm, RELU=bool(ep.relu))
    meta.update(HAS_CBIAS=ep.channel_bias is not None, HAS_RES=ep.residual is not None)
    full_n = max(16, triton.next_power_of_2(conv.cout))
    taps = kt * kh * kw

    def k_loop(block_k: int) -> dict:
        cin_pad = triton.cdiv(conv.cin, block_k) * block_k
        return dict(CIN_PAD=loop_arg(cin_pad), K_TOTAL=loop_arg(taps * cin_pad))

    def grid(cfg):
        n_tiles = triton.cdiv(conv.cout, cfg.get("BLOCK_N", full_n))
        return (triton.cdiv(conv.rows, cfg["BLOCK_M"]) * n_tiles,)

    arch, dtype = tile_family(x), launch_dtype(x)
    precision = flags["DOT_PRECISION"]
    shape_class = dict(geometry, COUT=conv.cout, UPSAMPLE=flags["UPSAMPLE"], NORM=norm)
    shape_class.update(DTYPE=dtype, PRECISION=precision)
    tile = conv_tile(
        arch,
        cin=conv.cin,
        cout=conv.cout,
        full_row=norm,
        ieee=precision == "ieee",
        size=dtype.itemsize,
        limit=_tiles.shared_memory_limit(x, arch),
    )
    # Tuning: channels rounded to 16, and only the candidates whose BLOCK_K divides that
    # (see prune_configs); the fixed tile rounds to its own BLOCK_K.
    meta.update(k_loop(16))
    if norm:
        meta["BLOCK_N"] = full_n
    _tiles.launch(
        _causal_conv3d_kernel,
        conv_tuned_full_n if norm else conv_tuned,
        grid,
        (*args, ep.channel_bias_strides[0], ep.channel_bias_strides[1], ep.eps),
        meta,
        name="causal_conv3d",
        arch=arch,
        shape_class=shape_class,
        tile=tile,
        autotune=autotune_enabled(),
        derived=lambda kw: k_loop(kw["BLOCK_K"]),
    )


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
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.causal_conv3d_norm` (a CDT Block plus the ResnetBlock's adds).

    Up to :data:`FUSED_NORM_MAX_CHANNELS` output channels the norm, ReLU, time bias and residual
    run in the conv's epilogue on the fp32 accumulator (so the result is rounded once, not after
    the conv and again after the norm); wider layers run the conv and then the Triton norm block
    in place on its output. ``out``: optional preallocated result (must not alias ``residual``).
    """
    conv = dict(
        past=past,
        history=history,
        space_padding=space_padding,
        stride=stride,
        pad_mode=pad_mode,
        upsample2x=upsample2x,
        out=out,
    )
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        raise ValueError("weight must be a 5-D [Cout, Cin, kt, kh, kw] tensor")
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.dtype != x.dtype:
            raise TypeError(
                f"residual must be a tensor of x's dtype {x.dtype}, got "
                f"{getattr(residual, 'dtype', type(residual).__name__)}"
            )
        if out is not None and same_data(residual, out):
            raise ValueError(
                "residual must not alias out (the conv writes out before the norm "
                "reads the residual)"
            )
    if weight.shape[0] <= FUSED_NORM_MAX_CHANNELS:
        return causal_conv3d(
            x,
            weight,
            bias,
            **conv,
            epilogue=Epilogue(
                norm_weight=g,
                norm_bias=b,
                eps=eps,
                relu=relu,
                channel_bias=time_bias,
                residual=residual,
            ),
        )
    y = causal_conv3d(x, weight, bias, **conv)
    return channel_norm(y, g, b, eps, relu=relu, time_bias=time_bias, residual=residual, out=y)
