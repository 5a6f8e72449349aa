"""benchmarks/flops.py against an independent aten-level count, and the peak tables of
benchmarks/hardware.py behind the % of peak columns."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cdt_fast
from benchmarks import flops, hardware
from benchmarks.rows import pct_of_peak

from .conftest import tiny_config


@pytest.mark.parametrize("preset", ["base", "small"])
def test_flop_model_equals_aten_count(preset):
    # Hooks on our layers vs FlopCounterMode on aten ops (convolution, addmm, bmm): independent.
    # A round trip runs every layer of both networks; odd latent sizes (3x5) exercise the U-Net's
    # crop path, steps=2 the DDIM loop (CDT-small only, to keep the test short).
    config = tiny_config(preset)
    steps = 2 if preset == "small" else 1
    ours = flops.count_macs(config, "roundtrip", 9, 24, 40, steps=steps)
    assert ours.macs > 0 and ours.flops == 2 * ours.macs
    assert ours.macs == flops.aten_macs(config, "roundtrip", 9, 24, 40, steps=steps)
    if preset == "small":
        parts = [
            flops.count_macs(config, op, 9, 24, 40, steps=2).macs for op in ("encode", "decode")
        ]
        assert sum(parts) == ours.macs


def test_flop_model_covers_every_contracting_layer_kind():
    report_ = flops.count_macs(tiny_config("small"), "roundtrip", 9, 32, 32)
    assert set(report_.by_kind()) == {
        "CausalConv3d",
        "Upsample",
        "LinearAttention",
        "TimeDownsample",
        "TimeUpsample",
        "Linear",
    }
    assert set(report_.by_network()) == {"context_fn", "denoise_fn"}
    base = flops.count_macs(tiny_config("base"), "decode", 9, 32, 32).by_kind()
    assert "Upsample" not in base  # nearest + conv: counted once, by the inner conv


def test_flop_model_first_conv_by_hand():
    config = tiny_config("small")
    frames, h, w = 5, 16, 24
    layers = {l.name: l.macs for l in flops.count_macs(config, "encode", frames, h, w).layers}
    first = "model.context_fn.enc.0.0.block1.block.0"  # (3,7,7) causal conv, 3 -> dim channels
    assert layers[first] == (config.context_dim * frames * h * w) * (3 * 3 * 7 * 7)


def test_flop_model_is_chunk_invariant_on_a_real_decode():
    # The model counts one whole-clip pass; the tokenizer's real 2-chunk decode loop does the same
    # conv and attention work. Only the time-MLP linears run once per chunk (the model counts them
    # once per clip). Sizes keep every U-Net level above 1x1, where einsum stops using bmm and
    # FlopCounterMode stops counting the attention matmuls. On meta tensors for speed, so through
    # the loop behind ``decode`` (``decode`` itself checks values, which meta tensors lack).
    with torch.device("meta"):
        model = cdt_fast.CDT(tiny_config("small")).eval()
    z = torch.empty(1, model.config.latent_dim, 2, 2, 3, device="meta")
    noise = torch.empty(model.output_shape(z.shape), device="meta")
    with FlopCounterMode(display=False) as counter:
        chunks = list(model._decode_stream(z, 1, noise, None, 1))
    assert len(chunks) == 2
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = sum(n for op, n in per_op.items() if "addmm" in op or op.endswith(".mm"))
    ours = flops.count_macs(model.config, "decode", 5, 16, 24)
    assert sum(per_op.values()) - linear == 2 * (ours.macs - ours.by_kind()["Linear"])
    assert 0 < linear == 2 * 2 * ours.by_kind()["Linear"]


@pytest.mark.parametrize("bad", [dict(frames=6), dict(height=20), dict(op="train"), dict(steps=0)])
def test_flop_model_rejects_bad_shapes(bad):
    kwargs = dict(op="decode", frames=9, height=16, width=16)
    kwargs.update(bad)
    steps = kwargs.pop("steps", None)
    with pytest.raises(ValueError, match=next(iter(bad))):
        flops.count_macs(tiny_config("small"), kwargs.pop("op"), **kwargs, steps=steps)


def test_peak_table_lookup_and_pct_of_peak():
    assert hardware.peak_tflops("NVIDIA H100 80GB HBM3")[0] == "NVIDIA H100 SXM"
    assert hardware.peak_tflops("NVIDIA H100 PCIe")[0] == "NVIDIA H100 PCIe"
    assert hardware.peak_tflops("NVIDIA A100-SXM4-80GB")[1]["bf16"] == 312.0
    assert hardware.peak_tflops("NVIDIA L40S")[0] == "NVIDIA L40S"
    assert hardware.peak_tflops("NVIDIA L4")[0] == "NVIDIA L4"
    assert hardware.peak_tflops("Some Future GPU") == (None, None)
    header = {"gpu_name": "NVIDIA H100 80GB HBM3", "torch_settings": {"cudnn_allow_tf32": True}}
    pct, basis = pct_of_peak(494.7, header, "bf16")
    assert pct == pytest.approx(50.0) and "bf16" in basis
    pct, basis = pct_of_peak(494.7, header, "fp32")
    assert pct == pytest.approx(100.0) and "tf32" in basis
    assert pct_of_peak(1.0, {"gpu_name": None}, "fp32")[0] is None
