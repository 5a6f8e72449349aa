"""The single-step denoise around the U-Net, in Triton: initial noise, time biases, fused last stage.

* :func:`initial_noise` draws ``gamma * N(0, 1)`` in-kernel with Triton's Philox (no noise tensor
  is read from memory, no host RNG state is touched). The value of every element is a pure
  function of ``(seed, global element index)``, so a chunked decode draws exactly the noise of a
  whole-clip decode; see :func:`initial_noise` for the index convention.
* :func:`time_biases` evaluates the time MLP and every ResnetBlock's ``mlp(time_emb)`` once per
  decode: the time input is the same for every chunk, so these are constants.
* :func:`denoise_final` runs the U-Net's last stage and the sampler update in two kernels: a
  channel LayerNorm that writes the normalised frames (the conv's input, whose last frames are
  also the cache for the next chunk), then the causal (3,7,7) conv to 3 channels with the DDIM
  x-prediction update, the optional clamp and the optional uint8 NTHWC frames in its epilogue --
  the predicted x0 never reaches memory.

:func:`denoise_final_reference` and :func:`initial_noise_reference` are the torch oracles.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from cdt_fast import functional as CF
from cdt_fast.functional import PAD_MODES, cast_like

from ._common import (
    check_launchable,
    check_out,
    empty_like_layout,
    exact_fp32,
    interpreting,
    use_autotune,
)

__all__ = [
    "initial_noise",
    "initial_noise_reference",
    "time_embeddings",
    "time_biases",
    "denoise_final",
    "denoise_final_reference",
    "pack_final_conv_weight",
    "ddim_update",
    "to_uint8_frames",
]

# Conv output channels are padded to the smallest N tl.dot accepts.
_N_PAD = 16
_NOISE_BLOCK = 1024  # elements per program of the elementwise kernels

# --------------------------------------------------------------------------------------------
# initial noise
# --------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["seed", "offset"])
def _initial_noise_kernel(
    out_ptr,
    seed,
    offset,
    gamma,
    NUMEL,
    B,
    C,
    T,
    HW,
    W,
    s_b,
    s_c,
    s_t,
    s_h,
    s_w,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < NUMEL
    hw = n % HW
    t = (n // HW) % T
    c = (n // (HW * T)) % C
    b = n // (HW * T * C)
    # Time-major global index: independent of the clip length, contiguous per chunk of frames.
    index = (((t + offset) * B + b) * C + c) * HW + hw
    noise = tl.randn(seed, index) * gamma
    ptr = out_ptr + b * s_b + c * s_c + t * s_t + (hw // W) * s_h + (hw % W) * s_w
    tl.store(ptr, noise.to(out_ptr.dtype.element_ty), mask=mask)


def _check_noise_args(shape, seed, offset, gamma) -> Tuple[int, int, int, int, int]:
    shape = tuple(shape)
    if len(shape) != 5 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape
    ):
        raise ValueError(f"shape must be 5 positive ints [B, C, T, H, W], got {shape!r}")
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
            raise ValueError(f"{name} must be an int in [0, 2**62), got {value!r}")
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool):
        raise TypeError(f"gamma must be a float, got {type(gamma).__name__}")
    return shape


def initial_noise(
    shape: Sequence[int],
    seed: int,
    offset: int = 0,
    *,
    gamma: float = 0.8,
    device=None,
    dtype: torch.dtype = torch.float32,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``gamma * N(0, 1)`` of ``shape`` [B, C, T, H, W], generated in-kernel (Triton Philox).

    Stream: element ``(b, c, t, h, w)`` of a chunk whose first frame is frame ``offset`` of the
    whole clip gets the global index ``i = (((offset + t) * B + b) * C + c) * H * W + h * W + w``
    (time-major, so it does not depend on how many frames the clip has), and its value is
    ``gamma * tl.randn(seed, i)``: Philox-4x32-10 with key ``(seed mod 2**32, seed >> 32)`` and
    counter ``(i mod 2**32, i >> 32, 0, 0)``, Box-Muller of the first two words. Hence
    ``initial_noise((B, C, T1 + T2, H, W), s)`` equals the concatenation along time of
    ``initial_noise((B, C, T1, H, W), s, 0)`` and ``initial_noise((B, C, T2, H, W), s, T1)``.
    The values equal :func:`initial_noise_reference` up to the float rounding of log/cos/sqrt
    on the device; they are not ``torch.randn``'s stream. CPU tensors (without the Triton
    interpreter) are drawn by :func:`initial_noise_reference`.
    """
    shape = _check_noise_args(shape, seed, offset, gamma)
    device = (
        torch.device(device)
        if device is not None
        else (out.device if out is not None else torch.device("cpu"))
    )
    if out is not None:
        check_out(out, shape, dtype, device)
    if device.type != "cuda" and not interpreting():
        noise = initial_noise_reference(
            shape, seed, offset, gamma=gamma, device=device, dtype=dtype
        )
        return noise if out is None else out.copy_(noise)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=device)
    b, c, t, h, w = shape
    grid = (triton.cdiv(out.numel(), _NOISE_BLOCK),)
    _initial_noise_kernel[grid](
        out,
        seed,
        offset,
        float(gamma),
        out.numel(),
        b,
        c,
        t,
        h * w,
        w,
        *out.stride(),
        BLOCK=_NOISE_BLOCK,
    )
    return out


