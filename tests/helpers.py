"""What the test modules share: where they run, tolerances, a tiny benchmark run, a Hub cache.

Where Triton runs is decided once, in ``conftest.py`` (which calls :func:`use_triton_interpreter`
before any test module imports triton); the modules read the outcome from here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

__all__ = [
    "BENCH_TINY_ARGS",
    "DEVICE",
    "EPS",
    "INTERPRETED",
    "ON_GPU",
    "UPSTREAM_TOL",
    "put_in_hub_cache",
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
