"""The ``cpp`` and ``cuda`` backends: the compiled stages (``cdt_fast._C``, built from ``csrc/``)
as torch functions, beside :mod:`cdt_fast.functional` (torch) and :mod:`cdt_fast.kernels`
(Triton). :mod:`cdt_fast._cpp_lib` loads the extension and reports whether it can run.

The functions have the signatures and semantics of their namesakes in :mod:`cdt_fast.functional`
(the contract), computed by the extension on CPU or, where it was built with CUDA, on CUDA
tensors. They return channels-last tensors (``torch.channels_last_3d``), which the engine uses
throughout; the values equal the reference's up to float rounding.

The split with torch: the extension does the memory-bound passes (norms, softmaxes, the per-frame
attention products, frame gathers and shuffles, the sampler's elementwise steps); every product
with a weight (1x1 projections, the temporal convs' taps) is one ``torch.matmul``/``addmm`` on
channels-last rows here, i.e. MKL/oneDNN on CPU and cuBLAS on CUDA.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ._cpp_lib import library
from .functional import PAD_MODES, cast_like, ddim_coefficients

__all__ = [
    "channel_norm",
    "linear_attention",
    "linear_attention_block",
    "time_downsample",
    "time_upsample",
    "causal_conv3d_history",
    "ddim_update",
    "to_uint8_frames",
]

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.uint8: 3}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PAD_CODES = {"zeros": 0, "replicate": 1}
_CL = torch.channels_last_3d


# ---- the boundary: tensors as (ptr, dtype, device, shape, strides), streams, threads -----------


class _Flat:
    """Marks a dense tensor to cross the boundary as its 1-D memory (any logical order)."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def _desc(t):
    if t is None:
        return None
    if isinstance(t, _Flat):
        t = t.tensor
        shape, strides = (t.numel(),), (1,)
    else:
        shape, strides = tuple(t.shape), tuple(t.stride())
    return (
        t.data_ptr(),
        _DTYPE_CODES[t.dtype],
        t.device.index if t.is_cuda else -1,
        shape,
        strides,
    )


def _invoke(op: str, on: torch.Tensor, *args):
    """Calls ``_C.<op>`` with tensors as descriptors, on ``on``'s stream (CUDA) or with torch's
    thread count (CPU). ``args`` holds every tensor until the call returns: a descriptor carries
    only the address, so a temporary must not be freed before the kernel has run."""
    if on.is_cuda:
        exec_args = {"stream": torch.cuda.current_stream(on.device).cuda_stream, "threads": 0}
    else:
        exec_args = {"stream": 0, "threads": torch.get_num_threads()}
    if torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    ):
        raise RuntimeError(
            f"cdt_fast C++/CUDA op {op} is inference-only (no autograd): call it "
            "under torch.no_grad() or torch.inference_mode()"
        )
    descs = [_desc(a) if a is None or isinstance(a, (torch.Tensor, _Flat)) else a for a in args]
    return getattr(library(), op)(*descs, **exec_args)


def _check_device(t: torch.Tensor, name: str) -> None:
    if t.device.type == "cpu":
        return
    if t.device.type == "cuda" and library().WITH_CUDA:
        return
    raise ValueError(
        f"{name} must be on the CPU{' or CUDA' if library().WITH_CUDA else ''} "
        f"(this cdt_fast._C build), got device {t.device}"
    )


def _check_5d(x, name: str, float_only: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, C, T, H, W], got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{name} must have rank 5 [B, C, T, H, W], got shape {tuple(x.shape)}")
    if float_only and x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    _check_device(x, name)
    return x


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> its channels-last memory as a [B, T, H, W, C] view (copies if needed)."""
    return x.contiguous(memory_format=_CL).permute(0, 2, 3, 4, 1)


def _logical(rows: torch.Tensor) -> torch.Tensor:
    """[B, T, H, W, C] rows -> the logical [B, C, T, H, W] view (channels-last memory)."""
    return rows.permute(0, 4, 1, 2, 3)


def _empty_rows(b: int, t: int, h: int, w: int, c: int, like: torch.Tensor, dtype=None):
    return torch.empty((b, t, h, w, c), dtype=dtype or like.dtype, device=like.device)


def _same_device(x: torch.Tensor, other: Optional[torch.Tensor], name: str) -> None:
    if other is not None and other.device != x.device:
        raise ValueError(f"{name} must be on {x.device} like x, got {other.device}")


def _pad_code(pad_mode: str) -> int:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    return _PAD_CODES[pad_mode]


def _fp32_param(p: Optional[torch.Tensor], x: torch.Tensor, numel: int, name: str):
    """A parameter cast to x's dtype (the contract), then widened to fp32 for the kernels."""
    if p is None:
        return None
    if p.numel() != numel:
        raise ValueError(f"{name} must have {numel} elements, got shape {tuple(p.shape)}")
    _same_device(x, p, name)
    return cast_like(p, x).reshape(numel).float().contiguous()


