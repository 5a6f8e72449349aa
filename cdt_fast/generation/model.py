"""A Latte-style video diffusion transformer over CDT latents ``[B, C, 1+k, h, w]``.

Each latent frame is cut into 2x2 patches (tokens); blocks alternate between attention over the
tokens of one frame (spatial) and attention over the frames at one position (temporal). Every block
is conditioned by adaLN-zero (DiT): the diffusion time, plus an optional class label, regress a
shift, scale and gate for each half of the block, the gates starting at zero so that a fresh model
is the identity. Positions are fixed sinusoids (2-D in space, 1-D in time) computed for any size
and any number of frames, so a model runs on more latent frames than it was trained on.

With ``causal=True`` the temporal attention only looks back: frame ``i``'s output depends on frames
``<= i``. A :class:`KVCache` then lets a clip be processed chunk by chunk, each chunk attending to
the cached keys and values of the earlier ones, with the same result as the whole clip at once.
The time input may be per sample ``[B]`` or per frame ``[B, T]`` (earlier, already generated
frames can be conditioned as clean, ``t = 0``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..config import check_positive_ints, dataclass_from_dict
from .attention import AttentionTable

__all__ = ["GenConfig", "VideoDiT", "KVCache", "PRESETS"]


@dataclass(frozen=True)
class GenConfig:
    """The generator's architecture. ``depth`` counts blocks (spatial and temporal alternate, the
    first spatial), so ``depth`` must be even. ``num_classes = 0``: unconditional."""

    name: str = "custom"
    in_channels: int = 16
    patch_size: int = 2
    hidden: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0
    class_dropout: float = 0.1  # label dropout in training, for classifier-free guidance
    causal: bool = False  # temporal attention only looks back (chunked extension with a cache)

    def __post_init__(self):
        check_positive_ints(self, ("in_channels", "patch_size", "hidden", "depth", "heads"))
        if self.depth % 2:
            raise ValueError(f"GenConfig.depth must be even (space/time pairs), got {self.depth}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(
                f"GenConfig.hidden ({self.hidden}) must split into {self.heads} heads of even width"
            )
        if self.hidden % 4:
            raise ValueError(f"GenConfig.hidden must be a multiple of 4, got {self.hidden}")
        if isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"GenConfig.num_classes must be >= 0, got {self.num_classes!r}")
        if not 0 <= self.class_dropout < 1:
            raise ValueError(f"GenConfig.class_dropout must be in [0, 1), got {self.class_dropout}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"GenConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")

    def replace(self, **changes: Any) -> "GenConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "GenConfig":
        return dataclass_from_dict(cls, values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GenConfig":
        if name not in PRESETS:
            raise ValueError(f"generator preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(name=name, **{**PRESETS[name], **overrides})


# Widths, depths and heads of DiT-S/B (Peebles & Xie, table 1); Latte alternates the same blocks
# between space and time. ``tiny`` trains in minutes on a CPU.
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(hidden=64, depth=4, heads=4),
    "S": dict(hidden=384, depth=12, heads=6),
    "B": dict(hidden=768, depth=12, heads=12),
}


def sinusoid(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[..., dim] embedding of real ``positions`` [...]: cos of half the channels, sin of the rest,
    at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=positions.device)
        / half
    )
    angles = positions.float().unsqueeze(-1) * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def spatial_positions(rows: int, cols: int, dim: int, device=None) -> torch.Tensor:
    """[rows*cols, dim]: half the channels encode the row, half the column."""
    r = sinusoid(torch.arange(rows, device=device), dim // 2)
    c = sinusoid(torch.arange(cols, device=device), dim // 2)
    return torch.cat(
        [r[:, None].expand(rows, cols, -1), c[None, :].expand(rows, cols, -1)], -1
    ).reshape(rows * cols, dim)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class KVCache:
    """Keys and values of the frames processed so far, one entry per temporal block, for a causal
    model. Owned by one caller; ``frames`` is the number of latent frames it holds (the time
    position of the next chunk)."""

    def __init__(self):
        self.entries: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = []
        self.frames = 0

    def get(self, index: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return self.entries[index] if index < len(self.entries) else None

    def put(self, index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        while len(self.entries) <= index:
            self.entries.append(None)
        self.entries[index] = (k, v)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-zero; attends over ``axis`` ("space" or "time")."""

    def __init__(self, config: GenConfig, axis: str):
        super().__init__()
        dim = config.hidden
        self.axis, self.heads = axis, config.heads
        self.causal = config.causal and axis == "time"
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * config.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def _attend(
        self,
        x: torch.Tensor,
        attend: AttentionTable,
        cache: Optional[KVCache],
        index: int,
        update_cache: bool,
    ) -> torch.Tensor:
        b, t, n, dim = x.shape
        heads, d = self.heads, dim // self.heads
        if self.axis == "time":
            x = x.transpose(1, 2)  # [B, N, T, D]: each position's frames form one sequence
        rows, length = x.shape[0] * x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).reshape(rows, length, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None and self.axis == "time":
            past = cache.get(index)
            if past is not None:
                k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
            if update_cache:
                cache.put(index, k.detach(), v.detach())
        out = attend(q, k, v, causal=self.causal, axis=self.axis)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], length, dim)
        if self.axis == "time":
            out = out.transpose(1, 2)
        return self.proj(out)

    def forward(self, x, cond, attend, cache=None, index=0, update_cache=False):
        """``x`` [B, T, N, D], ``cond`` [B, T, D] (one conditioning vector per frame); ``attend``:
        the generator's :class:`~cdt_fast.generation.attention.AttentionTable`."""
        mods = self.modulation(cond).unsqueeze(2).chunk(6, dim=-1)  # each [B, T, 1, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        h = self._attend(
            _modulate(self.norm1(x), shift1, scale1), attend, cache, index, update_cache
        )
        x = x + gate1 * h
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class VideoDiT(nn.Module):
    """The denoiser: ``forward(x, t, y=None)`` -> a tensor shaped like ``x`` [B, C, T, h, w].

    ``t`` [B] or [B, T] in [0, 1] (the diffusion time; 1 is pure noise); ``y`` [B] long class
    labels, ``num_classes`` standing for "no label" (classifier-free guidance). ``h`` and ``w``
    must be multiples of ``patch_size``.
    """

    def __init__(self, config: GenConfig):
        super().__init__()
        self.config = config
        c, p, dim = config.in_channels, config.patch_size, config.hidden
        self.patch_embed = nn.Linear(c * p * p, dim)
        self.time_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embed = (
            nn.Embedding(config.num_classes + 1, dim) if config.num_classes > 0 else None
        )
        self.blocks = nn.ModuleList(
            Block(config, "space" if i % 2 == 0 else "time") for i in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.head = nn.Linear(dim, c * p * p)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's initialisation: Xavier linears, small time/class embeddings, and zero for every
        modulation and the output head (each block starts as the identity, the output at 0)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in (self.time_embed[0], self.time_embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        for module in [b.modulation[1] for b in self.blocks] + [self.modulation_out[1], self.head]:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def _check(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"x must be [B, {cfg.in_channels}, T, h, w], got "
                f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        if x.shape[3] % cfg.patch_size or x.shape[4] % cfg.patch_size:
            raise ValueError(
                f"x's height and width must be multiples of {cfg.patch_size}, got "
                f"{x.shape[3]}x{x.shape[4]}"
            )
        b, frames = x.shape[0], x.shape[2]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape not in ((b,), (b, frames)):
            raise ValueError(
                f"t must be [B] or [B, T] = [{b}] or [{b}, {frames}], got {list(t.shape)}"
            )
        if y is not None:
            if self.class_embed is None:
                raise ValueError("y: this generator is unconditional (num_classes = 0)")
            if y.shape != (b,) or y.dtype != torch.long:
                raise ValueError(f"y must be a long tensor [{b}], got {y.dtype} {list(y.shape)}")
        return t

    def condition(self, t: torch.Tensor, y: Optional[torch.Tensor], frames: int) -> torch.Tensor:
        """[B, T, D]: the time embedding of each frame plus the class embedding."""
        if t.dim() == 1:
            t = t[:, None].expand(-1, frames)
        # Times in [0, 1] are spread over DiT's integer timestep range for the sinusoid.
        cond = self.time_embed(sinusoid(t * 1000.0, 256))
        if self.class_embed is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.null_class, dtype=torch.long, device=t.device)
            cond = cond + self.class_embed(y)[:, None]
        return cond

    def _attention(self, backend: str) -> AttentionTable:
        # One table per backend name, so that a loop of forward calls does not rebuild (and
        # re-resolve) the dispatch table every time. Not module state: a copy or a pickle of the
        # model starts without tables (AttentionTable drops its built ones).
        tables = self.__dict__.setdefault("_attention_tables", {})
        if backend not in tables:
            tables[backend] = AttentionTable(backend)
        return tables[backend]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: Optional[torch.Tensor] = None,
        *,
        backend: Union[str, AttentionTable] = "auto",
        cache: Optional[KVCache] = None,
        update_cache: bool = False,
    ) -> torch.Tensor:
        """Predict the model output for ``x`` at times ``t``.

        ``cache`` (causal models only): attend to the frames it holds as the past of ``x``, whose
        first frame then sits at time position ``cache.frames``; ``update_cache=True`` appends
        ``x``'s keys and values (call it once per chunk, with the chunk's final, clean frames).
        ``backend``: the attention backend's name, whose table is built on its first use and kept
        by the model (the sampler and the trainer pass names), or an
        :class:`~cdt_fast.generation.attention.AttentionTable`.
        """
        attend = backend if isinstance(backend, AttentionTable) else self._attention(backend)
        if cache is not None and not self.config.causal:
            raise ValueError("cache: only a causal generator (GenConfig.causal) can use one")
        t = self._check(x, t, y)
        cfg, p = self.config, self.config.patch_size
        b, c, frames, h, w = x.shape
        rows, cols = h // p, w // p
        tokens = (
            x.reshape(b, c, frames, rows, p, cols, p)
            .permute(0, 2, 3, 5, 1, 4, 6)
            .reshape(b, frames, rows * cols, c * p * p)
        )
        start = cache.frames if cache is not None else 0
        pos_t = sinusoid(torch.arange(start, start + frames, device=x.device), cfg.hidden)
        tokens = (
            self.patch_embed(tokens)
            + spatial_positions(rows, cols, cfg.hidden, x.device)
            + pos_t[:, None]
        )
        cond = self.condition(t.to(x.dtype), y, frames)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, cond, attend, cache, i // 2, update_cache)
        shift, scale = self.modulation_out(cond).unsqueeze(2).chunk(2, dim=-1)
        out = self.head(_modulate(self.norm_out(tokens), shift, scale))
        if cache is not None and update_cache:
            cache.frames += frames
        return (
            out.reshape(b, frames, rows, cols, c, p, p)
            .permute(0, 4, 1, 2, 5, 3, 6)
            .reshape(b, c, frames, h, w)
        )
