"""Checks at the public boundary: each names the argument and what was expected, once per call."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

__all__ = [
    "check_finite",
    "check_video",
    "check_latent",
    "check_noise",
    "check_steps",
    "check_chunk_frames",
    "check_generator",
    "check_attention",
]


def _check_tensor(value, name: str, shape_doc: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(value).__name__}")
    if value.dim() != 5:
        raise ValueError(f"{name} must have rank 5 {shape_doc}, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32/float16/bfloat16), got {value.dtype}"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    return value


def check_finite(value: torch.Tensor, name: str) -> None:
    """Refuses NaN or infinite values in ``value`` (one host read of a device tensor)."""
    if value.device.type == "meta":  # shapes only (e.g. capturing launches): no values to check
        return
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_video(x, name: str = "x", space_factor: int = 8) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1], T = 1+4k, H and W multiples of ``space_factor``."""
    doc = "[B, 3, T, H, W]"
    _check_tensor(x, name, doc)
    b, c, t, h, w = x.shape
    if c != 3:
        raise ValueError(
            f"{name} must have 3 (RGB) channels on dim 1 {doc}, got {c} (shape {tuple(x.shape)})"
        )
    if (t - 1) % 4:
        raise ValueError(f"{name} must have T = 1+4k frames (1, 5, 9, 13, 17, ...), got T={t}")
    if h % space_factor or w % space_factor:
        raise ValueError(
            f"{name} height and width must be multiples of {space_factor}, got {h}x{w}"
        )
    check_finite(x, name)
    return x


def check_latent(z, latent_dim: int, name: str = "z") -> torch.Tensor:
    doc = f"[B, {latent_dim}, T, H, W]"
    _check_tensor(z, name, doc)
    if z.shape[1] != latent_dim:
        raise ValueError(
            f"{name} must have latent_dim={latent_dim} channels on dim 1 {doc}, "
            f"got {z.shape[1]} (shape {tuple(z.shape)})"
        )
    check_finite(z, name)
    return z


def check_noise(
    noise, expected_shape: Sequence[int], name: str = "noise"
) -> Optional[torch.Tensor]:
    if noise is None:
        return None
    expected = tuple(int(s) for s in expected_shape)
    _check_tensor(noise, name, f"{list(expected)}")
    if tuple(noise.shape) != expected:
        raise ValueError(
            f"{name} must have the output's shape {list(expected)}, got {list(noise.shape)}"
        )
    check_finite(noise, name)
    return noise


def check_steps(steps, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(steps).__name__} {steps!r}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return steps


def check_chunk_frames(
    chunk_frames, multiple: int = 1, name: str = "chunk_frames"
) -> Optional[int]:
    if chunk_frames is None:
        return None
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int):
        raise TypeError(f"{name} must be an int or None, got {type(chunk_frames).__name__}")
    if chunk_frames < 1 or chunk_frames % multiple:
        what = f"a positive multiple of {multiple}" if multiple > 1 else "a positive int"
        raise ValueError(f"{name} must be {what}, got {chunk_frames}")
    return chunk_frames


def check_generator(generator, name: str = "generator") -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_attention(q, k, v, *, causal: bool, scale: Optional[float]) -> float:
    """Attention's ``q`` [S, heads, Tq, d] and ``k``/``v`` [S, heads, Tk, d] (floating point, one
    dtype and device, any strides; ``causal`` needs Tk >= Tq); returns the softmax scale,
    ``d ** -0.5`` when ``scale`` is None."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point [S, heads, T, d] tensor, got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
    s, heads, tq, d = q.shape
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != d:
        raise ValueError(
            f"k and v must be [S, heads, Tk, d] = [{s}, {heads}, Tk, {d}], got "
            f"k {list(k.shape)}, v {list(v.shape)}"
        )
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError("q, k and v must share dtype and device")
    tk = k.shape[2]
    if causal and tk < tq:
        raise ValueError(
            f"causal attention needs at least as many keys as queries, got Tq={tq}, Tk={tk}"
        )
    scale = d**-0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale
