"""tools/sass_audit.py: the engine's Triton launches, compiled for sm_90 without a GPU.

These guard code-generation facts that the interpreter cannot see: the temporal downsample reads
a Cin-innermost weight with 16-byte async copies (not one element per load), the conv kernel's
pruning gives the 3-channel output conv a narrow tile (a 128-wide one spills registers), and the
U-Net's 6- or 19-channel input conv reads 16-byte vectors because its input is padded to 16
channels (unpadded, it reads one element per load)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .compile_kernels import has_cuda_toolchain

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json, sys
sys.path.insert(0, {tools!r})
import sass_audit as sa
launches = sa.capture_run("small", 64, frames=5, encode=False, context_dim=32, unet_dim=32)
names = sorted({{l.name for l in launches}})
reports = sa.audit_launches(launches, kernels=["_time_downsample_kernel", "_time_upsample_kernel"])
final = [l for l in launches if l.name == "_causal_conv3d_kernel" and l.args[2].shape[0] == 3]
unet_in = [l for l in launches if l.name == "_causal_conv3d_kernel" and l.kwargs["KH"] == 7
           and l.args[2].shape[0] != 3]
out = dict(names=names, reports=[dict(kernel=r.kernel, tc=r.tensor_core, flags=r.flags,
                                      loads=r.global_loads) for r in reports],
           final_block_n=sorted({{l.kwargs["BLOCK_N"] for l in final}}),
           unet_in=[dict(cin=l.kwargs["CIN"], norm=l.kwargs["NORM"]) for l in unet_in],
           unet_in_flags=[r.flags for r in sa.audit_launches(unet_in)])
print(json.dumps(out))
"""


@pytest.mark.skipif(not has_cuda_toolchain(), reason="this triton has no CUDA backend/ptxas")
def test_engine_decode_kernels_compile_for_sm90_with_wide_loads():
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(tools=str(ROOT / "tools"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {
        "_causal_conv3d_kernel",
        "_channel_norm_kernel",
        "_time_downsample_kernel",
        "_time_upsample_kernel",
        "_attention_apply_kernel",
    } <= set(result["names"])
    assert result["reports"], "no resampling launch captured"
    for r in result["reports"]:
        assert r["tc"] == "HGMMA", r
        assert r["loads"].get("LDGSTS.128", 0) + r["loads"].get("LDG.128", 0) > 0, r
        assert not [f for f in r["flags"] if "spill" in f or "shared" in f], r
        if r["kernel"] == "_time_downsample_kernel":  # (upsample's stride-2 bias reads are narrow)
            assert not r["flags"], r
    assert result["final_block_n"] == [16], result["final_block_n"]
    # The U-Net's input conv reads noise | context (3 + 3 channels here): the engine pads that
    # input to 16 channels, and the conv runs with its Block's norm fused in the epilogue.
    # At 6 channels it read one element per load and spilled registers.
    assert result["unet_in"] and all(c["cin"] % 16 == 0 and c["norm"] for c in result["unet_in"])
    assert result["unet_in_flags"] and not [
        f for flags in result["unet_in_flags"] for f in flags if "spill" in f or "8/16-bit" in f
    ], result


def test_sass_line_parsing_handles_long_kernels_and_widths(monkeypatch):
    """Addresses grow past four hex digits in big kernels (a 13k-line conv was once read as
    having no loads at all); widths come from the opcode's suffix."""
    spec = importlib.util.spec_from_file_location("sass_audit", ROOT / "tools" / "sass_audit.py")
    sa = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sass_audit", sa)  # its dataclasses look their module up
    spec.loader.exec_module(sa)
    lines = [
        "        /*0090*/                   LDC R82, c[0x0][0x268] ;",
        "        /*14430*/               @P5 LDG.E.U16 R7, desc[UR28][R166.64] ;",
        "        /*1a4f0*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R4.64] ;",
        "        /*1a500*/               @!PT HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;",
    ]
    ops = [sa._OPCODE.search(line).group(1) for line in lines]
    assert ops == ["LDC", "LDG.E.U16", "LDGSTS.E.BYPASS.128", "HGMMA.64x64x16.F32.BF16"]
    assert [sa._width(op) for op in ops[1:3]] == ["16", "128"]
    assert sa._width("LDG.E.64") == "64" and sa._width("STG.E") == "32"
