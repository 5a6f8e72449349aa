"""The causal conv's kernel: an implicit GEMM over ``[front padding | past | x]`` (see
:mod:`.causal_conv3d` for the launcher and the contract), its fused epilogue
(:func:`_conv_epilogue`), and the two autotuned entry points opt-in tuning launches.

GEMM view: M runs over output voxels ``(b, t, h, w)``, N over output channels, K over
``kt * kh * kw * Cin`` (taps outer, channels inner, so a K tile is a run of channels of one input
voxel: contiguous in channels-last ``NDHWC`` memory). Temporal history and spatial padding are
index clamps (``replicate``) or masks (``zeros``); ``UPSAMPLE`` reads the input nearest-2x
upsampled by index arithmetic. Programs are ordered in groups of ``GROUP_M`` row tiles
(program-id swizzle) so neighbouring programs reuse the same weight columns from L2.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .causal_conv3d_tiles import AUTOTUNE_KEY, autotune_configs, prune_configs
from .channel_norm import channel_norm_tile

__all__ = ["conv_tuned", "conv_tuned_full_n"]


@triton.jit
def _conv_epilogue(
    acc,
    rn,
    n_ok,
    b,
    bias_ptr,
    g_ptr,
    beta_ptr,
    cbias_ptr,
    res_ptr,
    res_off,
    mask,
    N,
    scb,
    scc,
    eps,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr,
    RELU: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    cbias = 0.0
    if HAS_CBIAS:
        cbias = tl.load(cbias_ptr + b[:, None] * scb + rn[None, :] * scc, mask=mask, other=0.0).to(
            tl.float32
        )
    res = 0.0
    if HAS_RES:
        res = tl.load(res_ptr + res_off, mask=mask, other=0.0).to(tl.float32)
    if NORM:  # the norm block's own per-voxel math, on the accumulator tile
        g = tl.load(g_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        return channel_norm_tile(acc, g, beta, cbias, res, n_ok, N, eps, RELU, HAS_CBIAS, HAS_RES)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    return acc + cbias + res


# Row and frame counts change from one chunk of a clip to the next (first chunk, steady chunks,
# the last one); specialising them (== 1, divisible by 16) would compile each chunk kind anew.
# They only bound masks and index math, so they lose nothing; channel counts and strides keep
# their specialisation (it gives the K loop and the 16-byte loads).
@triton.jit(do_not_specialize=["M", "T_OUT", "P_FRAMES", "P_OFF", "FRONT"])
def _causal_conv3d_kernel(
    x_ptr,
    p_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    g_ptr,
    beta_ptr,
    cbias_ptr,
    res_ptr,
    M,
    N,
    T_OUT,
    H_OUT,
    W_OUT,
    P_FRAMES,
    P_OFF,
    FRONT,
    H_IN,
    W_IN,
    PAD_H,
    PAD_W,
    sxb,
    sxc,
    sxt,
    sxh,
    sxw,
    spb,
    spc,
    spt,
    sph,
    spw,
    swo,
    swi,
    swt,
    swh,
    sww,
    sob,
    soc,
    sot,
    soh,
    sow,
    srb,
    src,
    srt,
    srh,
    srw,
    scb,
    scc,
    eps,
    CIN,
    CIN_PAD,
    K_TOTAL,
    KT: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    ST: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    HAS_PAST: tl.constexpr,
    ZERO_PAD: tl.constexpr,
    UPSAMPLE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr,
    RELU: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped program ordering: GROUP_M row tiles share each weight column tile while it is hot.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % rows_in_group
    pid_n = (pid % group_size) // rows_in_group

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    # Channel offsets of activations in 64 bits too: in a contiguous [B, C, T, H, W] tensor the
    # channel stride is T*H*W, and c * T*H*W passes 2**31 at 720p.
    rn_64 = rn.to(tl.int64)

    # Output voxel of each row (32-bit division: M < 2**31), then 64-bit so that offsets into
    # huge activations cannot overflow.
    rm_safe = tl.where(m_ok, rm, 0)
    wo = (rm_safe % W_OUT).to(tl.int64)
    ho = ((rm_safe // W_OUT) % H_OUT).to(tl.int64)
    to = ((rm_safe // (W_OUT * H_OUT)) % T_OUT).to(tl.int64)
    b = (rm_safe // (W_OUT * H_OUT * T_OUT)).to(tl.int64)
    t_base = to * ST - FRONT  # index into [past | x]; negative = temporal padding
    h_base = ho * SH - PAD_H  # index into the (upsampled) frame; outside = spatial padding
    w_base = wo * SW - PAD_W
    if UPSAMPLE:
        h_virtual = H_IN * 2
        w_virtual = W_IN * 2
    else:
        h_virtual = H_IN
        w_virtual = W_IN

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # The channel count is a run-time bound when compiled (one kernel serves every width of a
    # layer kind: fewer compilations). K runs over taps of CIN_PAD channels (CIN rounded up to a
    # multiple of BLOCK_K), K_TOTAL = taps * CIN_PAD in all; the launcher passes both through
    # ``loop_arg`` (the interpreter cannot loop over a bound computed in the kernel).
    for k0 in range(0, K_TOTAL, BLOCK_K):
        tap = k0 // CIN_PAD
        c0 = k0 - tap * CIN_PAD
        dt = tap // (KH * KW)
        dh = (tap // KW) % KH
        dw = tap % KW
        tv = t_base + dt
        hv = h_base + dh
        wv = w_base + dw
        if ZERO_PAD:
            ok = m_ok & (tv >= 0) & (hv >= 0) & (hv < h_virtual) & (wv >= 0) & (wv < w_virtual)
        else:
            ok = m_ok
        # Replicate padding is a clamp; for zero padding the clamp only keeps masked addresses sane.
        tv = tl.maximum(tv, 0)
        hv = tl.minimum(tl.maximum(hv, 0), h_virtual - 1)
        wv = tl.minimum(tl.maximum(wv, 0), w_virtual - 1)
        if UPSAMPLE:
            hv = hv // 2
            wv = wv // 2
        cin = c0 + rk
        k_ok = cin < CIN
        cin_64 = cin.to(tl.int64)
        if HAS_PAST:
            in_past = tv < P_FRAMES
            xt = tl.maximum(tv - P_FRAMES, 0)
            pt = tl.minimum(tv, P_FRAMES - 1) + P_OFF
            x_off = b * sxb + xt * sxt + hv * sxh + wv * sxw
            p_off = b * spb + pt * spt + hv * sph + wv * spw
            # One load through a row-wise pointer choice: the choice is constant along the
            # channels, so the loads stay as wide as without a past.
            a = tl.load(
                tl.where(
                    in_past[:, None],
                    p_ptr + p_off[:, None] + cin_64[None, :] * spc,
                    x_ptr + x_off[:, None] + cin_64[None, :] * sxc,
                ),
                mask=ok[:, None] & k_ok[None, :],
                other=0.0,
            )
        else:
            x_off = b * sxb + tv * sxt + hv * sxh + wv * sxw
            a = tl.load(
                x_ptr + x_off[:, None] + cin_64[None, :] * sxc,
                mask=ok[:, None] & k_ok[None, :],
                other=0.0,
            )
        w_tap = dt * swt + dh * swh + dw * sww
        w = tl.load(
            w_ptr + w_tap + cin[:, None] * swi + rn[None, :] * swo,
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)

    mask = m_ok[:, None] & n_ok[None, :]
    res_off = (b * srb + to * srt + ho * srh + wo * srw)[:, None] + rn_64[None, :] * src
    acc = _conv_epilogue(
        acc,
        rn,
        n_ok,
        b,
        bias_ptr,
        g_ptr,
        beta_ptr,
        cbias_ptr,
        res_ptr,
        res_off,
        mask,
        N,
        scb,
        scc,
        eps,
        HAS_BIAS,
        NORM,
        RELU,
        HAS_CBIAS,
        HAS_RES,
    )
    out_off = (b * sob + to * sot + ho * soh + wo * sow)[:, None] + rn_64[None, :] * soc
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


# Two entry points for opt-in autotuning over one kernel: the fused LayerNorm needs the whole
# channel row in one tile, so there BLOCK_N is the launcher's choice and only the other tile sizes
# are tuned.
conv_tuned = triton.autotune(
    autotune_configs(with_block_n=True),
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_configs},
)(_causal_conv3d_kernel)
conv_tuned_full_n = triton.autotune(
    autotune_configs(with_block_n=False),
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_configs},
)(_causal_conv3d_kernel)
