#!/usr/bin/env python
"""What the Triton kernels become on a Hopper GPU, read without one.

    python tools/sass_audit.py                     # CDT-base and CDT-small encode+decode, 256x256
    python tools/sass_audit.py --presets base --size 720 --all-configs

It captures a real engine encode and decode (``cdt_fast.accelerate(model, backend="triton")``,
bf16) on CPU tensors of the real shapes with every Triton launch intercepted instead of run, then
compiles each distinct launch for ``sm_90a`` exactly as the JIT would on the GPU (same argument
specialisation: 16-byte alignment of pointers and integers, integers equal to 1, constexprs, the
tile the kernel's table chooses) -- the mechanism of ``cdt-fast warmup``
(:mod:`cdt_fast.engine.warmup`) -- and reads the cubin with Triton's bundled ``cuobjdump``:

* registers per thread, stack (spill) bytes, shared memory per program vs the 227 KiB limit;
* tensor-core instructions: ``HGMMA`` (wgmma, Hopper's fast path), ``HMMA`` (mma.sync, the
  pre-Hopper path) or none;
* global memory instructions by width: ``LDGSTS`` (cp.async, pipelined loads), ``LDG``/``STG``
  with 128/64/32/16-bit accesses (narrow accesses on a contiguous channel axis waste bandwidth);
* local-memory traffic (``LDL``/``STL``: register arrays spilled to memory).

It measures nothing: these are the compiler's facts, read before spending device time. The
verdict column flags what usually costs speed. ``--all-configs`` compiles every candidate of the
opt-in autotuning instead of the tables' single tile. Results go to
``benchmarks/results/sass-sm90-<versions>.{json,md}`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from cdt_fast.engine.warmup import (
    Launch,
    capture_launches,
    capture_model,
    compile_launch,
    distinct_launches,
)
from cdt_fast.kernels._tiles import SHARED_MEMORY_LIMIT

__all__ = [
    "Launch",
    "KernelReport",
    "capture_launches",
    "capture_run",
    "compile_launch",
    "read_cubin",
    "audit_launches",
    "audit_run",
    "main",
]

ROOT = Path(__file__).resolve().parent.parent
# Shared memory a Hopper block may use (228 KiB per SM, 1 KiB reserved per block): the limit the
# tile tables are checked against.
HOPPER_SMEM_LIMIT = SHARED_MEMORY_LIMIT["sm_90"]


@dataclass
class KernelReport:
    kernel: str
    config: str
    count: int  # launches of one encode+decode with this specialisation
    registers: int
    stack_bytes: int
    shared_bytes: int
    tensor_core: str
    uses_dot: bool = False  # its source calls tl.dot: its SASS should hold wgmma
    instructions: Dict[str, int] = field(default_factory=dict)
    global_loads: Dict[str, int] = field(default_factory=dict)
    global_stores: Dict[str, int] = field(default_factory=dict)
    flags: List[str] = field(default_factory=list)
    compile_s: float = 0.0
    launch: int = 0  # which distinct launch (specialisation) of the run


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)")
_RESOURCES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _width(opcode: str) -> str:
    """Access width of a load/store opcode: ``LDG.E.128`` -> 128, ``LDG.E.U16`` -> 16."""
    for bits in ("128", "64", "U16", "S16", "U8", "S8"):
        if f".{bits}" in opcode:
            return bits.lstrip("US")
    return "32"


def read_cubin(cubin: bytes) -> Tuple[Dict[str, int], Counter]:
    """(resource usage, opcode counts) of a cubin, by cuobjdump."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run(
            [_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True, check=True
        ).stdout
        usage = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = _RESOURCES.search(usage)
    resources = (
        dict(zip(("registers", "stack", "static_shared", "local"), map(int, found.groups())))
        if found
        else {}
    )
    return resources, Counter(m.group(1) for m in map(_OPCODE.search, sass.splitlines()) if m)


def _uses_dot(fn) -> bool:
    """Whether a JIT function or a jitted helper it calls (one module level deep) uses tl.dot."""
    import triton

    if "tl.dot(" in fn.src:
        return True
    helpers = (
        v
        for k, v in fn.fn.__globals__.items()
        if isinstance(v, triton.runtime.jit.JITFunction) and f"{k}(" in fn.src
    )
    return any("tl.dot(" in h.src for h in helpers)


