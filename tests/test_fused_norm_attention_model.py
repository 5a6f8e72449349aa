"""The whole tiny CDT (both presets) with every channel_norm and linear_attention call on the
fused Triton kernels still matches the upstream fixtures (interpreter on CPU: slow)."""

import copy
import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first `import triton` of the process
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import cdt_fast.functional as CF  # noqa: E402
from cdt_fast.kernels.channel_norm import channel_norm  # noqa: E402
from cdt_fast.kernels.linear_attention import linear_attention  # noqa: E402

TOL = 1e-4  # the upstream-parity tolerance of the reference model


@pytest.mark.slow
def test_encode_decode_match_upstream_on_fused_ops(
    monkeypatch, preset, upstream_model, upstream_io
):
    # The reference layers call these through the module, so this swaps them model-wide.
    monkeypatch.setattr(CF, "channel_norm", channel_norm)
    monkeypatch.setattr(CF, "linear_attention", linear_attention)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # The session fixture is shared: move a copy.
    model = copy.deepcopy(upstream_model).to(device) if device == "cuda" else upstream_model
    with torch.no_grad():
        z = model.encode(upstream_io[f"{preset}.x"].to(device))
        y = model.decode(
            upstream_io[f"{preset}.z"].to(device),
            steps=1,
            noise=upstream_io[f"{preset}.s1.noise"].to(device),
        )
    torch.testing.assert_close(z.cpu(), upstream_io[f"{preset}.z"], rtol=0, atol=TOL)
    torch.testing.assert_close(y.cpu(), upstream_io[f"{preset}.s1.y"], rtol=0, atol=TOL)
