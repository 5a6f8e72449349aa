"""Spatial tiling: encode and decode a frame in overlapping tiles, blended without seams.

The networks' activations grow with the frame's area; tiling bounds them by the tile's instead, so
any resolution fits. A tile grid is laid out in latent units (one latent pixel is ``space_factor``
video pixels), so the same grid serves encode (video tiles in, latent tiles out) and decode (latent
tiles in, video tiles out). Neighbouring tiles overlap; inside an overlap the two tiles' outputs are
mixed with linear ramps whose weights sum to one, so a tile's border (where it sees padding rather
than its neighbour) fades out and no seam shows.

Tiling composes with time chunking and the feature cache: every tile is a stream of its own, with
its own cache carried through the time chunks. Two schedules are offered:

- :func:`blend_sequential`: one tile at a time, each through all its chunks (only one tile's
  activations and cache live at once: the memory bound for whole-clip calls);
- :func:`blend_lockstep`: all tiles advance chunk by chunk together, so frames come out as a
  stream (the tiles' caches live together).

A tile that covers the whole frame gives exactly the untiled result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "Tiling",
    "Tile",
    "resolve",
    "grid",
    "blend_sequential",
    "blend_lockstep",
    "tiled_encode",
    "tiled_decode",
]

Size = Union[int, Tuple[int, int]]


def _pair(value, name: str) -> Tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}")


@dataclass(frozen=True)
class Tiling:
    """Tile size and overlap in video pixels, (height, width); both multiples of the model's
    ``space_factor``, the overlap smaller than the tile."""

    tile: Tuple[int, int]
    overlap: Tuple[int, int]

    def latent(self, space_factor: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """(tile, overlap) in latent pixels."""
        s = space_factor
        return (self.tile[0] // s, self.tile[1] // s), (self.overlap[0] // s, self.overlap[1] // s)

    def covers(self, height: int, width: int) -> bool:
        """Whether one tile holds a ``height`` x ``width`` video frame (tiling is then a no-op)."""
        return self.tile[0] >= height and self.tile[1] >= width


def resolve(
    tile: Union[None, Size, Tiling], overlap: Optional[Size] = None, space_factor: int = 8
) -> Optional[Tiling]:
    """A validated :class:`Tiling` from the user-facing ``tile=`` / ``tile_overlap=`` arguments.

    ``tile``: None (no tiling), a side in video pixels, a (height, width) pair or a Tiling.
    ``overlap``: pixels shared by neighbouring tiles; default a quarter of the tile, rounded down
    to a multiple of ``space_factor``.
    """
    if tile is None:
        if overlap is not None:
            raise ValueError("tile_overlap needs tile= as well")
        return None
    s = space_factor
    if isinstance(tile, Tiling):
        if overlap is not None:
            raise ValueError("pass the overlap inside the Tiling or as tile_overlap, not both")
        size, over = tile.tile, tile.overlap
    else:
        size = _pair(tile, "tile")
        if overlap is None:
            over = tuple((side // 4) // s * s for side in size)
        else:
            over = _pair(overlap, "tile_overlap")
    for side in size:
        if side < s or side % s:
            raise ValueError(f"tile must be a positive multiple of {s} pixels, got {size}")
    for side, o in zip(size, over):
        if o < 0 or o % s:
            raise ValueError(f"tile_overlap must be a multiple of {s} pixels >= 0, got {over}")
        if o >= side:
            raise ValueError(f"tile_overlap must be smaller than the tile, got {over} for {size}")
    return Tiling(tuple(size), tuple(over))


@dataclass(frozen=True)
class Tile:
    """One tile of a grid: latent rows [y0, y1) and columns [x0, x1), with its blend weights
    along each axis (in the output's units; multiply them for the 2-D weight)."""

    y0: int
    y1: int
    x0: int
    x1: int
    wy: torch.Tensor
    wx: torch.Tensor

    def region(self, scale: int) -> Tuple[slice, slice]:
        """The tile's (rows, columns) at ``scale`` output pixels per latent pixel."""
        return slice(self.y0 * scale, self.y1 * scale), slice(self.x0 * scale, self.x1 * scale)

    def weight(self, device, dtype) -> torch.Tensor:
        return (self.wy[:, None] * self.wx[None, :]).to(device=device, dtype=dtype)


def _starts(length: int, tile: int, overlap: int) -> List[int]:
    """Tile starts along one axis: stride ``tile - overlap``, the last tile flush with the end."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _axis_weights(starts: Sequence[int], size: int, length: int, scale: int) -> List[torch.Tensor]:
    """Per-tile weights along one axis at ``scale`` output pixels per latent pixel: 1 inside,
    linear ramps across each overlap with a neighbour (never reaching 0), normalised so that the
    tiles covering any position sum to 1."""
    raw = []
    for i, start in enumerate(starts):
        n = min(size, length - start) * scale
        w = torch.ones(n, dtype=torch.float64)
        if i > 0:  # rising across the overlap with the previous tile
            left = (min(starts[i - 1] + size, length) - start) * scale
            if left > 0:
                w[:left] = torch.minimum(w[:left], torch.arange(1, left + 1) / (left + 1))
        if i + 1 < len(starts):  # falling across the overlap with the next tile
            right = (start + size - starts[i + 1]) * scale
            if right > 0:
                ramp = torch.arange(right, 0, -1) / (right + 1)
                w[n - right :] = torch.minimum(w[n - right :], ramp)
        raw.append(w)
    total = torch.zeros(length * scale, dtype=torch.float64)
    for start, w in zip(starts, raw):
        total[start * scale : start * scale + w.numel()] += w
    return [(w / total[s * scale : s * scale + w.numel()]).float() for s, w in zip(starts, raw)]


def grid(height: int, width: int, tiling: Tiling, space_factor: int, scale: int) -> List[Tile]:
    """The tiles of a ``height`` x ``width`` latent frame (row-major), with weights for an output
    at ``scale`` pixels per latent pixel (``space_factor`` for decode, 1 for encode)."""
    (th, tw), (oh, ow) = tiling.latent(space_factor)
    ys, xs = _starts(height, th, oh), _starts(width, tw, ow)
    wys, wxs = _axis_weights(ys, th, height, scale), _axis_weights(xs, tw, width, scale)
    return [
        Tile(y, min(y + th, height), x, min(x + tw, width), wy, wx)
        for y, wy in zip(ys, wys)
        for x, wx in zip(xs, wxs)
    ]


def blend_sequential(
    make_stream: Callable[[Tile], Iterable[torch.Tensor]],
    tiles: Sequence[Tile],
    scale: int,
    frames: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """Run the tiles one after another, each through all its time chunks, and return the blended
    [B, C, frames, height, width] (fp32, on the chunks' device). ``make_stream(tile)`` is called
    only when the tile's turn comes, so one tile's state lives at a time."""
    out: Optional[torch.Tensor] = None
    for tile in tiles:
        rows, cols = tile.region(scale)
        weight = None
        pos = 0
        for chunk in make_stream(tile):
            if out is None:
                b, c = chunk.shape[:2]
                out = chunk.new_zeros((b, c, frames, height, width), dtype=torch.float32)
            if weight is None:
                weight = tile.weight(out.device, out.dtype)
            n = chunk.shape[2]
            out[:, :, pos : pos + n, rows, cols] += chunk.to(out.dtype) * weight
            pos += n
        if pos != frames:
            raise RuntimeError(f"a tile produced {pos} frames, expected {frames}")
    assert out is not None
    return out


def blend_lockstep(
    streams: Sequence[Iterable[torch.Tensor]],
    tiles: Sequence[Tile],
    scale: int,
    height: int,
    width: int,
) -> Iterator[torch.Tensor]:
    """Advance every tile's stream one chunk per round and yield the blended frames
    ([B, C, t, height, width]) as soon as all tiles have produced them. Streams may cut time into
    different chunk lengths (e.g. after an out-of-memory retry); each chunk is blended as soon as
    it arrives, so a stream may reuse its chunk buffer."""
    iters = [iter(s) for s in streams]
    pos = [0] * len(iters)
    live = [True] * len(iters)
    weights = [None] * len(iters)
    acc: Optional[torch.Tensor] = None  # frames [emitted, emitted + acc.shape[2])
    emitted = 0
    while any(live):
        for i, it in enumerate(iters):
            if not live[i]:
                continue
            chunk = next(it, None)
            if chunk is None:
                live[i] = False
                continue
            n = chunk.shape[2]
            need = pos[i] + n - emitted
            if acc is None:
                b, c = chunk.shape[:2]
                acc = chunk.new_zeros((b, c, need, height, width), dtype=torch.float32)
            elif acc.shape[2] < need:
                extra = acc.new_zeros(acc.shape[:2] + (need - acc.shape[2], height, width))
                acc = torch.cat([acc, extra], dim=2)
            if weights[i] is None:
                weights[i] = tiles[i].weight(acc.device, acc.dtype)
            rows, cols = tiles[i].region(scale)
            start = pos[i] - emitted
            acc[:, :, start : start + n, rows, cols] += chunk.to(acc.dtype) * weights[i]
            pos[i] += n
        ready = min(pos) - emitted
        if ready > 0 and acc is not None:
            yield acc[:, :, :ready]
            acc = acc[:, :, ready:] if acc.shape[2] > ready else None
            emitted += ready
    if len(set(pos)) > 1:
        raise RuntimeError(f"tiles produced different frame counts: {sorted(set(pos))}")


def tiled_encode(
    x: torch.Tensor,
    tiling: Tiling,
    space_factor: int,
    stream_of: Callable[[torch.Tensor], Iterable[torch.Tensor]],
    lockstep: bool = False,
    time_factor: int = 4,
):
    """Encode video ``x`` [B, 3, T, H, W] tile by tile. ``stream_of(x_tile)`` yields a tile's
    posterior parameters chunk by chunk. Returns the blended parameters, or with ``lockstep`` an
    iterator of blended chunks."""
    s = space_factor
    _, _, t, h, w = x.shape
    lh, lw = h // s, w // s
    tiles = grid(lh, lw, tiling, s, 1)

    def make(tile: Tile):
        rows, cols = tile.region(s)
        return stream_of(x[:, :, :, rows, cols])

    if lockstep:
        return blend_lockstep([make(tile) for tile in tiles], tiles, 1, lh, lw)
    return blend_sequential(make, tiles, 1, 1 + (t - 1) // time_factor, lh, lw)


def tiled_decode(
    z: torch.Tensor,
    noise: torch.Tensor,
    tiling: Tiling,
    space_factor: int,
    stream_of: Callable[[torch.Tensor, torch.Tensor], Iterable[torch.Tensor]],
    lockstep: bool = False,
):
    """Decode latent ``z`` [B, C, T, h, w] tile by tile from the whole output's ``noise`` (drawn
    once, as an untiled decode draws it, so each tile sees the untiled call's values).
    ``stream_of(z_tile, noise_tile)`` yields a tile's video frames chunk by chunk. Returns the
    blended video, or with ``lockstep`` an iterator of blended chunks."""
    s = space_factor
    _, _, _, lh, lw = z.shape
    tiles = grid(lh, lw, tiling, s, s)

    def make(tile: Tile):
        rows, cols = tile.region(s)
        z_tile = z[:, :, :, tile.y0 : tile.y1, tile.x0 : tile.x1].contiguous()
        return stream_of(z_tile, noise[:, :, :, rows, cols].contiguous())

    if lockstep:
        return blend_lockstep([make(tile) for tile in tiles], tiles, s, lh * s, lw * s)
    return blend_sequential(make, tiles, s, noise.shape[2], lh * s, lw * s)
