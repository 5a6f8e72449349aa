"""The model benchmark's command line and plan: the defaults of each device, whole settings, and
every bad argument named."""

from __future__ import annotations

import pytest
import torch

from benchmarks import impls, run
from benchmarks.arguments import build_parser
from benchmarks.plan import make_plan, parse_ckpts


def _plan(argv):
    return make_plan(build_parser().parse_args(argv))


def test_default_cpu_plan_is_reduced_and_says_so(monkeypatch):
    # cdt_fast resolves its attributes lazily: stand in for a build without the engine
    monkeypatch.setattr(
        impls, "engine_backends", lambda: ({}, "cdt_fast.accelerate is not in this build")
    )
    plan = _plan(["--device", "cpu"])
    assert plan.dtype == torch.float32 and plan.models == ["base", "small"]
    assert [(s.frames, s.height, s.suite) for s in plan.settings] == [(9, 64, "main")]
    assert plan.ops == ["encode", "decode"] and plan.repeats == 5 and plan.min_repeats == 3
    assert plan.impls == ["reference"]
    assert all(plan.reduced(s) for s in plan.settings)
    assert any("REDUCED" in n for n in plan.notes)
    assert any("reference-compiled" in n and "--full" in n for n in plan.notes)
    assert any(s["impl"] == "engine" and "accelerate" in s["reason"] for s in plan.skipped)
    full = _plan(["--device", "cpu", "--full"])
    assert "reference-compiled" in full.impls and "roundtrip" in full.ops
    assert [s.frames for s in full.settings if s.suite == "length"] == [25, 33]  # 17 is main


def test_sizes_flag_gives_whole_settings():
    plan = _plan(["--device", "cpu", "--models", "small", "--sizes", "17x256x256,5x32x64"])
    assert [(s.frames, s.height, s.width, s.suite) for s in plan.settings] == [
        (17, 256, 256, "main"),
        (5, 32, 64, "main"),
    ]
    assert plan.models == ["small"]


def test_default_cuda_plan_is_the_papers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = _plan(["--device", "cuda"])
    assert plan.dtype == torch.bfloat16 and plan.compile_mode == "max-autotune"
    assert [(s.frames, s.height, s.suite) for s in plan.settings] == [
        (17, 256, "main"),
        (17, 720, "main"),
        (65, 720, "length"),
        (129, 720, "length"),
    ]
    assert plan.impls[:3] == ["reference", "reference-cl", "reference-compiled"]
    assert not any(plan.reduced(s) for s in plan.settings)
    assert [
        s.frames for s in _plan(["--device", "cuda", "--full"]).settings if s.suite == "length"
    ] == [65, 129, 257]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--frames", "6"], "1 + 4k"),
        (["--size", "30"], "multiples of 8"),
        (["--dtype", "int8"], "dtype"),
        (["--impls", "fastest"], "unknown implementation"),
        (["--models", "large"], "base and/or small"),
        (["--ops", "train"], "--ops"),
        (["--tiny", "--ckpt", "x.ckpt"], "--tiny"),
        (["--sizes", "17x256"], "TxHxW"),
        (["--sizes", "6x64x64"], "1 + 4k"),
        (["--sizes", "17x60x64"], "multiples of 8"),
        (["--sizes", "9x64x64", "--size", "64"], "drop --frames/--size"),
        (["--time-budget", "0"], "positive number of seconds"),
        (["--rounds", "2", "--min-rounds", "3"], "--min-rounds"),
        (["--publish", "--results-dir", "x"], "drop --results-dir"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(argv + ["--device", "cpu", "--no-progress"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_ckpt_is_parsed_per_model():
    assert parse_ckpts(["a.ckpt"], ["small"]) == {"small": "a.ckpt"}
    assert parse_ckpts(["base=b.ckpt", "small=s.ckpt"], ["base", "small"]) == {
        "base": "b.ckpt",
        "small": "s.ckpt",
    }
    with pytest.raises(ValueError, match="name the model"):
        parse_ckpts(["a.ckpt"], ["base", "small"])