# ---- ops ---------------------------------------------------------------------------------------


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
    """:func:`cdt_fast.functional.channel_norm` in one pass over channels-last rows."""
    _check_5d(x, "x")
    bsz, c, t, h, w = x.shape
    tb = None
    if time_bias is not None:
        if time_bias.numel() not in (c, bsz * c) or time_bias.shape[0] not in (1, bsz):
            raise ValueError(
                f"time_bias must be [B, C] or [B, C, 1, 1, 1] with B in (1, {bsz}) "
                f"and C={c}, got shape {tuple(time_bias.shape)}"
            )
        _same_device(x, time_bias, "time_bias")
        tb = time_bias.reshape(-1, c).to(x.dtype).float().expand(bsz, c).contiguous()
    res = None
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(
                f"residual must match x ({tuple(x.shape)}, {x.dtype}), got "
                f"{tuple(residual.shape)}, {residual.dtype}"
            )
        _same_device(x, residual, "residual")
        res = _rows(residual)
    rows = _rows(x)
    y = torch.empty_like(rows)
    _invoke(
        "channel_norm",
        x,
        rows,
        y,
        _fp32_param(g, x, c, "g"),
        _fp32_param(b, x, c, "b"),
        float(eps),
        bool(relu),
        tb,
        res,
    )
    return _logical(y)


def _attention_core(
    rows: torch.Tensor, w_qkv: torch.Tensor, heads: int, scale: Optional[float]
) -> torch.Tensor:
    """qkv projection (torch GEMM) + the extension's softmaxes and per-frame products.
    rows: [B, T, H, W, C] -> [B*T*H*W, heads*d]."""
    bsz, t, h, w, c = rows.shape
    if heads < 1 or w_qkv.shape[0] % (3 * heads):
        raise ValueError(
            f"w_qkv must have 3*heads*d rows for heads={heads}, got shape {tuple(w_qkv.shape)}"
        )
    hidden = w_qkv.shape[0] // 3
    d = hidden // heads
    scale = d**-0.5 if scale is None else float(scale)
    _same_device(rows, w_qkv, "w_qkv")
    qkv = rows.reshape(-1, c) @ cast_like(w_qkv, rows).reshape(3 * hidden, c).t()
    out = torch.empty((bsz * t, h * w, hidden), dtype=rows.dtype, device=rows.device)
    lib = library()
    ws = None
    if rows.is_cuda:
        ws = torch.empty(
            lib.linear_attention_workspace_floats(bsz * t, h * w, heads, d),
            dtype=torch.float32,
            device=rows.device,
        )
    _invoke("linear_attention", rows, qkv.view(bsz * t, h * w, 3 * hidden), out, heads, scale, ws)
    return out.view(-1, hidden)


def _project_out(
    core: torch.Tensor,
    w_out: torch.Tensor,
    b_out: Optional[torch.Tensor],
    like: torch.Tensor,
    shape,
    residual: Optional[torch.Tensor] = None,
):
    hidden = core.shape[1]
    w = cast_like(w_out, like).reshape(w_out.shape[0], hidden).t()
    _same_device(like, w_out, "w_out")
    if residual is not None:  # residual + bias in the GEMM's accumulator input
        acc = residual.reshape(-1, residual.shape[-1])
        acc = acc + cast_like(b_out, like) if b_out is not None else acc
        out = torch.addmm(acc, core, w)
    elif b_out is not None:
        out = torch.addmm(cast_like(b_out, like), core, w)
    else:
        out = core @ w
    return _logical(out.view(*shape[:4], w_out.shape[0]))


