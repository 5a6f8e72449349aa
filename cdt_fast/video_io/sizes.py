"""``--size``: the frame size a clip is read at."""

from __future__ import annotations

from typing import Optional, Tuple


def parse_size(text: Optional[str], height: int, width: int) -> Tuple[int, int]:
    """``--size``: None keeps (height, width); ``"S"`` scales the shorter side to S keeping the
    aspect ratio, both sides rounded to even numbers (4:2:0 video needs them); ``"HxW"`` is
    exact. Raises ValueError naming ``--size`` for anything else, before any frame is read."""
    if text is None:
        return height, width
    h, w = check_size(text)
    if w == 0:  # "S"
        scale = h / min(height, width)
        h, w = (max(2 * round(side * scale / 2), 2) for side in (height, width))
    return h, w


def check_size(text: str) -> Tuple[int, int]:
    """Validate a ``--size`` text alone: (H, W) for ``"HxW"``, (S, 0) for ``"S"``."""
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"--size must be an int (shorter side) or HxW, got {text!r}")
    if min(parts) < 1:
        raise ValueError(f"--size must be positive, got {text!r}")
    return (parts[0], 0) if len(parts) == 1 else (parts[0], parts[1])
