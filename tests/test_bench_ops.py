"""The op microbenchmarks (benchmarks/bench_<family>.py) compare like with like: every
implementation a case times computes the op the torch backend computes, on the same inputs; rows
name the backend that ran; the shared peak tables and dtype names they read."""

from __future__ import annotations

import importlib

import pytest
import torch

from benchmarks import dtypes, hardware, microbench
from cdt_fast import _cpp_lib

from .helpers import DEVICE, EPS, ON_GPU

FAMILIES = (
    "causal_conv3d_history",
    "channel_norm",
    "denoise",
    "linear_attention",
    "time_resample",
)


def _cpu_cases(family: str):
    bench = importlib.import_module(f"benchmarks.bench_{family}")
    cpu = torch.device("cpu")
    if family in ("channel_norm", "linear_attention"):
        return list(bench.cases(bench.CPU_LEVELS["small"], torch.float32, cpu, with_compile=False))
    if family == "causal_conv3d_history":
        return list(bench.cases(bench.CPU_LEVELS["small"], cpu, torch.float32))
    return list(bench.cases(cpu, torch.float32, with_compile=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_backend_of_a_case_computes_the_torch_op(family):
    """On CPU: the torch and (when built) cpp backends of every case, on the case's inputs."""
    cases = _cpu_cases(family)
    ops = {case.op for case in cases}
    assert ops and all(case.nbytes > 0 for case in cases)
    want = {"torch", "cpp"} if _cpp_lib.is_available() else {"torch"}
    for case in cases:
        assert set(case.impls) == want, (case.op, case.label, set(case.impls))
        expected = case.impls["torch"]()
        for impl, call in case.impls.items():
            got = call()
            if expected.dtype == torch.uint8:  # to_uint8_frames: rounding may differ by one
                assert (got.int() - expected.int()).abs().max() <= 1, (case.label, impl)
            else:
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=case.label)


def test_rows_say_which_backend_ran(monkeypatch):
    if ON_GPU:
        pytest.skip("the CPU run's rows")
    monkeypatch.setattr(microbench.timing, "kernel_ms", lambda fn, device, repeats=5: 0.5)
    rows = importlib.import_module("benchmarks.bench_denoise").run_summary()
    assert {r["impl"] for r in rows} <= {"torch", "cpp"} and "torch" in {r["impl"] for r in rows}
    assert {r["op"] for r in rows} == {"ddim_update", "to_uint8_frames"}
    row = rows[0]
    assert row["ms"] == 0.5 and row["device"] == "cpu" and row["%peak_bw"] is None
    assert row["GB/s"] == pytest.approx(row["bytes"] / 0.5 / 1e6)


def test_temporal_attention_measures_nothing_without_cuda(capsys):
    if ON_GPU:
        pytest.skip("the CPU behaviour")
    from benchmarks import bench_temporal_attention as bench

    assert bench.run_summary() == [{"skipped": "needs CUDA"}]
    assert bench.main(["--no-save"]) == 0
    assert "needs CUDA, skipped" in capsys.readouterr().out


def _assert_close_conv(y, ref, k_len):
    """fp32: ~eps*K accumulation error on a CPU; TF32 (and 16-bit) input rounding on a GPU."""
    y, ref = y.float().cpu(), ref.float().cpu()
    if ON_GPU:
        eps = 2.0**-10
        atol = 6 * eps * k_len**0.5 + 2 * eps * ref.abs().max().item()
    else:
        atol = 4 * EPS[torch.float32] * k_len
    assert y.shape == ref.shape
    assert (y - ref).abs().max().item() <= atol


def test_causal_conv3d_benchmark_paths_agree():
    """The benchmark's arrangements compute the same conv (so its timings compare like with like)."""
    pytest.importorskip("cdt_fast.kernels.causal_conv3d")
    from benchmarks import bench_causal_conv3d as bench

    assert bench.bf16_peak("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.bf16_peak("NVIDIA H100 PCIe") == 756.0
    shape = bench.ConvShape(5, 6, (3, 3, 3), (1, 1, 1), (1, 1), 2, "replicate", False, 2, 2, 4, 5)
    assert shape.out_size() == (2, 4, 5)
    assert shape.flops() == 2 * 2 * 4 * 5 * 6 * 5 * 27
    assert shape.bytes_moved("upstream", 2) > shape.bytes_moved("triton", 2)
    runs = bench.ConvBench(shape, torch.float32, DEVICE).runs
    ref = runs["upstream"]()
    for path in ("cudnn_cl", "triton"):  # first call: same past as upstream's
        _assert_close_conv(runs[path](), ref, 135)


def test_causal_conv3d_norm_benchmark_compares_like_with_like():
    """The decode's Block shapes (the U-Net input padded as the engine pads it), and every
    implementation but torch.compile computing the same Block (the Triton ones under the
    interpreter)."""
    if ON_GPU:
        pytest.skip("the CPU check of the harness")
    pytest.importorskip("cdt_fast.kernels.causal_conv3d")
    from benchmarks import bench_causal_conv3d as bench
    from benchmarks.cdt_shapes import block_shapes, decode_shapes

    shapes = block_shapes("small", 64)
    # CDT-small's U-Net input conv reads noise | context = 3 + 3 channels: timed at 16 as the
    # engine runs it, and no other width changes.
    inputs = [cin for (cin, _, kernel, *_), _ in shapes if kernel == (3, 7, 7)]
    assert inputs == [16], inputs
    raw = {s.cin for s in decode_shapes("small", 64, 64) if s.kernel == (3, 3, 3)}
    assert raw == {cin for (cin, _, kernel, *_), _ in shapes if kernel == (3, 3, 3)}
    tiny = (16, 24, (3, 3, 3), "replicate", 2, 5, 7)
    impls, nbytes, flops = bench.block_impls(tiny, "cpu", torch.float32, with_compile=False)
    assert set(impls) == set(bench.BLOCK_IMPLS)
    want = impls.pop("cudnn+eager")()
    for name, fn in impls.items():
        torch.testing.assert_close(fn(), want, rtol=1e-4, atol=1e-4, msg=name)
    assert flops == 2 * 24 * 2 * 5 * 7 * 16 * 27 and nbytes > 0


@pytest.mark.parametrize(
    "name, tbps",
    [
        ("NVIDIA H100 80GB HBM3", 3.35),
        ("NVIDIA H100 PCIe", 2.0),
        ("NVIDIA H100 NVL", 3.9),
        ("NVIDIA H200", 4.8),
        ("NVIDIA A100-SXM4-80GB", 2.039),
        ("NVIDIA A100 80GB PCIe", 1.935),
        ("NVIDIA A100-PCIE-40GB", 1.555),
        ("NVIDIA L40S", 0.864),
        ("NVIDIA L4", 0.3),
        ("NVIDIA GH200 480GB", None),  # not an H200: no figure rather than the wrong one
        ("Some Future GPU", None),
        (None, None),
    ],
)
def test_bandwidth_table(name, tbps):
    assert hardware.peak_bandwidth_tbps(name) == tbps


def test_one_peak_table_for_every_benchmark():
    assert hardware.peak_tflops("NVIDIA H100 PCIe")[1]["bf16"] == 756.0
    assert hardware.peak_tflops("NVIDIA GH200 480GB")[0] == "NVIDIA GH200"
    assert hardware.peak_tflops("NVIDIA A10G") == (None, None)
    assert hardware.peak_tflops("NVIDIA A10")[1]["bf16"] == 125.0
    for label, peaks in hardware.PEAK_TFLOPS.items():
        assert peaks["bf16"] == peaks["fp16"] and peaks["tf32"] <= peaks["bf16"], label


def test_dtype_names():
    # the package's one map (cdt_fast.dtypes), in any case
    assert dtypes.parse_dtype("BF16") is torch.bfloat16
    assert dtypes.parse_dtype("Float16") is torch.float16 and dtypes.parse_dtype("fp32")
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtypes.parse_dtype("half")
    assert dtypes.dtype_name(torch.float32) == "fp32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtypes.parse_dtype("int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtypes.dtype_name(torch.int8)
