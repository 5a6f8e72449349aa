"""The engine on Triton, ``accelerate(model, backend="triton")``, end to end: encode and decode
in three chunks, so that every causal conv, norm, attention and resampling op carries its state
from one chunk to the next (the third chunk reads a history written entirely by the second).

Under the interpreter (CPU) every program of every launch runs in Python: about 5 ms of CPU per
iteration of a conv's K loop, so a decode costs what its full-resolution convs cost. CI therefore
runs the smallest clips that take three chunks, 8x8 video (a 1x1 latent): 9 frames encoded in
chunks of 1, 4 and 4 frames, 3 latent frames decoded one at a time. The models hold the fixture's
upstream weights and are compared with the fp32 reference model, which
``tests/test_upstream_parity.py`` pins to the upstream tensors. Those tensors are 32x32 clips,
about half an hour of interpreter per decode: comparing the Triton engine with them directly, and
the costlier cases below, is ``slow`` (seconds on a GPU).

Each case runs in its own program order (``tests/program_order.py``): together they cover grid,
reversed and shuffled without running anything twice.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from cdt_fast import CDT, accelerate
from cdt_fast.engine.dispatch import OPS, implementations

from .conftest import tiny_config, upstream_state_dict
from .helpers import DEVICE, UPSTREAM_TOL, exact_fp32

CHUNK_FRAMES = {"encode": 4, "decode": 1}  # -> video chunks of 1, 4, 4 frames either way

# (preset, what, batch, decode steps, program order)
_CI = [
    ("base", "encode", 1, None, "reversed"),
    ("small", "encode", 2, None, "grid"),
    ("small", "decode", 1, 2, "shuffled"),  # 2 steps: the intermediate DDIM step and the last
    # 1 step; CDT-base's decoder alone has the nearest-2x upsample folded into a (1,5,5) conv
    ("base", "decode", 1, 1, "reversed"),
]
_SLOW = [
    ("small", "decode", 1, 1, "grid"),
    ("base", "decode", 2, 2, "shuffled"),
    ("small", "decode", 2, 2, "reversed"),
]
CASES = [pytest.param(*c, id="-".join(map(str, c))) for c in _CI] + [
    pytest.param(*c, id="-".join(map(str, c)), marks=pytest.mark.slow) for c in _SLOW
]


def _reference(preset: str) -> CDT:
    model = CDT(tiny_config(preset))
    model.load_state_dict(upstream_state_dict(preset))
    return model.eval().to(DEVICE)


def _triton_engine(model: CDT):
    return accelerate(model, backend="triton")


def _check_ran_on_triton(engine) -> None:
    """Every op Triton implements ran on Triton; only the ops it lacks by design ran on torch."""
    lacking = set(OPS) - set(implementations("triton"))
    for op, counts in engine.execution_record()["ops"].items():
        assert set(counts) == ({"torch"} if op in lacking else {"triton"}), (op, counts)


def _encode_in_chunks(engine, x: torch.Tensor) -> torch.Tensor:
    chunks = list(engine.encode_params(x, CHUNK_FRAMES["encode"]))
    assert [c.shape[2] for c in chunks] == [1, 1, 1], "three encode chunks, one latent each"
    return torch.cat(chunks, dim=2)


def _decode_in_chunks(engine, z, steps, noise) -> torch.Tensor:
    frames = list(
        engine.decode_stream(z, steps=steps, noise=noise, chunk_frames=CHUNK_FRAMES["decode"])
    )
    assert [f.shape[2] for f in frames] == [1, 4, 4], "three decode chunks"
    return torch.cat(frames, dim=2)


@pytest.mark.parametrize("preset,what,batch,steps,program_order", CASES, indirect=["program_order"])
def test_three_chunks_match_reference(preset, what, batch, steps, program_order):
    model = _reference(preset)
    generator = torch.Generator().manual_seed(batch)
    with exact_fp32(), torch.no_grad():
        engine = _triton_engine(model)
        if what == "encode":
            x = (torch.rand(batch, 3, 9, 8, 8, generator=generator) * 2 - 1).to(DEVICE)
            params = _encode_in_chunks(engine, x)
            expected = model.encode(x, return_posterior=True)[1].parameters
            torch.testing.assert_close(params, expected, rtol=0, atol=UPSTREAM_TOL)
            _check_ran_on_triton(engine)
        else:
            z = torch.randn(batch, model.config.latent_dim, 3, 1, 1, generator=generator)
            noise = torch.randn(model.output_shape(z.shape), generator=generator)
            z, noise = z.to(DEVICE), noise.to(DEVICE)
            y = _decode_in_chunks(engine, z, steps, noise)
            expected = model.decode(z, steps=steps, noise=noise)
            torch.testing.assert_close(y, expected, rtol=0, atol=UPSTREAM_TOL)
            _check_ran_on_triton(engine)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["encode", "decode-1", "decode-3"])
def test_three_chunks_match_upstream_tensors(preset, what, upstream_io):
    """The fixture's own clips (32x32, 9 frames) through the Triton engine in three chunks."""
    model = _reference(preset)
    io = {k: v.to(DEVICE) for k, v in upstream_io.items() if k.startswith(f"{preset}.")}
    with exact_fp32(), torch.no_grad():
        engine = _triton_engine(model)
        if what == "encode":
            params = _encode_in_chunks(engine, io[f"{preset}.x"])
            torch.testing.assert_close(params, io[f"{preset}.posterior"], rtol=0, atol=UPSTREAM_TOL)
        else:
            steps = int(what.split("-")[1])
            y = _decode_in_chunks(engine, io[f"{preset}.z"], steps, io[f"{preset}.s{steps}.noise"])
            torch.testing.assert_close(y, io[f"{preset}.s{steps}.y"], rtol=0, atol=UPSTREAM_TOL)
