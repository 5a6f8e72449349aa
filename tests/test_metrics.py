"""PSNR / SSIM against hand computations of upstream's (Open-Sora-Plan's) definitions, and the
eval command end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cdt_fast.metrics import VideoMetrics, frame_psnr, frame_ssim, psnr, ssim, to_unit_frames


def test_psnr_matches_hand_computation():
    a = torch.zeros(1, 2, 3, 4, 5)
    b = a.clone()
    b[0, 0] += 0.1  # frame 0: MSE 0.01 -> 20 dB
    b[0, 1, 0, 0, 0] = 0.5  # frame 1: MSE 0.25 / 60
    expected = [20.0, 20 * math.log10(1 / math.sqrt(0.25 / 60))]
    assert torch.allclose(frame_psnr(a, b)[0], torch.tensor(expected, dtype=torch.float64))
    assert psnr(a, b) == pytest.approx(sum(expected) / 2)
    assert psnr(a, a) == 100.0  # upstream's cap for MSE < 1e-10


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Single-channel SSIM with explicit 11x11 windows over every valid position."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * px * px).sum() - mx**2
            vy = (w * py * py).sum() - my**2
            cxy = (w * px * py).sum() - mx * my
            vals.append(
                ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    return float(np.mean(vals))


def test_ssim_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 13, 17, generator=g)
    b = (a + 0.1 * torch.randn(2, 3, 13, 17, generator=g)).clamp(0, 1)
    got = frame_ssim(a, b)
    assert got.shape == (2,)
    for f in range(2):
        want = np.mean(
            [_ssim_by_hand(a[f, c].double().numpy(), b[f, c].double().numpy()) for c in range(3)]
        )
        assert got[f].item() == pytest.approx(want, abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 0.99


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_video_metrics_average_per_video_then_over_videos():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(2, 3, 5, 16, 16, generator=g) * 2 - 1
    recon = real + 0.05 * torch.randn(real.shape, generator=g)
    m = VideoMetrics()
    m.update(real[:1], recon[:1])
    m.update(real[1:], recon[1:])
    a, b = to_unit_frames(real), to_unit_frames(recon)
    assert a.shape == (2, 5, 3, 16, 16) and b.max() <= 1
    out = m.result()
    assert out["videos"] == 2
    assert out["psnr"] == pytest.approx(frame_psnr(a, b).mean().item())
    assert out["ssim"] == pytest.approx(frame_ssim(a, b).mean().item())


def test_eval_command_prints_the_table(tmp_path, capsys):
    pytest.importorskip("av")
    from cdt_fast import CDT, CDTConfig, save
    from cdt_fast.cli import main

    from .media_helpers import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", frames=6)
    torch.manual_seed(0)
    model = CDT(CDTConfig.small(context_dim=4, unet_dim=4, latent_dim=4))
    save(model, tmp_path / "m.safetensors")
    rc = main(
        [
            "eval",
            str(videos),
            "--model",
            str(tmp_path / "m.safetensors"),
            "--size",
            "16",
            "--frames",
            "5",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "1 videos, 5 frames at 16x16" in out and "PSNR" in out and "n/a" in out