def _report(
    name: str, config: str, count: int, kernel, seconds: float, uses_dot: bool = False
) -> KernelReport:
    resources, opcodes = read_cubin(kernel.asm["cubin"])
    base = Counter()
    loads, stores = Counter(), Counter()
    for op, n in opcodes.items():
        head = op.split(".")[0]
        base[head] += n
        if head in ("LDG", "LDGSTS"):
            loads[f"{head}.{_width(op)}"] += n
        elif head == "STG":
            stores[f"STG.{_width(op)}"] += n
    tensor_core = "HGMMA" if base["HGMMA"] else "HMMA" if base["HMMA"] else "none"
    shared = int(kernel.metadata.shared) + resources.get("static_shared", 0)
    report = KernelReport(
        kernel=name,
        config=config,
        count=count,
        registers=resources.get("registers", -1),
        stack_bytes=resources.get("stack", 0),
        shared_bytes=shared,
        tensor_core=tensor_core,
        uses_dot=uses_dot,
        instructions={
            k: base[k]
            for k in (
                "HGMMA",
                "HMMA",
                "FFMA",
                "LDGSTS",
                "LDG",
                "STG",
                "LDS",
                "STS",
                "LDL",
                "STL",
                "BAR",
                "SHFL",
            )
            if base[k]
        },
        global_loads=dict(loads),
        global_stores=dict(stores),
        compile_s=round(seconds, 2),
    )
    report.flags = verdict(report)
    return report


def verdict(r: KernelReport) -> List[str]:
    """What in the compiled code usually costs speed (leads, not measurements)."""
    flags = []
    if r.stack_bytes or r.instructions.get("LDL") or r.instructions.get("STL"):
        flags.append("spills to local memory")
    if r.shared_bytes > HOPPER_SMEM_LIMIT:
        flags.append("shared memory over the per-block limit: this config cannot launch")
    if r.uses_dot and r.tensor_core != "HGMMA":
        flags.append(f"dot without wgmma ({r.tensor_core})")
    narrow = sum(n for k, n in r.global_loads.items() if k.endswith((".16", ".8")))
    if narrow and narrow * 2 > sum(r.global_loads.values()):
        flags.append("mostly 8/16-bit global loads")
    if r.registers >= 255:
        flags.append("at the register cap")
    return flags


def _config_label(launch: Launch, config) -> str:
    """The tile of one compiled variant: an autotune candidate's, or the table's (the tile
    constexprs and warps/stages among the launch's keyword arguments)."""
    if config is not None:
        meta, warps, stages = config.kwargs, config.num_warps, config.num_stages
    else:
        kw = launch.kwargs
        meta = {k: v for k, v in kw.items() if k.startswith("BLOCK_") or k == "GROUP_M"}
        warps, stages = kw.get("num_warps", 4), kw.get("num_stages", 3)
    text = ",".join(f"{k}={v}" for k, v in sorted(meta.items()))
    return f"{text},w={warps},s={stages}"


def audit_launches(
    launches: Sequence[Launch],
    arch: int = 90,
    all_configs: bool = False,
    progress=None,
    kernels: Optional[Sequence[str]] = None,
) -> List[KernelReport]:
    """Compile every distinct launch among ``launches`` (same kernel, same specialisation) with
    its tile, or with each autotune candidate for launches captured with autotuning
    (``all_configs``; else the first); ``kernels``: only kernels whose name contains one of
    these strings."""
    work = []
    for launch_id, (launch, count) in enumerate(distinct_launches(launches, arch, kernels)):
        configs = launch.configs if launch.configs else [None]
        for config in configs if all_configs else configs[:1]:
            work.append((launch_id, launch, count, config))
    reports = []
    for i, (launch_id, launch, count, config) in enumerate(work):
        kwargs = dict(launch.kwargs)
        if config is not None:
            kwargs.update(config.all_kwargs())
        started = time.time()
        kernel = compile_launch(launch.fn, launch.args, kwargs, arch)
        report = _report(
            launch.name,
            _config_label(launch, config),
            count,
            kernel,
            time.time() - started,
            _uses_dot(launch.fn),
        )
        report.launch = launch_id
        reports.append(report)
        if progress is not None:
            progress(i + 1, len(work), report)
    return reports


def capture_run(
    preset: str,
    size: int,
    frames: int = 17,
    dtype=torch.bfloat16,
    *,
    arch: int = 90,
    encode: bool = True,
    decode: bool = True,
    autotune: bool = False,
    **overrides,
) -> List[Launch]:
    """The Triton launches of one engine encode and/or decode of ``frames`` frames at ``size``
    x ``size`` (random weights; ``overrides``: :class:`~cdt_fast.CDTConfig` fields, e.g.
    narrower networks for tests). ``autotune``: capture the autotuners' candidates."""
    return capture_model(
        preset,
        (size, size),
        frames,
        dtype,
        arch=arch,
        encode=encode,
        decode=decode,
        autotune=autotune,
        **overrides,
    )


def audit_run(
    preset: str,
    size: int,
    *,
    frames: int = 17,
    arch: int = 90,
    all_configs: bool = False,
    progress=None,
    kernels: Optional[Sequence[str]] = None,
    encode: bool = True,
    **overrides,
) -> List[KernelReport]:
    launches = capture_run(
        preset, size, frames, arch=arch, encode=encode, autotune=all_configs, **overrides
    )
    return audit_launches(launches, arch, all_configs, progress, kernels)


