"""End-to-end: the engine on the compiled CPU extension reproduces upstream's fixtures."""

from __future__ import annotations

import pytest
import torch

import cdt_fast

from .helpers import UPSTREAM_TOL

pytestmark = pytest.mark.skipif(
    not cdt_fast.backends()["cpp"].available, reason=cdt_fast.backends()["cpp"].reason
)


@pytest.fixture(scope="module")
def cpp_engines():
    from .conftest import tiny_config, upstream_state_dict

    engines = {}
    for preset in ("base", "small"):
        model = cdt_fast.CDT(tiny_config(preset))
        model.load_state_dict(upstream_state_dict(preset))
        engines[preset] = cdt_fast.accelerate(model.eval(), backend="cpp")
    return engines


def test_cpp_backend_serves_the_memory_bound_ops(cpp_engines):
    ops = cpp_engines["small"].backend_report()["ops"]
    for name in (
        "channel_norm",
        "linear_attention",
        "time_downsample",
        "time_upsample",
        "causal_conv3d_history",
        "ddim_update",
        "to_uint8_frames",
    ):
        assert ops[name][0] == "cpp", (name, ops[name])


def test_cpp_engine_records_the_backend_each_op_ran_on(cpp_engines, upstream_io):
    """The extension's ops count under cpp; its Blocks, composed, count as torch's conv and
    cpp's norm; only the convs it lacks by design run on torch."""
    engine = cpp_engines["small"]
    engine.reset_execution_record()
    engine.decode(upstream_io["small.z"][:, :, :1], steps=1)
    ran = engine.execution_record()["ops"]
    assert {op for op, counts in ran.items() if "torch" in counts} == {
        "causal_conv3d",
        "conv_transpose_up2x",
    }
    lacked = ("causal_conv3d", "conv_transpose_up2x")
    assert all(set(counts) == {"cpp"} for op, counts in ran.items() if op not in lacked), ran
    assert "causal_conv3d_norm" not in ran and ran["channel_norm"]["cpp"] > 0


@pytest.mark.parametrize("preset", ["base", "small"])
@pytest.mark.parametrize("steps, chunk", [(1, None), (3, 1)])
def test_cpp_engine_matches_upstream(cpp_engines, upstream_io, preset, steps, chunk):
    engine = cpp_engines[preset]
    z = engine.encode(upstream_io[f"{preset}.x"], chunk_frames=4)
    torch.testing.assert_close(z, upstream_io[f"{preset}.z"], rtol=0, atol=UPSTREAM_TOL)
    y = engine.decode(
        upstream_io[f"{preset}.z"],
        steps=steps,
        chunk_frames=chunk,
        noise=upstream_io[f"{preset}.s{steps}.noise"],
    )
    torch.testing.assert_close(y, upstream_io[f"{preset}.s{steps}.y"], rtol=0, atol=UPSTREAM_TOL)
