"""fp16/bf16 models run, keep upstream's fp32 islands, and stay close to fp32."""

from __future__ import annotations

import copy

import pytest
import torch

from cdt_fast import CDT, accelerate, randomize_

from .bf16_emulation import emulate
from .conftest import tiny_config, upstream_cdt
from .helpers import assert_bf16_close


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_fp32(preset, upstream_io, dtype):
    """bf16: as close to upstream's fp32 tensors as the bf16 emulation (tests/bf16_emulation.py)
    of the same runs, within the derived multiples (tests/helpers.py); fp16: within 5 % of the
    largest output."""
    model = upstream_cdt(preset)
    if dtype == torch.bfloat16:
        emulated = emulate(accelerate(model, backend="torch", dtype=dtype))
    model = model.to(dtype)
    assert model.dtype == dtype
    x, z_ref = upstream_io[f"{preset}.x"], upstream_io[f"{preset}.z"]
    noise, y_ref = upstream_io[f"{preset}.s1.noise"], upstream_io[f"{preset}.s1.y"]
    z, posterior = model.encode(x, return_posterior=True)
    assert z.dtype == torch.float32 and posterior.parameters.dtype == torch.float32  # as upstream
    y = model.decode(z_ref, noise=noise)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    if dtype == torch.bfloat16:
        assert_bf16_close(z, z_ref, emulated.encode(x))
        assert_bf16_close(y, y_ref, emulated.decode(z_ref, noise=noise))
    else:
        assert (z - z_ref).abs().max() / z_ref.abs().max() < 0.05
        assert (y - y_ref).abs().max() / y_ref.abs().max() < 0.05


def test_fp32_islands_compute_in_fp32():
    """Upstream runs quant/post-quant convs and the time MLP in fp32 even in a half model."""
    model = CDT(tiny_config("small")).half().eval()
    seen = {}

    def hook(name):
        def record(module, inputs, output):
            seen[name] = output.dtype

        return record

    ctx = model.context_model
    ctx.quant_conv.register_forward_hook(hook("quant_conv"))
    ctx.post_quant_conv.register_forward_hook(hook("post_quant_conv"))
    ctx.quant_conv_res[0].register_forward_hook(hook("quant_conv_res"))
    model.unet.time_mlp.register_forward_hook(hook("time_mlp"))
    ctx.enc[0][0].register_forward_hook(hook("encoder"))
    model.unet.final_conv[1].register_forward_hook(hook("unet"))
    z = model.encode(torch.zeros(1, 3, 5, 16, 16))
    model.decode(z)
    assert seen == {
        "quant_conv": torch.float32,
        "post_quant_conv": torch.float32,
        "quant_conv_res": torch.float32,
        "time_mlp": torch.float32,
        "encoder": torch.float16,
        "unet": torch.float16,
    }


def test_compute_dtype_is_independent_of_the_storage_dtype():
    """Weights stored in one dtype compute in ``compute_dtype`` (every layer casts its parameters
    to its input's dtype): fp32 weights computing in float64 give the float64 model's numbers."""
    model = randomize_(CDT(tiny_config("small")), seed=3).eval()
    wide = copy.deepcopy(model).double()
    model.compute_dtype = torch.float64
    assert model.dtype == torch.float64 and model.unet.dtype == torch.float64
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    x = torch.rand(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = model.encode(x)
    assert torch.equal(z, wide.encode(x))
    noise = torch.randn(model.output_shape(z.shape), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.decode(z, noise=noise), wide.decode(z, noise=noise))
    model.compute_dtype = None
    assert model.dtype == torch.float32
    with pytest.raises(TypeError, match="compute_dtype"):
        model.compute_dtype = "float64"
