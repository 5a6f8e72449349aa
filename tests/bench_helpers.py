"""What the benchmark tests share: stand-ins for the engine's backend list and diffusers' Wan VAE,
a synthetic timed row, and running a ``main`` with its stdout captured."""

from __future__ import annotations

import contextlib
import io
import types

import torch
from torch import nn


class FakeWanVAE(nn.Module):
    """Stands in for diffusers' AutoencoderKLWan: latent [B,16,T,h,w] -> video [B,3,1+4(T-1),8h,8w]."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv3d(16, 3, 1)
        self.config = types.SimpleNamespace(z_dim=16)

    @property
    def dtype(self):
        return self.proj.weight.dtype

    def decode(self, z):
        y = self.proj(z)
        y = torch.nn.functional.interpolate(y, scale_factor=(4, 8, 8))[:, :, 3:]
        return types.SimpleNamespace(sample=y)


def fake_backends():
    return {
        "torch": types.SimpleNamespace(available=True, reason=""),
        "triton": types.SimpleNamespace(available=False, reason="needs a CUDA device"),
    }


def capture(fn):
    """``fn()``'s stdout; ``fn`` must return 0."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert fn() == 0
    return buf.getvalue()


def timed_row(impl, lo, mid, hi, model="small"):
    """A CPU decode row of CDT-small at 9x64x64 whose latency spread is lo-hi, median mid."""
    return dict(
        model=model,
        impl=impl,
        op="decode",
        frames=9,
        height=64,
        width=64,
        dtype="fp32",
        suite="main",
        device="cpu",
        latency_ms_p20=lo,
        latency_ms_p50=mid,
        latency_ms_p80=hi,
        latency_ms_min=lo,
        latency_ms_max=hi,
        repeats=5,
        frames_per_s=9e3 / mid,
        peak_mem_bytes=2,
        peak_mem_delta_bytes=1,
    )
