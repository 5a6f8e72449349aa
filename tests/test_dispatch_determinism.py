"""Deterministic dispatch: the same inputs, device, versions and decision table give bitwise the
same output in two fresh processes (auto decides from the table, never from timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cdt_fast import _cpp_lib

# A tiny CDT-small, decoded and encoded by the default engine, and by auto with a table that
# sends every op the C++ extension has to it (when it is built): hashes of the outputs and the
# choices made per (op, shape class).
_RUN = r"""
import hashlib, json, sys
import torch
import cdt_fast
from cdt_fast.reference import randomize_

torch.manual_seed(0)
width = dict(context_dim=4, unet_dim=4, latent_dim=4, out_channels=3)
ref = randomize_(cdt_fast.CDT(cdt_fast.CDTConfig.preset("small", **width)), seed=3).eval()
g = torch.Generator().manual_seed(1)
video = torch.rand((1, 3, 5, 16, 16), generator=g) * 2 - 1
tables = {"default": None}
if sys.argv[1] == "1":
    tables["cpp"] = {"cpu": {"*": {"*": ["cpp", "composed", "torch"]}}}
out = {}
for name, table in tables.items():
    eng = cdt_fast.accelerate(ref, table=table)
    z = eng.encode(video)
    y = eng.decode(z, generator=torch.Generator().manual_seed(2))
    digest = hashlib.sha256(z.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
    decided = sorted(f"{op}|{cls}|{b}" for (op, cls), b in eng.ops.decided().items())
    out[name] = [digest, decided, sorted(f"{k}={v[0]}" for k, v in eng.ops.report().items())]
print(json.dumps(out))
"""


def _run() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CDT_FAST_BACKEND"}
    cpp = "1" if _cpp_lib.is_available() else "0"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, cpp], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_auto_is_bitwise_identical_across_processes():
    first, second = _run(), _run()
    assert first == second
    if "cpp" in first:  # the table really sent ops to the extension
        assert any(b == "cpp" for b in (row.split("|")[-1] for row in first["cpp"][1]))