def linear_attention(
    x: torch.Tensor,
    w_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: Optional[torch.Tensor],
    *,
    heads: int = 1,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.linear_attention`: the 1x1 projections are torch GEMMs on
    channels-last rows, everything between them is the extension's."""
    _check_5d(x, "x")
    rows = _rows(x)
    core = _attention_core(rows, w_qkv, heads, scale)
    return _project_out(core, w_out, b_out, x, rows.shape)


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
    """CDT's attention block ``x + LinearAttention(ChannelLayerNorm(x))`` (upstream's
    ``Residual(PreNorm(dim, LinearAttention(dim)))``): the norm is the extension's, the residual
    and the output bias ride in the output GEMM's accumulator."""
    _check_5d(x, "x")
    normed = channel_norm(x, g, b, eps)
    rows = normed.permute(0, 2, 3, 4, 1)
    core = _attention_core(rows, w_qkv, heads, scale)
    return _project_out(core, w_out, b_out, x, rows.shape, residual=_rows(x))


def time_downsample(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    past: Optional[torch.Tensor] = None,
    pad_mode: str = "zeros",
) -> torch.Tensor:
    """:func:`cdt_fast.functional.time_downsample`: the extension gathers the three taps of every
    output frame, one GEMM applies the [C_out, 3*C_in] weight."""
    _check_5d(x, "x")
    bsz, c, t, h, w = x.shape
    mode = _pad_code(pad_mode)
    if weight.dim() != 3 or weight.shape[1:] != (c, 3):
        raise ValueError(f"weight must be [C_out, {c}, 3], got shape {tuple(weight.shape)}")
    past_rows = None
    if past is not None:
        _check_5d(past, "past")
        if past.shape != (bsz, c, 1, h, w) or past.dtype != x.dtype:
            raise ValueError(
                f"past must be one frame {(bsz, c, 1, h, w)} of {x.dtype}, got "
                f"{tuple(past.shape)} of {past.dtype}"
            )
        _same_device(x, past, "past")
        past_rows = _rows(past).reshape(bsz, 1, h * w, c)
    lib = library()
    t_out = lib.time_downsample_frames(t, past is not None)
    if t_out < 1:
        raise ValueError(f"x has too few frames ({t}) for the kernel-3 stride-2 downsample")
    cols = torch.empty((bsz, t_out, h * w, 3, c), dtype=x.dtype, device=x.device)
    _invoke("time_downsample_gather", x, _rows(x).reshape(bsz, t, h * w, c), past_rows, cols, mode)
    _same_device(x, weight, "weight")
    w2 = cast_like(weight, x).permute(0, 2, 1).reshape(weight.shape[0], 3 * c).t()
    flat = cols.view(-1, 3 * c)
    out = torch.addmm(cast_like(bias, x), flat, w2) if bias is not None else flat @ w2
    return _logical(out.view(bsz, t_out, h, w, weight.shape[0]))


def time_upsample(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, drop_first: bool
) -> torch.Tensor:
    """:func:`cdt_fast.functional.time_upsample`: one GEMM to 2C channels, then the extension's
    time pixel-shuffle (+ bias, dropping frame 0 when ``drop_first``)."""
    _check_5d(x, "x")
    bsz, c, t, h, w = x.shape
    if weight.dim() != 3 or weight.shape[1:] != (c, 1) or weight.shape[0] % 2:
        raise ValueError(f"weight must be [2*C_out, {c}, 1], got shape {tuple(weight.shape)}")
    _same_device(x, weight, "weight")
    c2 = weight.shape[0]
    y = _rows(x).reshape(-1, c) @ cast_like(weight, x).reshape(c2, c).t()
    out = _empty_rows(bsz, 2 * t - int(bool(drop_first)), h, w, c2 // 2, x)
    _invoke(
        "time_upsample_shuffle",
        x,
        y.view(bsz, t, h * w, c2),
        _fp32_param(bias, x, c2, "bias"),
        out.view(bsz, out.shape[1], h * w, c2 // 2),
        bool(drop_first),
    )
    return _logical(out)


def _check_past(x: torch.Tensor, past: Optional[torch.Tensor]) -> None:
    if past is None:
        return
    _check_5d(past, "past")
    b, c, _, h, w = x.shape
    if (past.shape[0], past.shape[1], past.shape[3], past.shape[4]) != (
        b,
        c,
        h,
        w,
    ) or past.dtype != x.dtype:
        raise ValueError(
            f"past must be [{b}, {c}, frames, {h}, {w}] of {x.dtype} like x, got "
            f"{tuple(past.shape)} of {past.dtype}"
        )
    _same_device(x, past, "past")


def _frames(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> channels-last memory as [B, T, H*W*C]."""
    b, c, t, h, w = x.shape
    return _rows(x).reshape(b, t, h * w * c)


def _out_rows(
    out: Optional[torch.Tensor], shape, like: torch.Tensor, *inputs: Optional[torch.Tensor]
) -> torch.Tensor:
    """The [B, T, H, W, C] rows of a caller's preallocated ``out`` (logical [B, C, T, H, W],
    channels-last, like's dtype and device, overlapping no input), or fresh ones."""
    b, c, t, h, w = shape
    if out is None:
        return _empty_rows(b, t, h, w, c, like)
    if (
        not isinstance(out, torch.Tensor)
        or tuple(out.shape) != tuple(shape)
        or out.dtype != like.dtype
        or out.device != like.device
        or not out.is_contiguous(memory_format=_CL)
    ):
        raise ValueError(
            f"out must be a channels-last {like.dtype} tensor of shape {tuple(shape)} "
            f"on {like.device}, got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
        )
    lo, hi = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    for t_in in inputs:
        if t_in is not None and t_in.numel():
            a = t_in.data_ptr()
            if a < hi and lo < a + t_in.numel() * t_in.element_size():
                raise ValueError("out must not overlap the inputs (the copy is not in place)")
    return out.permute(0, 2, 3, 4, 1)


def causal_conv3d_history(
    x: torch.Tensor,
    past: Optional[torch.Tensor],
    history: int,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.causal_conv3d_history`: the last ``history`` frames of
    ``[past | x]``, copied by the extension (into ``out`` when given: a preallocated
    channels-last cache buffer of the result's shape)."""
    _check_5d(x, "x")
    _check_past(x, past)
    history = int(history)
    if history < 0:
        raise ValueError(f"history must be >= 0, got {history}")
    b, c, t, h, w = x.shape
    if history == 0:  # x[:, :, -0:] is all of x in the contract
        history = t
    used = past if past is not None and t < history else None
    n = min(history, t + (used.shape[2] if used is not None else 0))
    rows = _out_rows(out, (b, c, n, h, w), x, x, used)
    _invoke(
        "causal_conv3d_history",
        x,
        _frames(x),
        _frames(used) if used is not None else None,
        rows.reshape(b, n, -1),
        history,
    )
    return _logical(rows)


def _flat_pair(x_t: torch.Tensor, x0: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two tensors in one dense memory order (so elementwise work is one flat loop)."""
    if x_t.shape != x0.shape:
        raise ValueError(f"x0 must have the shape of x_t {tuple(x_t.shape)}, got {tuple(x0.shape)}")
    _same_device(x_t, x0, "x0")
    if x_t.dtype != x0.dtype or x_t.dtype not in _FLOAT_DTYPES:
        x_t, x0 = x_t.float(), x0.float()  # exact: the contract computes in fp32
    if x_t.is_contiguous() and x0.is_contiguous():
        return x_t, x0
    if (
        x_t.dim() == 5
        and x_t.is_contiguous(memory_format=_CL)
        and x0.is_contiguous(memory_format=_CL)
    ):
        return x_t, x0
    return x_t.contiguous(), x0.contiguous()


def ddim_update(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coefficients: Sequence[torch.Tensor],
    *,
    clamp: bool = False,
) -> torch.Tensor:
    """:func:`cdt_fast.functional.ddim_update` (fp32 result, in x_t's memory format). The
    kernel reads the coefficients from x_t's device: device tensors (what the engine keeps)
    never go through the host, so on CUDA the call is one launch with no sync."""
    for name, v in (("x_t", x_t), ("x0", x0)):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
        _check_device(v, name)
    coef = ddim_coefficients(coefficients, x_t.device)
    x_t, x0 = _flat_pair(x_t, x0)
    out = torch.empty_like(x_t, dtype=torch.float32)
    _invoke("ddim_update", x_t, _Flat(x_t), _Flat(x0), coef, bool(clamp), _Flat(out))
    return out


def to_uint8_frames(x: torch.Tensor) -> torch.Tensor:
    """:func:`cdt_fast.functional.to_uint8_frames`: [B, C, T, H, W] in [-1, 1] -> [B, T, H, W, C]
    uint8 (the channels-last memory of x, converted elementwise)."""
    _check_5d(x, "x", float_only=False)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    rows = _rows(x if x.dtype in _FLOAT_DTYPES else x.float())
    frames = torch.empty(rows.shape, dtype=torch.uint8, device=x.device)
    _invoke("to_uint8_frames", x, _Flat(rows.contiguous()), _Flat(frames))
    return frames