_PHILOX_KEY = (0x9E3779B9, 0xBB67AE85)
_PHILOX_ROUND = (0xD2511F53, 0xCD9E8D57)
_MASK32 = 0xFFFFFFFF


def _mul_hi_lo(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * b`` for a 32-bit constant and int64 tensors of 32-bit
    values, without overflowing int64 (b is split in 16-bit halves)."""
    lo_part = a * (b & 0xFFFF)
    mid = a * (b >> 16) + (lo_part >> 16)
    return mid >> 16, ((mid & 0xFFFF) << 16) | (lo_part & 0xFFFF)


def initial_noise_reference(
    shape: Sequence[int],
    seed: int,
    offset: int = 0,
    *,
    gamma: float = 0.8,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`initial_noise` in plain torch (any device, no Triton): the same Philox stream."""
    shape = _check_noise_args(shape, seed, offset, gamma)
    b, c, t, h, w = shape
    kw = dict(dtype=torch.int64, device=device)
    index = (
        (
            (
                (torch.arange(t, **kw).view(1, 1, t, 1, 1) + offset) * b
                + torch.arange(b, **kw).view(b, 1, 1, 1, 1)
            )
            * c
            + torch.arange(c, **kw).view(1, c, 1, 1, 1)
        )
        * (h * w)
        + (torch.arange(h, **kw) * w).view(1, 1, 1, h, 1)
        + torch.arange(w, **kw).view(1, 1, 1, 1, w)
    )
    c0, c1 = index & _MASK32, index >> 32
    c2 = c3 = torch.zeros_like(index)
    k0, k1 = seed & _MASK32, seed >> 32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_PHILOX_ROUND[1], c2)
        hi_a, lo_a = _mul_hi_lo(_PHILOX_ROUND[0], c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY[0]) & _MASK32, (k1 + _PHILOX_KEY[1]) & _MASK32

    def uniform(x: torch.Tensor) -> torch.Tensor:  # Triton's uint_to_uniform_float
        x = torch.where(x >= 2**31, x - 2**32, x)
        x = torch.where(x < 0, -x - 1, x)
        return x.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)

    u1 = torch.clamp(uniform(c0), min=1.0e-7)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * uniform(c1)
    noise = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)
    return (noise * torch.tensor(gamma, dtype=torch.float32)).to(dtype)


# --------------------------------------------------------------------------------------------
# time biases (torch: a handful of tiny matmuls once per decode)
# --------------------------------------------------------------------------------------------


def time_embeddings(unet, schedule) -> torch.Tensor:
    """[steps, 1, unet_dim]: the U-Net's time embedding of every sampling step (batch-independent:
    every sample of a decode is at the same step)."""
    device = unet.final_conv[1].weight.device
    with torch.no_grad():
        return torch.stack(
            [
                unet.time_embedding(schedule.time_input(step, 1, device))
                for step in range(schedule.steps)
            ]
        )


def time_biases(unet, schedule) -> Dict[torch.nn.Module, torch.Tensor]:
    """ResnetBlock -> [steps, 1, C] time bias ``mlp(time_emb)`` for every sampling step, exactly
    what :meth:`ResnetBlock.time_bias` adds per call; ``biases[block][step]`` is a valid
    ``time_bias`` argument of :func:`cdt_fast.functional.channel_norm`."""
    from cdt_fast.reference.layers import ResnetBlock

    emb = time_embeddings(unet, schedule)
    with torch.no_grad():
        return {
            m: torch.stack([m.mlp(e) for e in emb])
            for m in unet.modules()
            if isinstance(m, ResnetBlock) and m.mlp is not None
        }


