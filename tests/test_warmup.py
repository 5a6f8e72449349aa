"""Ahead-of-time warm-up: ``cdt_fast.engine.warmup`` and ``cdt-fast warmup``.

Capturing needs compiled (not interpreted) kernel objects, so those checks run in a fresh process
without ``TRITON_INTERPRET``; they use a narrow network so they stay CI-sized. Compiling for sm_90a
needs Triton's CUDA backend (bundled ptxas), not a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdt_fast.cli import main
from cdt_fast.config import CDTConfig
from cdt_fast.engine import dispatch
from cdt_fast.engine import memory as memory_mod
from cdt_fast.engine import warmup as W
from cdt_fast.engine.memory import MemoryModel

from .compile_kernels import has_cuda_toolchain

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, timeout: int = 600, **env) -> dict:
    """Run ``code`` in a fresh interpreter without TRITON_INTERPRET; its last stdout line, as JSON."""
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environ.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_COUNT = """
import json, torch
from cdt_fast.engine.warmup import capture_model, warmup
kw = dict(arch="sm_90a", compile=False, context_dim=32, unet_dim=32)
result = warmup("small", (64, 64), 5, "bf16", **kw).to_dict()
calls = []
launches = capture_model("small", (16, 16), 1, torch.bfloat16, calls=calls, context_dim=8,
                         unet_dim=8)
spans = sorted((c.first, c.end) for c in calls)
result["calls"] = dict(
    ops=sorted({c.op for c in calls}),
    launches=len(launches),
    covered=sum(end - first for first, end in spans),
    disjoint=all(a[1] <= b[0] for a, b in zip(spans, spans[1:])),
    tensors=all(isinstance(c.args[0], torch.Tensor) for c in calls),
)
print(json.dumps(result))
"""


def test_count_only_captures_encode_and_decode_kernels():
    first = _python(_COUNT)
    assert first["compiled"] is False and first["arch"] == "sm_90a"
    assert 0 < first["kernels"] <= first["launches"]
    assert sum(first["per_kernel"].values()) == first["kernels"]
    # encode (downsampling) and decode (U-Net attention, upsampling, DDIM) kernels are all there
    assert {
        "_causal_conv3d_kernel",
        "_channel_norm_kernel",
        "_time_downsample_kernel",
        "_time_upsample_kernel",
        "_attention_apply_kernel",
        "_ddim_update_kernel",
    } <= set(first["per_kernel"])
    # the op-level record: every launch inside exactly one Triton op call of the engine
    calls = first["calls"]
    assert calls["launches"] == calls["covered"] > 0 and calls["disjoint"]
    assert calls["tensors"] and {"causal_conv3d_norm", "ddim_update"} <= set(calls["ops"])
    assert set(calls["ops"]) <= set(dispatch.implementations("triton"))


_COMPILE = """
import json, os
from cdt_fast.engine.warmup import warmup
kw = dict(arch="sm_90a", context_dim=32, unet_dim=32, encode=False)
cold = warmup("small", (64, 64), 5, "bf16", jobs=2, **kw).to_dict()  # forked workers
entries = len(os.listdir(os.environ["TRITON_CACHE_DIR"]))
warm = warmup("small", (64, 64), 5, "bf16", **kw).to_dict()
print(json.dumps(dict(cold=cold, warm=warm, entries=entries,
                      after=len(os.listdir(os.environ["TRITON_CACHE_DIR"])))))
"""


@pytest.mark.slow
@pytest.mark.skipif(not has_cuda_toolchain(), reason="this triton has no CUDA backend/ptxas")
def test_compiles_into_tritons_cache_once(tmp_path):
    out = _python(_COMPILE, TRITON_CACHE_DIR=str(tmp_path))
    assert out["cold"]["compiled"] and out["cold"]["kernels"] > 0 and out["cold"]["failed"] == []
    # one cache entry per compiled kernel; the second warm-up (in-process) finds them all
    assert out["entries"] >= out["cold"]["kernels"]
    assert out["after"] == out["entries"]
    assert out["warm"]["seconds"] < out["cold"]["seconds"]


_PRESETS = """
import json
from cdt_fast.engine.warmup import warmup
print(json.dumps({p: warmup(p, (256, 256), 17, "bf16", arch="sm_90a", compile=False).kernels
                  for p in ("base", "small")}))
