"""The sampler's elementwise kernels: the DDIM update and the uint8 frames."""

import pytest
import torch

from cdt_fast import functional as CF
from cdt_fast.reference.diffusion import DDIMSchedule

triton = pytest.importorskip("triton")
from cdt_fast.kernels.denoise import ddim_update, to_uint8_frames

from .helpers import DEVICE

SCHEDULE = DDIMSchedule.create(8192, 4)


def test_clamp_and_uint8_rounding_are_exact():
    # With (a, b, c, d) = (1, 1, 0, 1) and x0 = 2, x_next = x_t - x0: clamping x0 (to 1) is
    # visible, and the clamped results sweep exact uint8 rounding ties (k + 0.5 after scaling).
    n = 64
    k = torch.arange(3 * n, device=DEVICE, dtype=torch.float32).reshape(1, 3, 1, 4, n // 4)
    x_t = 1.0 + (2 * (k + 0.5) / 255 - 1)
    x_t[0, 0, 0, 0, :3] = torch.tensor([-5.0, 5.0, 0.0])
    x0 = torch.full_like(x_t, 2.0)
    coef = (1.0, 1.0, 0.0, 1.0)
    for clamp in (False, True):
        x_next = ddim_update(x_t, x0, coef, clamp=clamp)
        expected = CF.ddim_update(x_t, x0, coef, clamp=clamp)
        assert torch.equal(x_next, expected)
        assert torch.equal(to_uint8_frames(x_next), CF.to_uint8_frames(expected))


@pytest.mark.parametrize("clamp", [False, True])
def test_ddim_update_matches_functional(clamp):
    x_t = torch.randn(2, 3, 2, 5, 7, device=DEVICE).to(memory_format=torch.channels_last_3d)
    x0 = (1.5 * torch.randn(2, 3, 2, 5, 7, device=DEVICE)).half()  # a half-precision model's x0
    for step in (0, 2):
        floats = [float(v) for v in SCHEDULE.coefficients(step)]
        on_device = tuple(v.to(DEVICE) for v in SCHEDULE.coefficients(step))
        ref = CF.ddim_update(x_t, x0, floats, clamp=clamp)
        for coef in (floats, on_device):
            got = ddim_update(x_t, x0, coef, clamp=clamp)
            assert got.dtype == torch.float32
            assert got.is_contiguous(memory_format=torch.channels_last_3d)
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_to_uint8_frames_matches_functional_exactly(dtype):
    x = torch.cat(
        [
            torch.linspace(-1.3, 1.3, 105, device=DEVICE),
            2 * (torch.arange(105, device=DEVICE) + 0.5) / 255 - 1,
        ]
    )  # ties, clamping
    x = x.reshape(1, 3, 2, 5, 7).to(dtype).transpose(3, 4)  # strided input
    assert torch.equal(to_uint8_frames(x), CF.to_uint8_frames(x))
    out = torch.empty(1, 2, 7, 5, 3, dtype=torch.uint8, device=DEVICE)
    assert to_uint8_frames(x, out=out) is out