def _versions() -> Dict[str, str]:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__}


def to_markdown(results: Dict[str, List[dict]], versions: Dict[str, str], arch: int) -> str:
    """A summary per kernel, then every variant with a flag (``results``: the JSON's rows)."""
    lines = [
        f"# Triton kernels compiled for sm_{arch}a (static, no GPU)",
        "",
        f"Triton {versions['triton']}, torch {versions['torch']}. Written by "
        "`python tools/sass_audit.py`: every distinct launch of an engine encode and decode "
        "(bf16, random weights), compiled as the JIT would compile it on an H100 and read with "
        "cuobjdump. A variant is one launch specialisation with its tile (the kernel table's "
        "single tile, or with --all-configs each autotune candidate). Nothing here is a "
        "timing; the flags are leads for a GPU run.",
        "",
    ]
    for setting, rows in results.items():
        lines += [
            f"## {setting}",
            "",
            "| kernel | launches | variants | wgmma | spill | over smem | narrow loads | "
            "max regs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        by_kernel: Dict[str, List[dict]] = {}
        for r in rows:
            by_kernel.setdefault(r["kernel"], []).append(r)
        for name, group in by_kernel.items():
            launches = sum({r["launch"]: r["count"] for r in group}.values())

            def n_with(text, group=group):
                return sum(any(text in f for f in r["flags"]) for r in group)

            lines.append(
                f"| {name} | {launches} | {len(group)} | "
                f"{sum(r['tensor_core'] == 'HGMMA' for r in group)} | {n_with('spill')} | "
                f"{n_with('shared memory')} | {n_with('global loads')} | "
                f"{max(r['registers'] for r in group)} |"
            )
        flagged = [r for r in rows if r["flags"]]
        lines += ["", f"Flagged variants ({len(flagged)} of {len(rows)}):", ""]
        if flagged:
            lines += [
                "| kernel | config | regs | stack B | smem KiB | tensor core | loads | flags |",
                "|---|---|---:|---:|---:|---|---|---|",
            ]
            for r in flagged:
                loads = " ".join(f"{k}:{v}" for k, v in sorted(r["global_loads"].items()))
                lines.append(
                    f"| {r['kernel']} | {r['config']} | {r['registers']} | "
                    f"{r['stack_bytes']} | {r['shared_bytes'] / 1024:.0f} | "
                    f"{r['tensor_core']} | {loads} | {'; '.join(r['flags'])} |"
                )
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="base,small", help="comma list of base, small")
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (multiple of 8)")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100)")
    p.add_argument(
        "--all-configs",
        action="store_true",
        help="compile every candidate of the opt-in autotuning, not the tables' tiles (slow: "
        "about a second per variant, hundreds of variants per preset)",
    )
    p.add_argument(
        "--kernels",
        default=None,
        help="comma list: audit only kernels whose name contains one of these",
    )
    p.add_argument("--decode-only", action="store_true", help="audit the decode alone")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("sass_audit: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    if args.size <= 0 or args.size % 8:
        raise SystemExit(f"sass_audit: --size must be a positive multiple of 8, got {args.size}")
    presets = [p for p in args.presets.split(",") if p]
    from cdt_fast.checkpoint import atomic_write

    def progress(done, total, report):
        print(
            f"  [{done}/{total}] {report.kernel} {report.config}: {report.registers} regs, "
            f"{report.tensor_core}, {'; '.join(report.flags) or 'ok'}",
            file=sys.stderr,
            flush=True,
        )

    results: Dict[str, List[KernelReport]] = {}
    for preset in presets:
        run = "decode" if args.decode_only else "encode+decode"
        setting = f"CDT-{preset} {run}, {args.frames} frames {args.size}x{args.size}, bf16"
        print(f"{setting}: capturing and compiling", file=sys.stderr, flush=True)
        results[setting] = audit_run(
            preset,
            args.size,
            frames=args.frames,
            arch=args.arch,
            all_configs=args.all_configs,
            progress=progress,
            kernels=args.kernels.split(",") if args.kernels else None,
            encode=not args.decode_only,
        )
    versions = _versions()
    rows = {k: [asdict(r) for r in v] for k, v in results.items()}
    text = to_markdown(rows, versions, args.arch)
    print(text)
    if not args.no_write:
        stem = args.results_dir / f"sass-sm{args.arch}-triton{versions['triton']}-{args.size}"
        payload = {
            "schema": "cdt_fast-sass-audit/1",
            "arch": args.arch,
            "versions": versions,
            "results": rows,
        }
        # (not with_suffix: the version's dots would be taken for one)
        atomic_write(
            stem.parent / f"{stem.name}.json",
            lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1) + "\n"),
        )
        atomic_write(stem.parent / f"{stem.name}.md", lambda tmp: Path(tmp).write_text(text + "\n"))
        print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