"""


@pytest.mark.slow
def test_presets_need_at_most_60_kernels_at_256():
    counts = _python(_PRESETS)
    assert all(0 < n <= 60 for n in counts.values()), counts


_CHUNKS = """
import json, torch
from cdt_fast.engine.warmup import capture_launches, distinct_launches
from cdt_fast.kernels.causal_conv3d import causal_conv3d
w = torch.zeros(32, 32, 3, 3, 3, dtype=torch.bfloat16)
x = lambda t: torch.zeros(1, 32, t, 8, 8, dtype=torch.bfloat16)
with capture_launches(90) as launches:
    causal_conv3d(x(5), w, space_padding=(1, 1))  # a clip's first chunk: no past
    causal_conv3d(x(4), w, past=x(2), history=2, space_padding=(1, 1))  # steady chunks
    causal_conv3d(x(16), w, past=x(2), history=2, space_padding=(1, 1))
    causal_conv3d(x(1), w, past=x(2), history=2, space_padding=(1, 1))  # a one-frame tail
print(json.dumps(dict(launches=len(launches), distinct=len(distinct_launches(launches)))))
"""


def test_chunk_kinds_of_a_clip_share_one_conv_compilation():
    # Frame counts, history lengths and row counts differ between a chunked clip's chunks; were
    # they specialised (== 1, divisible by 16), each chunk kind would compile anew.
    out = _python(_CHUNKS)
    assert out == dict(launches=4, distinct=1), out


def test_cli_prints_json(monkeypatch, capsys):
    seen = {}

    def fake(preset, size, frames, dtype, *, arch, compile, progress, jobs):
        seen.update(
            preset=preset, size=size, frames=frames, dtype=dtype, arch=arch, compile=compile
        )
        return W.WarmupResult(
            kernels=7, seconds=1.5, launches=20, arch=90, preset=preset, size=size,
            frames=frames, dtype=dtype, compiled=compile,
        )  # fmt: skip

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(W, "warmup", fake)
    args = ["warmup", "--model", "base", "--size", "720x1280", "--frames", "9"]
    assert main(args + ["--dtype", "fp16", "--arch", "sm_90a", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kernels"] == 7 and out["seconds"] == 1.5 and out["arch"] == "sm_90a"
    assert seen == dict(
        preset="base", size=(720, 1280), frames=9, dtype="fp16", arch="sm_90a", compile=True
    )
    assert main(["warmup", "--size", "256", "--count-only"]) == 0
    assert seen["size"] == (256, 256) and seen["compile"] is False
    assert "counted 7 kernels" in capsys.readouterr().out


def test_cli_warms_every_model_and_size_up_in_workers(monkeypatch, capsys):
    done = []

    def fake(preset, size, frames, dtype, *, arch, compile, progress, jobs):
        done.append((preset, size, jobs))
        failed = ["_k: CompilationError: boom"] if (preset, size) == ("base", (720, 720)) else []
        return W.WarmupResult(
            kernels=3, seconds=1.0, launches=9, arch=90, preset=preset, size=size,
            frames=frames, dtype=dtype, compiled=compile, failed=failed, jobs=jobs,
        )  # fmt: skip

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(W, "warmup", fake)
    args = ["warmup", "--model", "small,base", "--size", "256x256,720x720", "--jobs", "4"]
    assert main(args + ["--arch", "sm_90a", "--json"]) == 1  # one kernel did not compile
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # every size for both presets, the first size first; one JSON line each
    assert done == [
        ("small", (256, 256), 4), ("base", (256, 256), 4),
        ("small", (720, 720), 4), ("base", (720, 720), 4),
    ]  # fmt: skip
    assert [(r["model"], r["size"], r["jobs"]) for r in lines] == [
        (m, list(s), 4) for m, s, _ in done
    ]
    assert lines[-1]["failed"] == ["_k: CompilationError: boom"]
    assert main(["warmup", "--jobs", "0", "--arch", "sm_90a"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err


def _fake_launches(n):
    return [W.Launch(type("K", (), {"__name__": f"_kernel{i % 2}"})(), (), {}) for i in range(n)]


def test_compile_launches_in_forked_workers_reports_failures_and_timeouts(monkeypatch):
    def fake_compile(fn, args, kwargs, arch):
        if fn.__name__ == "_kernel1":
            raise RuntimeError("out of registers")

    monkeypatch.setattr(W, "compile_launch", fake_compile)
    seen = []
    failed = W.compile_launches(_fake_launches(5), 90, jobs=2, progress=lambda *a: seen.append(a))
    # the failures came back from the workers; progress after each worker's share
    assert failed == ["_kernel1: RuntimeError: out of registers"] * 2
    assert len(seen) == 2 and seen[-1][:2] == (5, 5)  # shares of 3 and 2, either first
    assert W.compile_launches(_fake_launches(3), 90, jobs=1) == [
        "_kernel1: RuntimeError: out of registers"
    ]

    monkeypatch.setattr(W, "compile_launch", lambda *a: __import__("time").sleep(60))
    failed = W.compile_launches(_fake_launches(4), 90, jobs=2, timeout=0.5)
    assert len(failed) == 2 and all(
        f.startswith("not compiled (its worker was stopped at the timeout): 2 launches")
        for f in failed
    )
    with pytest.raises(ValueError, match="jobs"):
        W.compile_launches([], 90, jobs=0)


def test_cli_refuses_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert main(["warmup", "--arch", "sm_90a"]) == 2
    assert "TRITON_INTERPRET" in capsys.readouterr().err


def test_bad_arguments_raise_clear_errors(capsys):
    assert W.parse_arch("sm_90a") == 90 and W.parse_arch("sm_80") == 80 and W.parse_arch(89) == 89
    for bad in ("hopper", "sm_9", True):
        with pytest.raises((ValueError, TypeError), match="arch"):
            W.parse_arch(bad)
    with pytest.raises(ValueError, match="model"):
        W.warmup("large", arch="sm_90a")
    with pytest.raises(ValueError, match="dtype"):
        W.warmup("small", dtype="int8", arch="sm_90a")
    with pytest.raises(SystemExit):
        main(["warmup", "--size", "256y256"])
    assert "size must be HxW" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_without_gpu_an_arch_is_required():
    with pytest.raises(ValueError, match="arch"):
        W.warmup("small")


def _time_extents(launches) -> set:
    """The frame counts of the 5-D activations the captured launches read first."""
    firsts = [launch.args[0] for launch in launches]
    return {x.shape[2] for x in firsts if isinstance(x, torch.Tensor) and x.dim() == 5}


def test_capture_follows_the_chunk_plan_it_is_given():
    # 720x720: the engine's CPU plan cuts a 17-frame clip into three chunks (encode 1 + 8 + 8
    # frames, decode 2 + 2 + 1 latent frames); an 80 GB GPU takes it whole. Meta tensors: the
    # shapes the launches see, at no memory cost.
    size, frames = (720, 720), 17
    cpu_plan = W.chunk_plan("small", size, torch.float32, "cpu")
    assert cpu_plan == (8, 2)
    whole = W.capture_model("small", size, frames, torch.float32, device="meta", chunks=(64, 16))
    cut = W.capture_model("small", size, frames, torch.float32, device="meta")
    assert _time_extents(whole) == {5, 9, 17}  # encoder 17 -> 9 -> 5, decoder 5 -> 9 -> 17
    assert _time_extents(cut) == {1, 2, 3, 4, 5, 8}


def test_warmup_on_this_machines_gpu_captures_its_chunk_plan(monkeypatch):
    captured = {}

    def capture(preset, size, frames, dtype, **kwargs):
        captured[preset, size] = kwargs.get("chunks")
        return []

    free = 70 * 2**30  # an 80 GB GPU with the CUDA context and nothing else on it
    monkeypatch.setattr(W, "capture_model", capture)
    monkeypatch.setattr(W, "_current_arch", lambda: 90)
    monkeypatch.setattr(memory_mod, "free_memory", lambda d: free if d.type == "cuda" else None)
    for preset in ("small", "base"):
        W.warmup(preset, (720, 720), 17, "bf16", compile=False)
        encode, decode = captured[preset, (720, 720)]
        # the engine's own default on that GPU (graphs on): the whole 17-frame clip in one chunk
        memory, cuda = MemoryModel(CDTConfig.preset(preset)), torch.device("cuda")
        assert encode == memory.encode_chunk(1, 720, 720, torch.bfloat16, cuda, graphs=True)
        assert decode == memory.decode_chunk(1, 720, 720, torch.bfloat16, cuda, graphs=True)
        assert encode >= 16 and decode >= 5
        # compiling for another machine's GPU: the engine's plan here
        W.warmup(preset, (720, 720), 17, "bf16", arch="sm_90a", compile=False)
        assert captured[preset, (720, 720)] is None
