"""What every Triton launcher does before its kernel runs: the dtypes it accepts (the kernels store
fp16, bf16 and fp32 and compute in fp32), and the device it launches on."""

from __future__ import annotations

import contextlib
from types import MappingProxyType

import pytest
import torch

pytest.importorskip("triton")
from cdt_fast.kernels import _common
from cdt_fast.kernels.causal_conv3d import causal_conv3d
from cdt_fast.kernels.channel_norm import channel_norm
from cdt_fast.kernels.denoise import ddim_update, to_uint8_frames
from cdt_fast.kernels.linear_attention import linear_attention_block
from cdt_fast.kernels.temporal_attention import temporal_attention
from cdt_fast.kernels.time_resample import time_downsample, time_upsample

from .helpers import DEVICE, INTERPRETED


def _launches(dtype):
    """name -> a call of each launcher that stores ``dtype``, on tiny inputs."""
    x = torch.randn(1, 4, 2, 3, 5, device=DEVICE, dtype=dtype)
    c = torch.ones(4, device=DEVICE, dtype=dtype)
    q = torch.randn(3, 2, 4, 8, device=DEVICE, dtype=dtype)

    def rand(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=dtype)

    return {
        "causal_conv3d": lambda: causal_conv3d(x, rand(4, 4, 1, 3, 3), space_padding=(1, 1)),
        "channel_norm": lambda: channel_norm(x, c, c),
        "linear_attention": lambda: linear_attention_block(
            x, c, c, rand(24, 4), rand(4, 8), None, heads=2
        ),
        "time_downsample": lambda: time_downsample(x, rand(4, 4, 3), None),
        "time_upsample": lambda: time_upsample(x, rand(8, 4, 1), None, drop_first=True),
        "temporal_attention": lambda: temporal_attention(q, q, q),
    }


@pytest.mark.parametrize("name", sorted(_launches(torch.float32)))
def test_float64_is_refused_naming_the_argument(name):
    """A float64 call raises a TypeError naming its tensor: the kernels would compute it in fp32
    (less than asked for), and on a GPU the ``tl.dot`` of float64 operands beside an fp32
    accumulator does not even compile. The same call in fp32 runs."""
    assert _launches(torch.float32)[name]().dtype == torch.float32
    arg = "q" if name == "temporal_attention" else "x"
    with pytest.raises(TypeError, match=f"{arg} must be float16, bfloat16 or float32"):
        _launches(torch.float64)[name]()


def _activation_launches():
    """name -> a call of each [B, C, T, H, W] launcher on a given x of 4 channels."""
    c = torch.ones(4, device=DEVICE)

    def rand(*shape):
        return torch.randn(*shape, device=DEVICE)

    return {
        "causal_conv3d": lambda x: causal_conv3d(x, rand(4, 4, 1, 3, 3), space_padding=(1, 1)),
        "channel_norm": lambda x: channel_norm(x, c, c),
        "linear_attention": lambda x: linear_attention_block(
            x, c, c, rand(24, 4), rand(4, 8), None, heads=2
        ),
        "time_downsample": lambda x: time_downsample(x, rand(4, 4, 3), None),
        "time_upsample": lambda x: time_upsample(x, rand(8, 4, 1), None, drop_first=True),
    }


@pytest.mark.parametrize("name", sorted(_activation_launches()))
def test_an_activation_that_is_not_a_5d_tensor_is_refused_naming_x(name):
    """Every [B, C, T, H, W] launcher checks x alike (kernels._common.check_activation): a
    non-tensor raises a TypeError, another rank a ValueError, each naming x and the layout."""
    launch = _activation_launches()[name]
    x = torch.randn(1, 4, 2, 3, 5, device=DEVICE)
    assert launch(x).dim() == 5
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor \[B, C, T, H, W\], got list"):
        launch(x.tolist())
    with pytest.raises(ValueError, match=r"x must have rank 5 \[B, C, T, H, W\], got shape"):
        launch(x[0])


def test_an_out_that_is_not_a_tensor_is_refused_naming_out():
    """Every launcher taking ``out`` checks it with kernels._common.check_out: a non-tensor is a
    TypeError naming out (not an AttributeError from inside the launcher), a wrong shape a
    ValueError."""
    x = torch.randn(1, 4, 2, 3, 5, device=DEVICE)
    c = torch.ones(4, device=DEVICE)
    q = torch.randn(3, 2, 4, 8, device=DEVICE)
    launches = {
        "channel_norm": lambda out: channel_norm(x, c, c, out=out),
        "linear_attention": lambda out: linear_attention_block(
            x, c, c, torch.randn(24, 4), torch.randn(4, 8), None, heads=2, out=out
        ),
        "temporal_attention": lambda out: temporal_attention(q, q, q, out=out),
        "ddim_update": lambda out: ddim_update(x, x, (1.0, 1.0, 1.0, 0.0), out=out),
        "to_uint8_frames": lambda out: to_uint8_frames(x, out=out),
    }
    for launch in launches.values():
        with pytest.raises(TypeError, match="out must be a torch.Tensor or None, got list"):
            launch([0.0])
        with pytest.raises(
            ValueError, match=r"out must be a torch\.(float32|uint8) tensor of shape"
        ):
            launch(torch.empty(1, device=DEVICE))


@pytest.mark.skipif(not INTERPRETED, reason="counts the Triton interpreter's launches")
def test_every_launch_runs_with_its_tensors_device_current(monkeypatch):
    """Triton launches on the current CUDA device, whatever its arguments' device: every launch
    (all four passes of the attention, the sampler's steps too) runs inside the device guard of
    its tensors' device (kernels._common.on_device), as torch's own ops do. Here the guard of
    the CPU stands in for torch.cuda.device and the interpreter's launches are watched."""
    from triton.runtime import interpreter

    current = []

    @contextlib.contextmanager
    def guard(index):
        current.append(index)
        try:
            yield
        finally:
            current.pop()

    launches = []
    run = interpreter.GridExecutor.__call__

    def watched(self, *args, **kwargs):
        launches.append((self.fn.__name__, tuple(current)))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(_common, "_DEVICE_GUARDS", MappingProxyType({"cpu": guard}))
    monkeypatch.setattr(interpreter.GridExecutor, "__call__", watched)
    calls = _launches(torch.float32)
    x = torch.rand(1, 3, 2, 3, 5, device=DEVICE) * 2 - 1
    calls["ddim_update"] = lambda: ddim_update(x, x, (1.0, 2.0, 3.0, 4.0))
    calls["to_uint8_frames"] = lambda: to_uint8_frames(x)
    for call in calls.values():
        call()
    names = {name for name, _ in launches}
    assert len(names) == 11 and "_context_combine_kernel" in names, names
    # one guard per launch, given the index of its tensors' device (a CPU tensor's is None)
    assert [n for n, devices in launches if devices != (x.device.index,)] == [], launches
