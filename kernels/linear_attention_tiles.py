"""The linear attention's tiles (see ``kernels/_tiles.py``): one tile per shape class for each
pass (the projection's :func:`project_tile`, the context pass's :func:`partial_tile`, the apply
pass's :func:`apply_tile`), what each holds in shared memory, and the candidates opt-in
autotuning tries."""

from __future__ import annotations

from typing import Optional

import triton

from . import _tiles
from ._tiles import Tile

__all__ = [
    "PARTIAL_CONFIGS",
    "APPLY_CONFIGS",
    "PROJECT_CONFIGS",
    "MAX_BLOCK_C",
    "block_width",
    "prune_project_configs",
    "project_tile",
    "project_shared_memory",
    "partial_tile",
    "partial_shared_memory",
    "combine_shared_memory",
    "apply_tile",
    "apply_block_c",
    "apply_shared_memory",
]

PARTIAL_CONFIGS = [
    triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)
    for n in (32, 64, 128)
    for w in (4, 8)
    for s in (2, 3)
]
APPLY_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_D": d}, num_warps=w, num_stages=s)
    for n in (32, 64, 128)
    for d in (32, 64)
    for w in (4, 8)
    for s in (2, 3)
]
PROJECT_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
    for m in (16, 32, 64, 128)
    for n in (32, 64, 128, 256)
    for w in (4, 8)
    for s in (1, 2, 3)
]
# Shared-memory budgets (bytes) of the resident activation tile and the pipelined weight tiles.
X_TILE_BYTES = 64 * 1024
W_TILE_BYTES = 128 * 1024
# Output channels per apply program (each recomputes the softmax of its q rows).
MAX_BLOCK_C = 128


def block_width(dh: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(dh)))  # tl.dot wants >= 16


def prune_project_configs(configs, named_args, **kwargs):
    block_k = kwargs.get("BLOCK_K", named_args.get("BLOCK_K"))
    size = named_args["w_ptr"].element_size()
    widest = max(32, triton.next_power_of_2(int(named_args["N_OUT"])))
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] * block_k * size <= X_TILE_BYTES
        and c.kwargs["BLOCK_N"] * block_k * size * c.num_stages <= W_TILE_BYTES
        and c.kwargs["BLOCK_N"] <= widest
    ]
    return kept or [
        min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))
    ]


