"""tools/gpu_smoke.py without a GPU: the script end to end under the Triton interpreter on a tiny
network (its per-op JSON), and, in this process, the recorded calls' round trip, a mismatch and
a sticky CUDA error (stand-in op functions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdt_fast import functional as CF
from cdt_fast.engine import dispatch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import gpu_smoke
import gpu_smoke_calls

_PRECOMPILE = """
import json, sys
sys.path.insert(0, "tools")
import gpu_smoke
from cdt_fast.engine import warmup
compiled = []
warmup.compile_launches = lambda launches, arch, jobs, timeout=None: compiled.extend(launches) or []
calls = gpu_smoke.record_calls("small", (16, 16), 1, 90, tiny=True)
groups = [("small", d, calls) for d in ("bf16", "fp32")]
report = gpu_smoke.precompile(groups, 90, jobs=2, timeout=5)
kinds = sorted({(l.name, str(l.args[0].dtype)) for l in compiled})
print(json.dumps(dict(report, calls=len(calls), ops=sorted({c["op"] for c in calls}), kinds=kinds)))
"""


def test_recorded_calls_replay_into_the_launches_to_compile():
    """Steps 1 and 2 without the interpreter (compiling itself is the warm-up's, tested there):
    the engine's Triton calls of a tiny model, replayed on empty tensors in both dtypes."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-c", _PRECOMPILE], capture_output=True, text=True, env=env,
        timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["failed"] == [] and out["calls"] > 0 and out["kernels"] >= out["calls"]
    assert out["groups"] == ["small bf16", "small fp32"] and out["jobs"] == 2
    assert {"causal_conv3d_norm", "linear_attention_block", "ddim_update"} <= set(out["ops"])
    kinds = {tuple(k) for k in out["kinds"]}
    for dtype in ("torch.bfloat16", "torch.float32"):  # every kind of kernel, in both dtypes
        assert ("_causal_conv3d_kernel", dtype) in kinds and (
            "_norm_project_kernel",
            dtype,
        ) in kinds


def _recorded_norm_call(width: int = 5) -> dict:
    """A bf16 channel_norm of a view (storage offset) whose residual shares the view's storage,
    with an fp32 time bias."""
    base = torch.randn(2, 8, 4, 3, width, dtype=torch.bfloat16)
    base = base.contiguous(memory_format=torch.channels_last_3d)
    x = base[:, :, 1:]
    g, b = torch.randn(8, dtype=torch.bfloat16), torch.randn(8, dtype=torch.bfloat16)
    kwargs = {"relu": True, "time_bias": torch.randn(2, 8), "residual": base[:, :, :3]}
    args = (x, g, b, 1e-5)
    storages = {}
    return {
        "op": "channel_norm",
        "args": gpu_smoke_calls.encode_argument(args, storages)["tuple"],
        "kwargs": {k: gpu_smoke_calls.encode_argument(v, storages) for k, v in kwargs.items()},
        "kernels": ["_channel_norm_kernel"],
    }


@pytest.mark.slow
def test_script_records_and_replays_a_tiny_model_under_the_interpreter(tmp_path):
    """Step 1 in its child process, then the run (the --cpu check runs the same, CI-sized)."""
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_smoke.py"), "--out", str(out)]
    cmd += ["--device", "cpu", "--tiny", "--presets", "small", "--dtypes", "fp32"]
    cmd += ["--size", "16x16", "--frames", "1", "--ops", "time_upsample,ddim_update"]
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["status"] == "done" and report["planned"] == len(report["results"]) > 0
    assert {r["op"] for r in report["results"]} == {"time_upsample", "ddim_update"}
    assert all(r["status"] == "ok" and r["kernels"] for r in report["results"])


def test_script_writes_one_record_per_op(tmp_path, capsys):
    """Recorded calls replayed through the real kernel (interpreted): the report's records."""
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps({"small": [_recorded_norm_call(), _recorded_norm_call(7)]}))
    out = tmp_path / "smoke.json"
    argv = ["--calls", str(calls), "--out", str(out), "--device", "cpu", "--presets", "small"]
    assert gpu_smoke.main(argv + ["--dtypes", "fp32"]) == 0
    report = json.loads(out.read_text())
    assert report["schema"] == gpu_smoke.SCHEMA and report["status"] == "done"
    assert report["planned"] == len(report["results"]) == 2 and report["calls"] == {"small": 2}
    for i, r in enumerate(report["results"]):
        assert r["status"] == "ok" and r["ok"] and 0 <= r["worst"] <= 1, r
        assert (r["preset"], r["dtype"], r["call"], r["op"]) == ("small", "fp32", i, "channel_norm")
        assert r["kernels"] == ["_channel_norm_kernel"] and r["shapes"] and r["seconds"] >= 0
    assert report["summary"] == {"ok": 2, "mismatch": 0, "error": 0, "cuda-error": 0,
                                 "not_run": 0}  # fmt: skip
    assert capsys.readouterr().out.startswith("gpu_smoke: done: 2 ok")
    # a preset the file does not hold: the report says so, the exit status too
    assert gpu_smoke.main(argv[:-1] + ["base", "--dtypes", "fp32"]) == gpu_smoke.EXIT_FAILED
    assert "no recorded calls for base" in json.loads(out.read_text())["status"]


