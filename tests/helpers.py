"""What the test modules share: where they run, tolerances, a tiny benchmark run, a Hub cache,
a CLI run and a free local port.

Where Triton runs is decided once, in ``conftest.py`` (which calls :func:`use_triton_interpreter`
before any test module imports triton); the modules read the outcome from here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path

import torch

__all__ = [
    "BENCH_TINY_ARGS",
    "BF16_MAX_MULTIPLE",
    "BF16_RMS_MULTIPLE",
    "DEVICE",
    "EPS",
    "INTERPRETED",
    "ON_GPU",
    "UPSTREAM_TOL",
    "assert_bf16_close",
    "errors",
    "exact_fp32",
    "free_port",
    "put_in_hub_cache",
    "run_cli",
    "tolerance",
    "use_triton_interpreter",
]


def use_triton_interpreter() -> bool:
    """Without a GPU, Triton kernels run under the interpreter. The variable must be set before
    the process first imports triton, so conftest.py calls this at import time.
    ``CDT_FAST_TEST_DEVICE=cuda`` keeps the compiled path (on a GPU machine)."""
    if os.environ.get("CDT_FAST_TEST_DEVICE", "auto") != "cuda" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return os.environ.get("TRITON_INTERPRET") == "1"


ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
INTERPRETED = use_triton_interpreter()

# Unit roundoff of each storage dtype.
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
# Upstream parity of the fp32 reference model (measured: about 1e-5).
UPSTREAM_TOL = 1e-4


def tolerance(dtype: torch.dtype, k: int = 1) -> dict:
    """``atol``/``rtol`` for ``torch.testing.assert_close`` of a result whose every element is a
    reduction of length ``k`` in ``dtype`` storage with fp32 accumulation, against an fp32 oracle
    on the same inputs. fp32 error grows like eps*k (worst case); 16-bit storage is dominated by
    the input and output rounding, ~eps*sqrt(k) for unit-variance products."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    eps = EPS[dtype]
    if dtype == torch.float32:
        return {"atol": max(1e-6, 8 * eps * k), "rtol": 1e-5}
    return {"atol": 4 * eps * k**0.5 + eps, "rtol": 2 * eps}


@contextlib.contextmanager
def exact_fp32():
    """fp32 convs and matmuls with IEEE products on CUDA (no TF32), for oracles and fp32 kernels
    (whose precision follows ``torch.backends.cudnn.allow_tf32``). No effect on a CPU."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


# bf16 tolerances, for the GPU tests (the interpreter has no bf16 arithmetic). They are derived
# from the bf16 emulation (tests/bf16_emulation.py: fp32 arithmetic, bf16 storage wherever the
# kernels store) run on the same inputs, never set by hand: a bf16 result's error against the fp32
# oracle may be at most these multiples of the emulation's error against that oracle.
# - RMS error, 1.5x: equally faithful emulations (fp64 instead of fp32 arithmetic inside the ops,
#   i.e. another summation order; a Block's conv output stored before its norm, as the composed
#   path does) and the torch backend run in bf16 differ from the emulation by at most 1.16x over
#   both tiny presets' encode and 1- and 3-step decodes, while storing by truncation instead of
#   rounding to nearest costs 1.8x to 6.9x (measured and kept so by tests/test_bf16_emulation.py).
# - largest error, 3x: one wrong element among many barely moves the RMS; between the faithful
#   variants above the largest error moves by up to 2.7x (a 3-step decode's sampling amplifies
#   single elements).
BF16_RMS_MULTIPLE = 1.5
BF16_MAX_MULTIPLE = 3.0


def errors(actual: torch.Tensor, oracle: torch.Tensor) -> tuple:
    """(RMS, largest absolute) difference, computed in fp64."""
    diff = actual.double() - oracle.double()
    return diff.pow(2).mean().sqrt().item(), diff.abs().max().item()


def assert_bf16_close(actual: torch.Tensor, oracle: torch.Tensor, emulated: torch.Tensor) -> None:
    """``actual`` (a bf16 computation) is as close to the fp32 ``oracle`` as the bf16 emulation
    ``emulated`` of the same computation, within :data:`BF16_RMS_MULTIPLE` and
    :data:`BF16_MAX_MULTIPLE`. A floor far below a bf16 step (2**-16 of the oracle's largest
    magnitude: fp32 summation-order noise) keeps a result the emulation gets exactly from
    demanding a zero error."""
    assert actual.shape == oracle.shape == emulated.shape, (actual.shape, oracle.shape)
    rms, largest = errors(actual, oracle)
    rms_emul, largest_emul = errors(emulated, oracle)
    floor = 2.0**-16 * oracle.abs().max().item()
    rms_tol = BF16_RMS_MULTIPLE * max(rms_emul, floor)
    max_tol = BF16_MAX_MULTIPLE * max(largest_emul, floor)
    assert rms <= rms_tol and largest <= max_tol, (
        f"bf16 error RMS {rms:.3e} / largest {largest:.3e} exceeds {BF16_RMS_MULTIPLE}x / "
        f"{BF16_MAX_MULTIPLE}x the emulation's {rms_emul:.3e} / {largest_emul:.3e}"
    )


# benchmarks/run.py on a setting that runs in seconds on a CPU; a test appends what it changes
# (argparse keeps the last value of a repeated option).
BENCH_TINY_ARGS = [
    "--tiny",
    "--models",
    "small",
    "--frames",
    "5",
    "--size",
    "32",
    "--ops",
    "encode,decode,roundtrip",
    "--long-frames",
    "9",
    "--warmup",
    "0",
    "--repeats",
    "2",
    "--threads",
    "1",
    "--no-progress",
]


def put_in_hub_cache(
    cache: Path, repo_id: str, filename: str, data: bytes, revision: str = "main"
) -> Path:
    """Store ``data`` as ``filename`` of the Hub model repository ``repo_id`` at ``revision`` (a
    branch or tag) in a Hugging Face cache folder, laid out as huggingface_hub lays it out:
    ``models--owner--name/`` with ``blobs/<sha256>``, ``snapshots/<commit>/<filename>`` (a link
    to the blob) and ``refs/<revision>`` (the commit). Returns the snapshot path."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / commit / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def run_cli(capsys, *argv) -> tuple:
    """``cdt_fast.cli.main`` on ``argv`` (each passed through ``str``), in this process: (exit
    status, stdout, stderr) as pytest's ``capsys`` captured them."""
    # Imported here: conftest.py imports this module before triton may be imported.
    from cdt_fast.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
