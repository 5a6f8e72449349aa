"""A clip as CDT takes it: frames as tensors, padded to ``1+4k`` frames and multiples of 8."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Optional, Tuple

import numpy as np

from .errors import VideoError

if TYPE_CHECKING:
    import torch


def frames_to_tensor(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [N, h, w, 3] -> float32 [1, 3, N, height, width] in [-1, 1], padded at the bottom and
    right by repeating the last row and column."""
    import torch

    n, h, w, _ = frames.shape
    if (h, w) != (height, width):
        frames = np.pad(frames, ((0, 0), (0, height - h), (0, width - w), (0, 0)), mode="edge")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
    return x.float().div_(127.5).sub_(1.0)


def tensor_to_frames(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """float [1, 3, N, H, W] in [-1, 1] -> uint8 [N, height, width, 3], cropped at the top left."""
    import torch

    x = x[0, :, :, :height, :width].detach().float().cpu()
    x = x.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


class PaddedClip:
    """A video as a lazily-read tensor of shape [1, 3, 1+4k, H8, W8] in [-1, 1].

    Frames are padded to ``1 + time_factor*k`` by repeating the last frame and to multiples of
    ``space_factor`` by repeating the last row/column. Indexing ``clip[:, :, a:b]`` decodes frames
    [a, b) and must proceed front to back (``a`` = the previous ``b``): that is how chunked encoders
    walk a clip. ``on_frames(n)`` is called with each count of real frames read (progress bars).
    """

    def __init__(
        self,
        frames: Iterable[np.ndarray],
        count: int,
        height: int,
        width: int,
        space_factor: int = 8,
        time_factor: int = 4,
        on_frames: Optional[Callable[[int], None]] = None,
    ):
        if count < 1:
            raise VideoError("a clip needs at least one frame")
        self.frames, self.height, self.width = count, height, width
        padded_t = 1 + -(-(count - 1) // time_factor) * time_factor
        self.padded = (
            padded_t,
            -(-height // space_factor) * space_factor,
            -(-width // space_factor) * space_factor,
        )
        self._source = iter(frames)
        self._next = 0
        self._last: Optional[np.ndarray] = None
        self._on_frames = on_frames

    @property
    def shape(self) -> Tuple[int, int, int, int, int]:
        return (1, 3) + self.padded

    @property
    def padding(self) -> dict:
        """Frames added at the end, rows at the bottom, columns at the right."""
        return {
            "frames": self.padded[0] - self.frames,
            "bottom": self.padded[1] - self.height,
            "right": self.padded[2] - self.width,
        }

    def __len__(self) -> int:
        return 1

    def _read(self, n: int) -> np.ndarray:
        out = []
        for _ in range(n):
            if self._next < self.frames:
                frame = next(self._source, None)
                if frame is None:
                    raise VideoError(f"the video ended after {self._next} of {self.frames} frames")
                if frame.shape[:2] != (self.height, self.width):
                    raise VideoError(
                        f"frame {self._next} is {frame.shape[1]}x{frame.shape[0]}, "
                        f"expected {self.width}x{self.height}"
                    )
                self._last = frame
                if self._on_frames is not None:
                    self._on_frames(1)
            out.append(self._last)
            self._next += 1
        return np.stack(out)

    def __getitem__(self, index) -> torch.Tensor:
        if not (
            isinstance(index, tuple)
            and len(index) == 3
            and all(i == slice(None) for i in index[:2])
            and isinstance(index[2], slice)
        ):
            raise TypeError("PaddedClip supports only clip[:, :, start:stop]")
        start, stop, step = index[2].indices(self.padded[0])
        if step != 1 or start != self._next:
            raise ValueError(
                f"PaddedClip is read front to back: next frame is {self._next}, "
                f"asked for [{start}:{stop}]"
            )
        return frames_to_tensor(self._read(stop - start), self.padded[1], self.padded[2])

    def read_all(self) -> torch.Tensor:
        """The whole padded clip as one tensor (for encoders that take no chunks)."""
        return self[:, :, self._next : self.padded[0]]

    def finish(self) -> None:
        """Drain the source so that its frame-count check runs."""
        for _ in self._source:
            raise VideoError(
                f"the video has more than the {self.frames} frames its container lists"
            )
