"""CDT-small's spatial upsample, :func:`cdt_fast.functional.conv_transpose_up2x`: torch is its
only backend (cuDNN's transposed conv), so its parity is with upstream's layer, an
``nn.ConvTranspose3d`` with kernel (1, 5, 5), stride (1, 2, 2), padding (0, 2, 2) and output
padding (0, 1, 1), and every other backend's table serves it with torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cdt_fast import functional as CF
from cdt_fast.engine.dispatch import BACKENDS, implementations
from cdt_fast.reference.layers import Upsample


def _layer(c_in: int, c_out: int) -> nn.ConvTranspose3d:
    torch.manual_seed(0)
    return nn.ConvTranspose3d(
        c_in, c_out, (1, 5, 5), (1, 2, 2), (0, 2, 2), output_padding=(0, 1, 1)
    )


@pytest.mark.parametrize("shape", [(2, 5, 3, 7, 9), (1, 4, 1, 1, 1), (1, 3, 2, 6, 5)])
def test_conv_transpose_up2x_matches_upstreams_layer(shape):
    """Odd sizes, batch 2, a 1-frame chunk, a 1x1 frame: [B, C, T, H, W] -> [B, C', T, 2H, 2W]."""
    b, c, t, h, w = shape
    layer = _layer(c, 7)
    x = torch.randn(shape)
    with torch.no_grad():
        y = CF.conv_transpose_up2x(x, layer.weight, layer.bias)
        assert y.shape == (b, 7, t, 2 * h, 2 * w)
        torch.testing.assert_close(y, layer(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            CF.conv_transpose_up2x(x, layer.weight, None),
            layer(x) - layer.bias.view(1, -1, 1, 1, 1),
        )


def test_conv_transpose_up2x_is_per_frame_and_casts_its_parameters():
    """Kernel 1 in time: each output frame is its input frame's alone, so chunks compose; fp32
    parameters are cast to a 16-bit input's dtype (the op contract)."""
    layer = _layer(4, 6)
    x = torch.randn(1, 4, 5, 6, 7)
    with torch.no_grad():
        whole = CF.conv_transpose_up2x(x, layer.weight, layer.bias)
        parts = [
            CF.conv_transpose_up2x(x[:, :, i : i + 1], layer.weight, layer.bias) for i in range(5)
        ]
        assert torch.equal(torch.cat(parts, dim=2), whole)
        half = CF.conv_transpose_up2x(x.bfloat16(), layer.weight, layer.bias)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), whole, atol=0.1, rtol=0.05)


def test_reference_upsample_and_every_backend_serve_it_with_torch():
    """CDT-small's Upsample layer is this op; no compiled backend implements it, so the engine's
    table takes torch's for every backend."""
    up = Upsample(4, 6, new_upsample=False)
    x = torch.randn(1, 4, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(up(x), up.conv(x))
    for backend in BACKENDS:
        owner = implementations(backend).get("conv_transpose_up2x")
        assert owner in (None, "cdt_fast.functional"), (backend, owner)
    assert implementations("torch")["conv_transpose_up2x"] == "cdt_fast.functional"
