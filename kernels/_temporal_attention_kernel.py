"""Triton kernel behind :func:`cdt_fast.kernels.temporal_attention.temporal_attention`.

A program owns ``G`` consecutive (sequence, head) rows of ``[S*heads, T, d]``: its query tile is
those rows' queries flattened (row ``r`` = sequence ``r // TQ``, frame ``r % TQ``) and it walks
the keys of the same sequences in blocks; a key counts only for queries of its own sequence
(block-diagonal mask) and, when causal, only up to the query's frame. Short sequences (the usual
case along time) are packed several per tile; long ones get ``G = 1`` and a flash-style loop.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _tiles
from ._common import check_launchable
from ._tiles import Tile, autotune_enabled, launch_dtype, tile_family

_LOG2E = 1.4426950408889634
_PACK_TILE = 64  # rows (queries or keys) of a packed tile


@triton.jit
def _temporal_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    NH,
    HEADS,
    qk_scale,
    s_qs,
    s_qh,
    s_qt,
    s_qd,
    s_ks,
    s_kh,
    s_kt,
    s_kd,
    s_vs,
    s_vh,
    s_vt,
    s_vd,
    s_os,
    s_oh,
    s_ot,
    s_od,
    TQ: tl.constexpr,
    TK: tl.constexpr,
    D: tl.constexpr,
    G: tl.constexpr,
    CAUSAL: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_g = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    g_q = rows // TQ
    # Sequence, frame and feature offsets in 64 bits: q, k, v are often strided views of a
    # [B, C, T, H, W] activation, where a frame's stride is H*W*C and a feature's T*H*W.
    i_q = (rows % TQ).to(tl.int64)
    seq_q = (pid_g * G + g_q).to(tl.int64)
    ok_q = (g_q < G) & (seq_q < NH)
    offs_d = tl.arange(0, BLOCK_D)
    ok_d = offs_d < D
    offs_d_64 = offs_d.to(tl.int64)
    q_off = (seq_q // HEADS) * s_qs + (seq_q % HEADS) * s_qh + i_q * s_qt
    q = tl.load(
        q_ptr + q_off[:, None] + offs_d_64[None, :] * s_qd,
        mask=ok_q[:, None] & ok_d[None, :],
        other=0.0,
    )
    # Finite start for the running max: fully masked blocks then give exp2(-inf) = 0, not NaN.
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    # The last key any row of this tile may see: causal tiles stop early.
    last_row = tl.minimum(pid_m * BLOCK_M + BLOCK_M, G * TQ) - 1
    if CAUSAL:
        key_end = (last_row // TQ) * TK + (last_row % TQ) + (TK - TQ) + 1
    else:
        key_end = G * TK
    for start in range(0, G * TK, BLOCK_N):
        if start < key_end:
            cols = start + tl.arange(0, BLOCK_N)
            g_k = cols // TK
            j_k = (cols % TK).to(tl.int64)
            seq_k = (pid_g * G + g_k).to(tl.int64)
            ok_k = (g_k < G) & (seq_k < NH)
            kv_mask = ok_k[:, None] & ok_d[None, :]
            k = tl.load(
                k_ptr
                + ((seq_k // HEADS) * s_ks + (seq_k % HEADS) * s_kh + j_k * s_kt)[:, None]
                + offs_d_64[None, :] * s_kd,
                mask=kv_mask,
                other=0.0,
            )
            if IEEE:
                scores = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                scores = tl.dot(q, tl.trans(k))
            scores = scores * qk_scale
            allowed = (g_k[None, :] == g_q[:, None]) & ok_k[None, :]
            if CAUSAL:
                allowed = allowed & (j_k[None, :] <= i_q[:, None] + (TK - TQ))
            scores = tl.where(allowed, scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(
                v_ptr
                + ((seq_k // HEADS) * s_vs + (seq_k % HEADS) * s_vh + j_k * s_vt)[:, None]
                + offs_d_64[None, :] * s_vd,
                mask=kv_mask,
                other=0.0,
            )
            if IEEE:
                acc = tl.dot(p, v, acc * alpha[:, None], input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
            m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_off = (seq_q // HEADS) * s_os + (seq_q % HEADS) * s_oh + i_q * s_ot
    tl.store(
        o_ptr + o_off[:, None] + offs_d_64[None, :] * s_od,
        out.to(o_ptr.dtype.element_ty),
        mask=ok_q[:, None] & ok_d[None, :],
    )


_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w, s in [(4, 2), (4, 3), (8, 2)]]
# The tiles follow from the sequence lengths (:func:`_tiles`); the table picks warps and stages:
# the first candidate, one warpgroup, two stages. Other candidates only by opt-in autotuning.
_TILE = Tile.from_config(_CONFIGS[0])
_temporal_attention_tuned = triton.autotune(_CONFIGS, key=["TQ", "TK", "D", "G"])(
    _temporal_attention_kernel
)


def tile_shape(tq: int, tk: int, d: int):
    """(G, BLOCK_M, BLOCK_N, BLOCK_D): whole sequences per tile when they fit, else G = 1."""
    block_d = max(16, triton.next_power_of_2(d))
    longest = max(tq, tk)
    if longest <= _PACK_TILE:
        g = _PACK_TILE // longest
        return (
            g,
            max(16, triton.next_power_of_2(g * tq)),
            max(16, triton.next_power_of_2(g * tk)),
            block_d,
        )
    return 1, _PACK_TILE, _PACK_TILE, block_d


def temporal_shared_memory(
    tile: Tile, block_m: int, block_n: int, block_d: int, *, arch: str, size: int
) -> int:
    """Shared memory of the kernel with ``tile`` and the blocks of :func:`tile_shape` on
    ``size``-byte elements: the query tile [BLOCK_M, BLOCK_D], staged once, and each key step's k
    and v tiles [BLOCK_N, BLOCK_D], pipelined over ``num_stages``; the probabilities enter the
    second dot from registers."""
    return _tiles.shared_memory(
        arch, tile.num_stages, (2 * block_n * block_d,), size, once=block_m * block_d
    )


@_tiles.per_shape_class
def temporal_tile(
    arch: str, *, block_m: int, block_n: int, block_d: int, size: int, limit: Optional[int] = None
) -> Tile:
    """The table's tile (:data:`_TILE`) fitted to ``limit`` bytes of shared memory per block for
    the blocks of :func:`tile_shape` (default: the family's; fewer stages only, the blocks follow
    from the sequences; :func:`~._tiles.fit_tile`)."""
    return _tiles.fit_tile(
        _TILE,
        lambda t: temporal_shared_memory(t, block_m, block_n, block_d, arch=arch, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="temporal_attention",
    )


def launch(q, k, v, out, nh, heads, tq, tk, d, scale, causal) -> None:
    check_launchable(q, "temporal_attention", "the sdpa backend or cdt_fast.functional")
    g, block_m, block_n, block_d = tile_shape(tq, tk, d)
    dtype = launch_dtype(q)
    grid = (triton.cdiv(nh, g), triton.cdiv(g * tq, block_m))
    args = (
        q,
        k,
        v,
        out,
        nh,
        heads,
        scale * _LOG2E,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
    )
    meta = dict(
        TQ=tq,
        TK=tk,
        D=d,
        G=g,
        CAUSAL=bool(causal),
        IEEE=dtype == torch.float32,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
    )
    arch = tile_family(q)
    tile = temporal_tile(
        arch,
        block_m=block_m,
        block_n=block_n,
        block_d=block_d,
        size=dtype.itemsize,
        limit=_tiles.shared_memory_limit(q, arch),
    )
    _tiles.launch(
        _temporal_attention_kernel,
        _temporal_attention_tuned,
        lambda cfg: grid,
        args,
        meta,
        name="temporal_attention",
        arch=arch,
        shape_class=dict(meta, DTYPE=dtype),
        tile=tile,
        autotune=autotune_enabled(),
    )
