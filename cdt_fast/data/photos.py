"""Still photographs moved as video: a virtual camera pans and zooms over an image.

Real photographs carry the colour statistics, textures and edges of real footage, which the
synthetic patterns lack; moving a crop window over them gives clips with smooth, known motion.
Images come from a folder (read with PyAV) or from the photographs bundled with scikit-image
(``pip install scikit-image``, or the ``photos`` extra); nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .base import ClipDataset, check_clip_shape

__all__ = [
    "PhotoClips",
    "SKIMAGE_TRAIN",
    "SKIMAGE_HOLDOUT",
    "load_image_folder",
    "load_skimage_photos",
]

# scikit-image's bundled files (not its download-on-demand ones). The held-out names are kept for
# evaluation and never used for training; the two motorcycle views are a stereo pair, so both sit
# on the same side of the split.
SKIMAGE_TRAIN = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "text.png",
)
SKIMAGE_HOLDOUT = ("coffee.png", "rocket.jpg")

PathLike = Union[str, os.PathLike]


def _as_rgb_tensor(array) -> torch.Tensor:
    """uint8 array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> uint8 tensor [3, H, W]."""
    image = torch.as_tensor(array)
    if image.dtype == torch.bool:
        image = image.to(torch.uint8) * 255
    if image.dtype != torch.uint8:
        raise ValueError(f"expected 8-bit images, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an [H, W(, 1|3|4)] image, got shape {tuple(image.shape)}")
    image = image[..., :3] if image.shape[-1] == 4 else image.expand(-1, -1, 3)
    return image.permute(2, 0, 1).contiguous()


def load_skimage_photos(names: Sequence[str] = SKIMAGE_TRAIN) -> List[torch.Tensor]:
    """The named files bundled in ``skimage/data`` as uint8 [3, H, W] tensors (grey images
    repeated over RGB). Raises ImportError naming the extra when scikit-image is missing."""
    try:
        import skimage.data
        import skimage.io
    except ImportError:
        raise ImportError(
            "the bundled photographs need scikit-image: pip install scikit-image "
            "(or pip install cdt_fast[photos]), or pass a folder of images"
        ) from None
    root = Path(skimage.data.__file__).parent
    images = []
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"scikit-image does not bundle {name!r} (looked in {root})")
        images.append(_as_rgb_tensor(skimage.io.imread(str(path))))
    return images


def load_image_folder(root: PathLike) -> List[torch.Tensor]:
    """Every readable image under ``root`` (recursively), uint8 [3, H, W]; unreadable ones are
    skipped with one warning that counts them."""
    from .video import IMAGE_SUFFIXES, _list_files, read_frames

    images, skipped = [], 0
    for path in _list_files(root, IMAGE_SUFFIXES, "root"):
        try:
            images.append(read_frames(path, [0])[0].permute(2, 0, 1).contiguous())
        except Exception:  # PyAV raises many error types for broken files
            skipped += 1
    if skipped:
        warnings.warn(
            f"load_image_folder({str(root)!r}): skipped {skipped} of {skipped + len(images)} "
            "images (unreadable)",
            stacklevel=2,
        )
    if not images:
        raise ValueError(f"no readable image in {str(root)!r}")
    return images


class PhotoClips(ClipDataset):
    """``length`` clips of ``frames`` frames at ``size`` made by moving a camera over ``images``
    (uint8 [3, H, W] tensors, at least 8 px a side). Clip ``i`` shows image ``i % len(images)``.

    Per clip: the image is scaled (antialiased) so that the view covers between its whole short
    side and a 1:1 crop (log-uniform), optionally mirrored, then a window of the output size pans
    at up to ``max_pan`` of the output width per frame and zooms by up to ``max_zoom`` per frame
    (bilinear sampling, reflected at the borders). With a ``generator`` the choices come from it
    (training); without, from ``(seed, index)`` (evaluation: the same clip every time).
    Values in [-1, 1], shape [3, frames, H, W].
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        frames: int = 9,
        size=64,
        length: int = 100_000,
        seed: int = 0,
        max_pan: float = 0.06,
        max_zoom: float = 0.03,
    ):
        self.height, self.width = check_clip_shape(frames, size)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        if not images:
            raise ValueError("images must hold at least one image")
        for k, image in enumerate(images):
            if (
                not isinstance(image, torch.Tensor)
                or image.dtype != torch.uint8
                or image.ndim != 3
                or image.shape[0] != 3
                or min(image.shape[1:]) < 8
            ):
                raise ValueError(
                    f"images[{k}] must be a uint8 [3, H, W] tensor with H, W >= 8, got "
                    f"{getattr(image, 'dtype', type(image).__name__)} "
                    f"{tuple(getattr(image, 'shape', ()))}"
                )
        if not (0 <= max_pan <= 1 and 0 <= max_zoom < 0.5):
            raise ValueError(
                f"max_pan must be in [0, 1] and max_zoom in [0, 0.5), got {max_pan}, {max_zoom}"
            )
        self.images = list(images)
        self.frames, self.length, self.seed = frames, length, seed
        self.max_pan, self.max_zoom = max_pan, max_zoom

    def __len__(self) -> int:
        return self.length

    def _view(self, image: torch.Tensor, g: torch.Generator) -> Tuple[torch.Tensor, float]:
        """The image scaled for this clip, as float [1, 3, h, w] in [-1, 1]."""
        _, ih, iw = image.shape
        out = max(self.height, self.width)
        short = min(ih, iw)
        # Log-uniform between "the output window spans the short side" and "1:1 pixels".
        lo, hi = math.log(out / short), 0.0
        scale = math.exp(lo + (hi - lo) * float(torch.rand(1, generator=g))) if lo < hi else 1.0
        scale = max(scale, out / short)
        x = image[None].float().div_(127.5).sub_(1.0)
        rh, rw = max(self.height, round(ih * scale)), max(self.width, round(iw * scale))
        if (rh, rw) != (ih, iw):
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp_(-1, 1)
        if bool(torch.rand(1, generator=g) < 0.5):
            x = x.flip(-1)
        return x

    def clip(self, index: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        g = generator
        if g is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        x = self._view(self.images[index % len(self.images)], g)
        _, _, rh, rw = x.shape

        def uniform(lo, hi):
            return lo + (hi - lo) * float(torch.rand(1, generator=g))

        t = torch.arange(self.frames, dtype=torch.float32)
        zoom = torch.exp(uniform(-self.max_zoom, self.max_zoom) * t)  # >1: zoom in
        vx = uniform(-self.max_pan, self.max_pan) * self.width
        vy = uniform(-self.max_pan, self.max_pan) * self.width
        # Window centre path in pixels of the scaled image (from its top-left edge), kept inside
        # it where it fits.
        span_x = self.width / 2 + abs(vx) * (self.frames - 1) / 2
        span_y = self.height / 2 + abs(vy) * (self.frames - 1) / 2
        cx0 = uniform(min(span_x, rw / 2), max(rw - span_x, rw / 2))
        cy0 = uniform(min(span_y, rh / 2), max(rh - span_y, rh / 2))
        mid = (self.frames - 1) / 2
        cx = cx0 + vx * (t - mid)
        cy = cy0 + vy * (t - mid)
        # Output pixel offsets from the window centre, in the scaled image's pixels.
        ox = torch.arange(self.width, dtype=torch.float32) - (self.width - 1) / 2
        oy = torch.arange(self.height, dtype=torch.float32) - (self.height - 1) / 2
        px = cx[:, None, None] + ox[None, None, :] / zoom[:, None, None]
        py = cy[:, None, None] + oy[None, :, None] / zoom[:, None, None]
        # px, py measure from the image's left/top edge (pixel k spans [k, k + 1]), which is
        # what align_corners=False maps to [-1, 1].
        grid = torch.stack(
            [
                (2 * px / rw - 1).expand(-1, self.height, -1),
                (2 * py / rh - 1).expand(-1, -1, self.width),
            ],
            dim=-1,
        )
        frames = F.grid_sample(
            x.expand(self.frames, -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="reflection",
            align_corners=False,
        )
        return frames.transpose(0, 1).clamp_(-1, 1).contiguous()


class ConcatClips(ClipDataset):
    """Several clip datasets of the same clip shape, one after the other."""

    def __init__(self, datasets: Sequence[ClipDataset]):
        if not datasets:
            raise ValueError("datasets must not be empty")
        frames = {d.frames for d in datasets}
        if len(frames) != 1:
            raise ValueError(f"datasets must share one clip length, got frames {sorted(frames)}")
        self.datasets, self.frames = list(datasets), frames.pop()
        self.offsets = [0]
        for d in self.datasets:
            self.offsets.append(self.offsets[-1] + len(d))

    def __len__(self) -> int:
        return self.offsets[-1]

    def clip(self, index: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        for k, d in enumerate(self.datasets):
            if index < self.offsets[k + 1]:
                return d.clip(index - self.offsets[k], generator)
        raise AssertionError("unreachable")