@_tiles.per_shape_class
def project_tile(
    arch: str, *, block_k: int, n_out: int, size: int, limit: Optional[int] = None
) -> Tile:
    """The qkv projection's tile: each program holds its rows' whole channel vector (BLOCK_K =
    next_pow2(C)) in registers for the norm, so the row count shrinks as C grows (4096 elements:
    no spills at C = 512 on sm_90, ``tools/sass_audit.py``); from 64 rows, with 4 warps, the
    product runs on ``wgmma``. Output columns in tiles of 64 while the weight tile stays within
    its shared-memory budget, else 32; rows wider than 512 fp32 or 1024 16-bit channels take
    narrower column tiles, then fewer rows, until the block fits ``limit`` bytes of shared memory
    (default: the family's; :func:`project_shared_memory`, :func:`~._tiles.fit_tile`), and raise
    where even 16 x 16 does not fit."""
    block_m = max(16, min(64, 4096 // block_k))
    widest = max(32, triton.next_power_of_2(n_out))
    block_n = 64 if 64 * block_k * size <= W_TILE_BYTES // 2 and widest >= 64 else 32
    while block_m > 16 and block_m * block_k * size > X_TILE_BYTES:
        block_m //= 2
    return _tiles.fit_tile(
        Tile.of(4, 1, BLOCK_M=block_m, BLOCK_N=block_n),
        lambda t: project_shared_memory(t, arch=arch, block_k=block_k, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="norm_project",
        shrink=("BLOCK_N", "BLOCK_M"),
        why=f"the kernel holds a whole channel vector per row ({block_k} channels of {size} bytes)",
    )


def project_shared_memory(tile: Tile, *, arch: str, block_k: int, size: int) -> int:
    """Shared memory of the norm + projection kernel: the normalised rows [BLOCK_M, BLOCK_K],
    staged once as the dots' first operand, and each column step's weight tile [BLOCK_K,
    BLOCK_N], pipelined over ``num_stages``; ``size``-byte elements (the activation dtype)."""
    m, n = tile.kwargs["BLOCK_M"], tile.kwargs["BLOCK_N"]
    return _tiles.shared_memory(arch, tile.num_stages, (block_k * n,), size, once=m * block_k)


@_tiles.per_shape_class
def partial_tile(
    arch: str, *, block_d: int, block_e: int, size: int = 4, limit: Optional[int] = None
) -> Tile:
    """The context pass's tile: 64 positions per step, 4 warps, 2 stages (``wgmma``, no spills
    at d = 32..128 on sm_90), fitted to ``limit`` bytes of shared memory per block on
    ``size``-byte elements (default: the family's; :func:`~._tiles.fit_tile`)."""
    return _tiles.fit_tile(
        Tile.of(4, 2, BLOCK_N=64),
        lambda t: partial_shared_memory(t, arch=arch, block_d=block_d, block_e=block_e, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="context_partial",
        shrink=("BLOCK_N",),
    )


def partial_shared_memory(tile: Tile, *, arch: str, block_d: int, block_e: int, size: int) -> int:
    """Shared memory of the context pass: each step loads k [BLOCK_N, BLOCK_D] and v [BLOCK_N,
    BLOCK_E] (``size``-byte elements), pipelined over ``num_stages``; ``exp(k - max)`` enters the
    dot from registers."""
    n = tile.kwargs["BLOCK_N"]
    return _tiles.shared_memory(arch, tile.num_stages, (n * block_d, n * block_e), size)


def combine_shared_memory(*, arch: str, block_d: int, block_e: int) -> int:
    """Shared memory of the merge of the slices: no ``tl.dot``; a layout change of its fp32
    [BLOCK_D, BLOCK_E] tile at most (the audit reads 256 bytes)."""
    return _tiles.shared_memory(arch, 0, (), 4, scratch=block_d * block_e * 4)


@_tiles.per_shape_class
def apply_tile(
    arch: str,
    *,
    dh: int,
    block_c: int = MAX_BLOCK_C,
    size: int = 4,
    limit: Optional[int] = None,
) -> Tile:
    """The apply pass's tile: 64 positions (from 64 rows the product runs on ``wgmma``; 32 fell
    back to ``mma.sync``), head dims in tiles of up to 64, 4 warps, 2 stages; fitted to ``limit``
    bytes of shared memory per block for ``block_c`` output channels of ``size``-byte elements
    (default: the family's; :func:`~._tiles.fit_tile`)."""
    return _tiles.fit_tile(
        Tile.of(4, 2, BLOCK_N=64, BLOCK_D=block_width(dh, 64)),
        lambda t: apply_shared_memory(t, arch=arch, block_c=block_c, size=size),
        _tiles.SHARED_MEMORY_LIMIT[arch] if limit is None else limit,
        name="attention_apply",
        shrink=("BLOCK_D", "BLOCK_N"),
    )


def apply_block_c(c_out: int) -> int:
    """Output channels per apply program: all of them up to :data:`MAX_BLOCK_C`."""
    return block_width(c_out, MAX_BLOCK_C)


def apply_shared_memory(tile: Tile, *, arch: str, block_c: int, size: int) -> int:
    """Shared memory of the apply pass: each step loads q [BLOCK_N, BLOCK_D] and mix [BLOCK_D,
    BLOCK_C] (``size``-byte elements), pipelined over ``num_stages``; softmax(q) enters the dot
    from registers."""
    n, d = tile.kwargs["BLOCK_N"], tile.kwargs["BLOCK_D"]
    return _tiles.shared_memory(arch, tile.num_stages, (n * d, d * block_c), size)