# --------------------------------------------------------------------------------------------
# fused last stage: LayerNorm -> causal conv to 3 channels -> DDIM update -> clamp -> uint8
# --------------------------------------------------------------------------------------------

_NORM_CONFIGS = [
    triton.Config({"BLOCK_V": v}, num_warps=w) for v, w in [(32, 4), (64, 4), (128, 8)]
]
_CONV_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for m, k, w, s in [(128, 64, 4, 3), (256, 64, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3)]
]


@triton.jit
def _channel_norm_kernel(
    x_ptr,
    g_ptr,
    b_ptr,
    out_ptr,
    NVOX,
    T,
    HW,
    W,
    eps,
    s_xb,
    s_xc,
    s_xt,
    s_xh,
    s_xw,
    s_ob,
    s_oc,
    s_ot,
    s_oh,
    s_ow,
    C: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    v = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    offs_c = tl.arange(0, BLOCK_C)
    mask_v = v < NVOX
    mask_c = offs_c < C
    hw = v % HW
    t = (v // HW) % T
    b = v // (HW * T)
    hh = hw // W
    ww = hw % W
    mask = mask_v[:, None] & mask_c[None, :]
    x = tl.load(
        x_ptr + (b * s_xb + t * s_xt + hh * s_xh + ww * s_xw)[:, None] + offs_c[None, :] * s_xc,
        mask=mask,
        other=0.0,
    ).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    dev = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(dev * dev, axis=1) / C  # biased, as upstream
    g = tl.load(g_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    bb = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    y = dev / tl.sqrt(var + eps)[:, None] * g[None, :] + bb[None, :]
    tl.store(
        out_ptr + (b * s_ob + t * s_ot + hh * s_oh + ww * s_ow)[:, None] + offs_c[None, :] * s_oc,
        y.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _tap_index(pos, offset, size, ok, REPLICATE: tl.constexpr):
    """Input coordinate ``pos + offset`` of a spatial tap and whether it is inside the image:
    zero padding masks it out, replicate padding clamps it to the edge."""
    idx = pos + offset
    if REPLICATE:
        return tl.minimum(tl.maximum(idx, 0), size - 1), ok
    return idx, ok & (idx >= 0) & (idx < size)


@triton.jit
def _conv_frame(
    acc,
    frame_ptr,
    s_c,
    s_h,
    s_w,
    hh,
    ww,
    mask_m,
    w_ptr,
    H,
    W,
    C: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    REPLICATE: tl.constexpr,
    NP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
):
    """acc[m, :] += the (KH, KW) spatial taps of one input frame for output pixels m;
    ``w_ptr`` points at this frame's [KH, KW, C, NP] weights. Taps and channel blocks run as one
    flat loop so the compiler can pipeline the loads across taps (a tap is one block at C=64)."""
    K_BLOCKS: tl.constexpr = (C + BLOCK_K - 1) // BLOCK_K
    offs_k = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, NP)
    for it in range(KH * KW * K_BLOCKS):
        tap = it // K_BLOCKS
        ih, ok_h = _tap_index(hh, tap // KW - PH, H, mask_m, REPLICATE)
        iw, ok = _tap_index(ww, tap % KW - PW, W, ok_h, REPLICATE)
        ck = (it % K_BLOCKS) * BLOCK_K + offs_k
        ok_k = ck < C
        a = tl.load(
            frame_ptr + (ih * s_h + iw * s_w)[:, None] + ck[None, :] * s_c,
            mask=ok[:, None] & ok_k[None, :],
            other=0.0,
        )
        wt = tl.load(
            w_ptr + (tap * C + ck)[:, None] * NP + cols[None, :], mask=ok_k[:, None], other=0.0
        )
        if IEEE:
            acc = tl.dot(a, wt, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, wt, acc)
    return acc


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
    """(b, c, t, h, w) of the logical row-major index ``n`` of a [B, C, T, H, W] tensor."""
    w = n % W
    h = (n // W) % H
    t = (n // (W * H)) % T
    c = (n // (W * H * T)) % C
    return n // (W * H * T * C), c, t, h, w


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
    c = o % C
    w = (o // C) % W
    h = (o // (C * W)) % H
    t = (o // (C * W * H)) % T
    b = o // (C * W * H * T)
    x = tl.load(x_ptr + b * s_b + c * s_c + t * s_t + h * s_h + w * s_w, mask=mask)
    tl.store(out_ptr + o, _uint8_levels(x.to(tl.float32)), mask=mask)


@triton.jit
def _final_conv_ddim_kernel(
    h_ptr,
    past_ptr,
    w_ptr,
    bias_ptr,
    xt_ptr,
    out_ptr,
    u8_ptr,
    T,
    H,
    W,
    P,
    coef_ptr,
    s_hb,
    s_hc,
    s_ht,
    s_hh,
    s_hw,
    s_pb,
    s_pc,
    s_pt,
    s_ph,
    s_pw,
    s_xb,
    s_xc,
    s_xt,
    s_xh,
    s_xw,
    s_ob,
    s_oc,
    s_ot,
    s_oh,
    s_ow,
    C: tl.constexpr,
    N_OUT: tl.constexpr,
    NP: tl.constexpr,
    KT: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    HISTORY: tl.constexpr,
    REPLICATE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CLAMP: tl.constexpr,
    UINT8: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bt = tl.program_id(1)
    b = (pid_bt // T).to(tl.int64)  # batch strides can pass 2**31 elements
    t = pid_bt % T
    HW = H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < HW
    hh = offs_m // W
    ww = offs_m % W
    acc = tl.zeros((BLOCK_M, NP), dtype=tl.float32)
    for kt in tl.static_range(KT):
        # Input frame of tap kt relative to the chunk's first frame; [-P, 0) is the cached past,
        # below that the padding (zeros, or copies of the stream's first frame).
        u = t + kt - HISTORY
        if REPLICATE:
            u = tl.maximum(u, -P)
        if u >= 0:
            acc = _conv_frame(
                acc,
                h_ptr + b * s_hb + u * s_ht,
                s_hc,
                s_hh,
                s_hw,
                hh,
                ww,
                mask_m,
                w_ptr + kt * KH * KW * C * NP,
                H,
                W,
                C,
                KH,
                KW,
                PH,
                PW,
                REPLICATE,
                NP,
                BLOCK_K,
                IEEE,
            )
        elif u >= -P:
            acc = _conv_frame(
                acc,
                past_ptr + b * s_pb + (u + P) * s_pt,
                s_pc,
                s_ph,
                s_pw,
                hh,
                ww,
                mask_m,
                w_ptr + kt * KH * KW * C * NP,
                H,
                W,
                C,
                KH,
                KW,
                PH,
                PW,
                REPLICATE,
                NP,
                BLOCK_K,
                IEEE,
            )
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N_OUT
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    # The reference conv returns the model dtype; the sampler then works in fp32.
    x0 = acc.to(h_ptr.dtype.element_ty).to(tl.float32)
    mask = mask_m[:, None] & mask_n[None, :]
    pix = (hh * s_xh + ww * s_xw)[:, None] + offs_n[None, :] * s_xc
    x_t = tl.load(xt_ptr + b * s_xb + t * s_xt + pix, mask=mask, other=0.0).to(tl.float32)
    x_next = _ddim_step(x_t, x0, coef_ptr, CLAMP)
    tl.store(
        out_ptr + b * s_ob + t * s_ot + (hh * s_oh + ww * s_ow)[:, None] + offs_n[None, :] * s_oc,
        x_next,
        mask=mask,
    )
    if UINT8:
        frame = u8_ptr + (b * T + t).to(tl.int64) * HW * N_OUT
        tl.store(
            frame + offs_m[:, None] * N_OUT + offs_n[None, :], _uint8_levels(x_next), mask=mask
        )


_channel_norm_tuned = triton.autotune(_NORM_CONFIGS, key=["C"])(_channel_norm_kernel)
_final_conv_ddim_tuned = triton.autotune(_CONV_CONFIGS, key=["C", "KT", "KH", "KW", "IEEE"])(
    _final_conv_ddim_kernel
)


def pack_final_conv_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, C, KT, KH, KW] conv weight -> contiguous [KT, KH, KW, C, 16] in ``dtype``, output
    channels zero-padded to 16 (done once per decode by an engine)."""
    n = weight.shape[0]
    if n > _N_PAD:
        raise ValueError(f"weight must have at most {_N_PAD} output channels, got {n}")
    packed = weight.to(dtype).permute(2, 3, 4, 1, 0)
    return torch.nn.functional.pad(packed, (0, _N_PAD - n)).contiguous()


def _channel_norm(h: torch.Tensor, g: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    bsz, c, t, hgt, wid = h.shape
    out = empty_like_layout(h, h.shape)
    g, b = g.reshape(c).to(torch.float32).contiguous(), b.reshape(c).to(torch.float32).contiguous()
    nvox = bsz * t * hgt * wid
    args = (h, g, b, out, nvox, t, hgt * wid, wid, float(eps), *h.stride(), *out.stride())
    block_c = triton.next_power_of_2(c)
    if use_autotune(h):
        _channel_norm_tuned[lambda m: (triton.cdiv(nvox, m["BLOCK_V"]),)](
            *args, C=c, BLOCK_C=block_c
        )
    else:
        _channel_norm_kernel[(triton.cdiv(nvox, 16),)](*args, C=c, BLOCK_C=block_c, BLOCK_V=16)
    return out


def _check_final_args(
    h, norm_g, norm_b, weight, bias, x_t, coefficients, past, history, space_padding, pad_mode
):
    for name, value in (("h", h), ("x_t", x_t)):
        if not isinstance(value, torch.Tensor) or value.dim() != 5 or not value.is_floating_point():
            raise ValueError(f"{name} must be a floating-point [B, C, T, H, W] tensor")
    bsz, c, t, hgt, wid = h.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5 or weight.shape[1] != c:
        raise ValueError(
            f"weight must be [N, {c}, KT, KH, KW], got "
            f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight!r}"
        )
    n, _, kt, kh, kw = weight.shape
    for name, p in (("norm_g", norm_g), ("norm_b", norm_b)):
        if not isinstance(p, torch.Tensor) or p.numel() != c:
            raise ValueError(f"{name} must hold {c} values (one per channel of h)")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.numel() != n):
        raise ValueError(f"bias must be None or hold {n} values")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    ph, pw = space_padding
    if not (0 <= ph < kh and 0 <= pw < kw):
        raise ValueError(
            f"space_padding must be (ph, pw) with 0 <= ph < {kh}, 0 <= pw < {kw}, "
            f"got {tuple(space_padding)}"
        )
    t_out = t + history - kt + 1
    if history < 0 or t_out < 1:
        raise ValueError(
            f"history={history} with {t} frames gives no output frame of a {kt}-frame kernel"
        )
    out_shape = (bsz, n, t_out, hgt + 2 * ph - kh + 1, wid + 2 * pw - kw + 1)
    if tuple(x_t.shape) != out_shape:
        raise ValueError(
            f"x_t must have the conv output's shape {list(out_shape)}, got {list(x_t.shape)}"
        )
    if out_shape[3:] != (hgt, wid):
        raise ValueError("space_padding must keep H and W ('same' conv), as CDT's final conv")
    if past is not None:
        if (
            not isinstance(past, torch.Tensor)
            or past.dim() != 5
            or past.shape[:2] != h.shape[:2]
            or past.shape[3:] != h.shape[3:]
            or not 1 <= past.shape[2] <= history
        ):
            raise ValueError(f"past must be [B, C, 1..{history}, H, W] matching h {list(h.shape)}")
    return out_shape


def denoise_final(
    h: torch.Tensor,
    norm_g: torch.Tensor,
    norm_b: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    x_t: torch.Tensor,
    coefficients: Sequence,
    *,
    past: Optional[torch.Tensor] = None,
    history: int = 2,
    space_padding: Tuple[int, int] = (3, 3),
    pad_mode: str = "zeros",
    clamp: bool = False,
    uint8: bool = False,
    eps: float = 1e-5,
    out: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """The U-Net's last stage and one DDIM step, fused.

    ``x0 = causal_conv3d(channel_norm(h), weight, bias, past=past, history, space_padding,
    pad_mode)`` (in h's dtype), then ``x_next = ddim_update(x_t, x0, coefficients, clamp=clamp)``
    (fp32). Returns ``(x_next, frames, new_past)``: ``frames`` is
    ``to_uint8_frames(x_next)`` ([B, T, H, W, N] uint8) when ``uint8`` else None; ``new_past`` is
    the last ``history`` normalised frames of ``[past | channel_norm(h)]`` -- the conv's input,
    which is what the reference's cache holds -- for the next chunk. ``out``: optional fp32
    buffer for ``x_next``.
    """
    out_shape = _check_final_args(
        h, norm_g, norm_b, weight, bias, x_t, coefficients, past, history, space_padding, pad_mode
    )
    check_launchable(h, "denoise_final", "denoise_final_reference")
    bsz, n, t_out, hgt, wid = out_shape
    c, kt, kh, kw = weight.shape[1:]
    coef = _coefficients(coefficients, h.device)
    hn = _channel_norm(h, norm_g, norm_b, eps)
    new_past = CF.causal_conv3d_history(hn, past, history)
    w_packed = pack_final_conv_weight(weight, h.dtype)
    bias = cast_like(bias, h)
    past_t = past.to(h.dtype) if past is not None else hn
    x_next = (
        torch.empty(out_shape, dtype=torch.float32, device=h.device)
        if out is None
        else check_out(out, out_shape, torch.float32, h.device)
    )
    frames = (
        torch.empty((bsz, t_out, hgt, wid, n), dtype=torch.uint8, device=h.device)
        if uint8
        else None
    )
    args = (
        hn,
        past_t,
        w_packed,
        bias if bias is not None else w_packed,
        x_t,
        x_next,
        frames if frames is not None else x_next,
        t_out,
        hgt,
        wid,
        past.shape[2] if past is not None else 0,
        coef,
        *hn.stride(),
        *past_t.stride(),
        *x_t.stride(),
        *x_next.stride(),
    )
    meta = dict(
        C=c,
        N_OUT=n,
        NP=_N_PAD,
        KT=kt,
        KH=kh,
        KW=kw,
        PH=space_padding[0],
        PW=space_padding[1],
        HISTORY=history,
        REPLICATE=pad_mode == "replicate",
        HAS_BIAS=bias is not None,
        CLAMP=bool(clamp),
        UINT8=bool(uint8),
        IEEE=exact_fp32(h),
    )
    if use_autotune(h):
        grid = lambda m: (triton.cdiv(hgt * wid, m["BLOCK_M"]), bsz * t_out)  # noqa: E731
        _final_conv_ddim_tuned[grid](*args, **meta)
    else:
        # The interpreter's cost is per program and per tap: few, large programs.
        block_m = max(16, min(256, triton.next_power_of_2(hgt * wid)))
        block_k = max(16, min(64, triton.next_power_of_2(c)))
        _final_conv_ddim_kernel[(triton.cdiv(hgt * wid, block_m), bsz * t_out)](
            *args, **meta, BLOCK_M=block_m, BLOCK_K=block_k
        )
    return x_next, frames, new_past


def _coefficients(coefficients: Sequence, device: torch.device) -> torch.Tensor:
    """(a, b, c, d) as a 4-element fp32 tensor on ``device``: one stack of device tensors (what
    an engine keeps for a decode) or one host-to-device copy of Python floats."""
    if len(coefficients) != 4:
        raise ValueError("coefficients must be (a, b, c, d) from DDIMSchedule.coefficients")
    if all(
        isinstance(v, torch.Tensor) and v.device == device and v.numel() == 1 for v in coefficients
    ):
        return torch.stack([v.reshape(()).to(torch.float32) for v in coefficients])
    return torch.tensor([float(v) for v in coefficients], dtype=torch.float32, device=device)


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
    coef = _coefficients(coefficients, x_t.device)
    out = (
        empty_like_layout(x_t, x_t.shape, torch.float32)
        if out is None
        else check_out(out, x_t.shape, torch.float32, x_t.device)
    )
    b, c, t, h, w = x_t.shape
    grid = (triton.cdiv(out.numel(), _NOISE_BLOCK),)
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
        BLOCK=_NOISE_BLOCK,
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
    elif not out.is_contiguous():
        raise ValueError("out must be a contiguous [B, T, H, W, C] uint8 tensor")
    else:
        check_out(out, shape, torch.uint8, x.device)
    grid = (triton.cdiv(out.numel(), _NOISE_BLOCK),)
    _to_uint8_frames_kernel[grid](x, out, out.numel(), c, t, h, w, *x.stride(), BLOCK=_NOISE_BLOCK)
    return out


def denoise_final_reference(
    h,
    norm_g,
    norm_b,
    weight,
    bias,
    x_t,
    coefficients,
    *,
    past=None,
    history=2,
    space_padding=(3, 3),
    pad_mode="zeros",
    clamp=False,
    uint8=False,
    eps=1e-5,
):
    """:func:`denoise_final` as the reference U-Net and sampler compute it (cdt_fast.functional)."""
    hn = CF.channel_norm(h, norm_g, norm_b, eps)
    new_past = CF.causal_conv3d_history(hn, past, history)
    x0 = CF.causal_conv3d(
        hn, weight, bias, past=past, history=history, space_padding=space_padding, pad_mode=pad_mode
    ).float()
    x_next = CF.ddim_update(x_t, x0, coefficients, clamp=clamp)
    return x_next, CF.to_uint8_frames(x_next) if uint8 else None, new_past
