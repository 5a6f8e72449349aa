"""Photographs moved as video: deterministic clips that move, grey/RGBA images, folder and
scikit-image sources, source mixtures, and the held-out photo evaluation's colour error."""

from __future__ import annotations

import pytest
import torch

from cdt_fast.data import ConcatClips, PhotoClips, SyntheticVideos, open_dataset
from cdt_fast.data.photos import SKIMAGE_HOLDOUT, SKIMAGE_TRAIN, _as_rgb_tensor
from cdt_fast.train.photo_eval import photo_eval


def _photo(h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth colour ramps plus texture: something a crop can be told apart by
    ys = torch.linspace(0, 1, h).reshape(h, 1)
    xs = torch.linspace(0, 1, w).reshape(1, w)
    base = torch.stack([ys.expand(h, w), xs.expand(h, w), (ys * xs)])
    noise = torch.rand(3, h, w, generator=g) * 0.3
    return ((base * 0.7 + noise).clamp(0, 1) * 255).to(torch.uint8)


def test_clips_are_deterministic_in_range_and_move():
    data = PhotoClips([_photo(), _photo(seed=1)], frames=5, size=16, length=10, seed=3)
    clip = data.clip(4)
    assert clip.shape == (3, 5, 16, 16) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    assert torch.equal(clip, PhotoClips(data.images, frames=5, size=16, length=10, seed=3).clip(4))
    assert not torch.equal(clip, data.clip(5))
    assert (clip[:, 1:] - clip[:, :-1]).abs().mean() > 1e-3  # the camera moves
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(data.clip(0, g1), data.clip(0, g2))
    assert not torch.equal(data.clip(0, torch.Generator().manual_seed(2)), data.clip(0, g2))


def test_still_camera_reproduces_the_image():
    image = _photo(16, 16)
    data = PhotoClips([image], frames=1, size=16, length=1, max_pan=0.0, max_zoom=0.0)
    clip = data.clip(0)
    expected = image.float() / 127.5 - 1
    # 1:1 scale, no motion: the frame is the image, possibly mirrored
    assert (
        min((clip[:, 0] - expected).abs().max(), (clip[:, 0] - expected.flip(-1)).abs().max())
        < 1e-5
    )


def test_grey_and_rgba_images_become_rgb():
    grey = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    assert torch.equal(_as_rgb_tensor(grey.numpy()), grey.expand(3, 3, 4))
    rgba = torch.zeros(3, 4, 4, dtype=torch.uint8)
    rgba[..., 3] = 255
    assert _as_rgb_tensor(rgba.numpy()).shape == (3, 3, 4)
    with pytest.raises(ValueError, match="8-bit"):
        _as_rgb_tensor(torch.zeros(3, 4, dtype=torch.float32).numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(images=[]), "images"),
        (dict(images=[torch.zeros(3, 4, 4, dtype=torch.uint8)]), r"images\[0\]"),
        (dict(images=[torch.zeros(3, 16, 16)]), r"images\[0\]"),
        (dict(length=0), "length"),
        (dict(frames=4), "frames"),
        (dict(max_zoom=0.7), "max_zoom"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = dict(images=[_photo()], frames=5, size=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PhotoClips(**args)


def test_folder_source_and_mixtures(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    pytest.importorskip("av")
    for i in range(2):
        pil.fromarray(_photo(seed=i).permute(1, 2, 0).numpy()).save(tmp_path / f"p{i}.png")
    data = open_dataset(f"photos:{tmp_path}", 5, 16)
    assert isinstance(data, PhotoClips) and len(data.images) == 2
    assert data.clip(0).shape == (3, 5, 16, 16)
    mixed = open_dataset(f"photos:{tmp_path}+synthetic", 5, 16)
    assert isinstance(mixed, ConcatClips) and len(mixed) == 200_000
    assert torch.equal(mixed.clip(100_000), SyntheticVideos(frames=5, size=16).clip(0))
    with pytest.raises(ValueError, match="photos:"):
        open_dataset(str(tmp_path), 5, 16)  # an image folder as video needs photos:
    with pytest.raises(ValueError, match="empty part"):
        open_dataset("photos+", 5, 16)
    with pytest.raises(ValueError, match="clip length"):
        ConcatClips([SyntheticVideos(frames=5, size=16), SyntheticVideos(frames=9, size=16)])


def test_skimage_photos_split():
    pytest.importorskip("skimage")
    assert not set(SKIMAGE_TRAIN) & set(SKIMAGE_HOLDOUT)
    data = open_dataset("photos", 5, 32)
    assert len(data.images) == len(SKIMAGE_TRAIN)
    assert all(im.dtype == torch.uint8 and im.shape[0] == 3 for im in data.images)


def test_photo_eval_reports_colour_error():
    class Identity:
        def encode(self, x):
            return x

        def decode(self, z, steps=1, generator=None):
            return z

    class Pink(Identity):
        def decode(self, z, steps=1, generator=None):
            return (z + torch.tensor([0.2, 0.0, -0.1]).reshape(1, 3, 1, 1, 1)).clamp(-1, 1)

    images = [_photo(), _photo(seed=1)]
    out = photo_eval(
        {"same": Identity(), "pink": Pink()}, images, frames=5, size=16, clips_per_image=2
    )
    assert out["same"]["psnr"] == 100 and out["same"]["clips"] == 4
    assert out["same"]["color_error"] == [0.0, 0.0, 0.0]
    red, green, blue = out["pink"]["color_error"]
    assert 20 < red <= 25.5 and green == 0.0 and -12.75 <= blue < -10
    assert out["pink"]["abs_color_error"][0] == pytest.approx(red)


def test_bicubic_yardstick_is_a_per_frame_round_trip():
    from cdt_fast.train.photo_eval import BicubicRoundTrip, main

    x = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    yard = BicubicRoundTrip(4)
    z = yard.encode(x)
    assert z.shape == (2, 3, 5, 4, 6)
    frame = x[1, :, 3][None]
    small = torch.nn.functional.interpolate(frame, size=(4, 6), mode="bicubic", antialias=True)
    assert torch.allclose(z[1, :, 3], small[0], atol=1e-6)
    up = torch.nn.functional.interpolate(small, size=(16, 24), mode="bicubic").clamp(-1, 1)
    assert torch.allclose(yard.decode(z)[1, :, 3], up[0], atol=1e-6)
    assert torch.equal(BicubicRoundTrip(1).decode(BicubicRoundTrip(1).encode(x)), x)
    with pytest.raises(ValueError, match="multiples of 5"):
        BicubicRoundTrip(5).encode(x)
    with pytest.raises(ValueError, match="BicubicRoundTrip.factor"):
        BicubicRoundTrip(0)
    with pytest.raises(SystemExit):
        main(["bicubic:x"])