def test_recorded_call_round_trip_keeps_layout_and_aliasing():
    call = json.loads(json.dumps(_recorded_norm_call()))  # through JSON, as from the child
    args, kwargs = gpu_smoke.materialise(call, torch.float32, torch.device("cpu"), seed=0)
    x, residual = args[0], kwargs["residual"]
    assert x.shape == (2, 8, 3, 3, 5) and x.stride() == (480, 1, 120, 40, 8)
    assert x.storage_offset() == 120 and residual.storage_offset() == 0
    assert x.untyped_storage().data_ptr() == residual.untyped_storage().data_ptr()
    assert args[3] == 1e-5 and kwargs["relu"] is True
    assert x.dtype == torch.float32 and kwargs["time_bias"].dtype == torch.float32
    again, _ = gpu_smoke.materialise(call, torch.float32, torch.device("cpu"), seed=0)
    assert torch.equal(again[0], x)  # one seed, one set of inputs
    half, kw = gpu_smoke.materialise(call, torch.bfloat16, torch.device("cpu"))
    assert half[0].dtype == torch.bfloat16 and half[0].stride() == x.stride()
    assert kw["time_bias"].dtype == torch.float32  # recorded in fp32: stays fp32


def _run(monkeypatch, fn, calls=2):
    monkeypatch.setattr(dispatch, "resolve", lambda *a, **k: (fn, ""))
    report = {"status": "running", "results": []}
    writes = []
    group = ("small", "fp32", [_recorded_norm_call() for _ in range(calls)])
    code = gpu_smoke.run_calls([group], torch.device("cpu"), report, lambda: writes.append(1))
    return code, report, writes


def test_the_right_answer_passes_and_a_wrong_one_is_a_mismatch(monkeypatch):
    code, report, writes = _run(monkeypatch, CF.channel_norm)
    assert code == 0 and [r["status"] for r in report["results"]] == ["ok", "ok"]
    assert len(writes) == 2  # the report is written after every op

    def off_by_a_little(*args, **kwargs):
        return CF.channel_norm(*args, **kwargs) * (1 + 1e-3)

    code, report, _ = _run(monkeypatch, off_by_a_little)
    first = report["results"][0]
    assert code == gpu_smoke.EXIT_MISMATCH and first["status"] == "mismatch" and first["worst"] > 1
    assert first["k"] == 8 and first["atol"] > 0


def test_a_sticky_cuda_error_names_the_op_and_stops(monkeypatch):
    def illegal_address(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_smoke, "device_usable", lambda device: False)
    code, report, writes = _run(monkeypatch, illegal_address, calls=3)
    assert code == gpu_smoke.EXIT_STICKY and report["status"] == "cuda-error"
    assert report["stopped_at"] == "small fp32 #0 channel_norm"
    (only,) = report["results"]  # nothing ran after it
    assert only["status"] == "cuda-error" and "illegal memory access" in only["error"]
    assert writes
    # an error that leaves the device usable (e.g. out of shared memory) is recorded, and on
    monkeypatch.setattr(gpu_smoke, "device_usable", lambda device: True)
    code, report, _ = _run(monkeypatch, illegal_address, calls=3)
    assert code == gpu_smoke.EXIT_MISMATCH
    assert [r["status"] for r in report["results"]] == ["error"] * 3


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--presets", "large"], "expected a comma list of small, base"),
        (["--ops", "conv"], "expected a comma list of"),
        (["--jobs", "0", "--out", "x.json", "--calls", "none.json"], "--jobs must be >= 1"),
        (["--device", "cpu"], "--out is required"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        gpu_smoke.main(argv)
    assert message in capsys.readouterr().err
