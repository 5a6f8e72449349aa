"""The sampler's elementwise steps in Triton: the DDIM x-prediction update and the uint8 frames.

Both have the signatures and semantics of :func:`cdt_fast.functional.ddim_update` and
:func:`cdt_fast.functional.to_uint8_frames` (plus ``out=``); the engine's op table finds them
here. Any input strides are accepted; offsets are 64-bit (element indices of a 720p clip pass
2**31).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from cdt_fast.functional import ddim_coefficients

from ._common import check_grid, check_launchable, check_out, empty_like_layout, on_device

__all__ = ["ddim_update", "to_uint8_frames"]

_BLOCK = 1024  # elements per program


@triton.jit
def _ddim_step(x_t, x0, coef_ptr, CLAMP: tl.constexpr):
    """The deterministic DDIM x-prediction update in fp32, in the reference's order of operations;
    (a, b, c, d) are read from device memory (no host sync, CUDA-graph friendly)."""
    a = tl.load(coef_ptr)
    b = tl.load(coef_ptr + 1)
    c = tl.load(coef_ptr + 2)
    d = tl.load(coef_ptr + 3)
    if CLAMP:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
    return c * x0 + d * ((a * x_t - x0) / b)


@triton.jit
def _uint8_levels(x):
    """``round((clamp(x, -1, 1) + 1) / 2 * 255)`` as uint8, rounding half to even as torch."""
    y = (tl.minimum(tl.maximum(x, -1.0), 1.0) + 1.0) / 2 * 255
    f = tl.floor(y)
    frac = y - f
    y = tl.where(frac > 0.5, f + 1.0, tl.where(frac < 0.5, f, f + (f - 2.0 * tl.floor(f * 0.5))))
    return y.to(tl.uint8)


@triton.jit
def _coords5(n, C, T, H, W):
    """(b, c, t, h, w) of the logical row-major index ``n`` (int64) of a [B, C, T, H, W] tensor.
    Successive divisions, not divisions by products of sizes: ``C*T*H*W`` can pass 2**31, and a
    product of 32-bit size arguments would wrap."""
    w = n % W
    n = n // W
    h = n % H
    n = n // H
    t = n % T
    n = n // T
    return n // C, n % C, t, h, w


@triton.jit
def _ddim_update_kernel(
    xt_ptr,
    x0_ptr,
    out_ptr,
    coef_ptr,
    NUMEL,
    C,
    T,
    H,
    W,
    s_xb,
    s_xc,
    s_xt,
    s_xh,
    s_xw,
    s_0b,
    s_0c,
    s_0t,
    s_0h,
    s_0w,
    s_ob,
    s_oc,
    s_ot,
    s_oh,
    s_ow,
    CLAMP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < NUMEL
    b, c, t, h, w = _coords5(n, C, T, H, W)
    x_t = tl.load(xt_ptr + b * s_xb + c * s_xc + t * s_xt + h * s_xh + w * s_xw, mask=mask)
    x0 = tl.load(x0_ptr + b * s_0b + c * s_0c + t * s_0t + h * s_0h + w * s_0w, mask=mask)
    x_next = _ddim_step(x_t.to(tl.float32), x0.to(tl.float32), coef_ptr, CLAMP)
    tl.store(out_ptr + b * s_ob + c * s_oc + t * s_ot + h * s_oh + w * s_ow, x_next, mask=mask)


@triton.jit
def _to_uint8_frames_kernel(
    x_ptr, out_ptr, NUMEL, C, T, H, W, s_b, s_c, s_t, s_h, s_w, BLOCK: tl.constexpr
):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # index into [B, T, H, W, C]
    mask = o < NUMEL
    # Successive divisions: a product of the 32-bit sizes (C*W*H*T) can wrap.
    c = o % C
    r = o // C
    w = r % W
    r = r // W
    h = r % H
    r = r // H
    t = r % T
    b = r // T
    x = tl.load(x_ptr + b * s_b + c * s_c + t * s_t + h * s_h + w * s_w, mask=mask)
    tl.store(out_ptr + o, _uint8_levels(x.to(tl.float32)), mask=mask)


def ddim_update(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    coefficients: Sequence,
    *,
    clamp: bool = False,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Triton :func:`cdt_fast.functional.ddim_update` (fp32 result in x_t's memory format);
    ``coefficients`` may be device tensors (no host sync) or floats."""
    for name, t in (("x_t", x_t), ("x0", x0)):
        if not isinstance(t, torch.Tensor) or t.dim() != 5 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point [B, C, T, H, W] tensor")
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 must have x_t's shape {list(x_t.shape)}, got {list(x0.shape)}")
    check_launchable(x_t, "ddim_update", "cdt_fast.functional.ddim_update")
    coef = ddim_coefficients(coefficients, x_t.device)
    out = (
        empty_like_layout(x_t, x_t.shape, torch.float32)
        if out is None
        else check_out(out, x_t.shape, torch.float32, x_t.device)
    )
    b, c, t, h, w = x_t.shape
    grid = check_grid((triton.cdiv(out.numel(), _BLOCK),), "ddim_update")
    with on_device(x_t):
        _ddim_update_kernel[grid](
            x_t,
            x0,
            out,
            coef,
            out.numel(),
            c,
            t,
            h,
            w,
            *x_t.stride(),
            *x0.stride(),
            *out.stride(),
            CLAMP=bool(clamp),
            BLOCK=_BLOCK,
        )
    return out


def to_uint8_frames(x: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton :func:`cdt_fast.functional.to_uint8_frames`: [B, C, T, H, W] in [-1, 1] ->
    contiguous [B, T, H, W, C] uint8, ``round((clamp(x) + 1) / 2 * 255)``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or not x.is_floating_point():
        raise ValueError("x must be a floating-point [B, C, T, H, W] tensor")
    check_launchable(x, "to_uint8_frames", "cdt_fast.functional.to_uint8_frames")
    b, c, t, h, w = x.shape
    shape = (b, t, h, w, c)
    if out is None:
        out = torch.empty(shape, dtype=torch.uint8, device=x.device)
    elif not check_out(out, shape, torch.uint8, x.device).is_contiguous():
        raise ValueError("out must be a contiguous [B, T, H, W, C] uint8 tensor")
    grid = check_grid((triton.cdiv(out.numel(), _BLOCK),), "to_uint8_frames")
    with on_device(x):
        _to_uint8_frames_kernel[grid](x, out, out.numel(), c, t, h, w, *x.stride(), BLOCK=_BLOCK)
    return out
