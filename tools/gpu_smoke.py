#!/usr/bin/env python
"""Every Triton op of a real encode and decode, once, at its real shapes, against the torch op.

    python tools/gpu_smoke.py --out smoke.json [--presets small,base] [--dtypes bf16,fp32]
                              [--size 256x256] [--frames 17] [--device cuda] [--jobs N]
                              [--compile-timeout S] [--ops a,b] [--record-calls F | --calls F]

The first work of ``tools/gpu_check.sh`` on a GPU that has never run these kernels. Three steps:

1. **Record.** :func:`cdt_fast.engine.warmup.capture_model` runs an engine encode and decode of
   each preset (``backend="triton"``, random weights, CPU tensors, every launch intercepted) and
   records each op the engine sent to Triton. Of those calls, the first of each distinct set of
   kernel compilations is kept: every compiled kernel variant the model launches is exercised
   once. Capturing needs compiled (not interpreted) kernel objects, so under
   ``TRITON_INTERPRET=1`` this step runs in a child process without it (``--record-calls``;
   ``--calls`` replays such a file instead of recording).
2. **Compile.** The kept calls of every (preset, dtype) are replayed under the same interception
   with empty CPU tensors, and their kernels are compiled into Triton's cache by ``--jobs``
   forked workers, before this process runs any kernel. Skipped under the interpreter.
3. **Run.** Each call, on the device, with random inputs (activations N(0, 1), weights
   N(0, 1/fan_in), so activations stay O(1) as in the model): the Triton op, a synchronize after
   every kernel launch, then the same op of :mod:`cdt_fast.functional` on the inputs cast to
   fp32 (TF32 off: an IEEE fp32 oracle), compared under :func:`smoke_tolerance`.

``--out`` is rewritten (atomically) after every op, so a crash still leaves every finished op in
it and names the op (and kernel) that was running. After a CUDA error the device is probed; if
the error is sticky (every later call on the context would fail) the script records it and
exits, so that the phases after it start in fresh processes. A kernel that fails at launch
(e.g. out of shared memory) without poisoning the context is recorded and the next op runs.
Exit status: 0 all ops agree; 1 a mismatch or an op error; 2 the script failed before the ops
(the report's ``status`` says why); 3 stopped by SIGTERM; 4 a sticky CUDA error.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the checkout's tests/ and benchmarks/ packages
    sys.path.insert(1, str(ROOT))

import torch  # noqa: E402
from gpu_smoke_calls import as_fp32, materialise, record_calls, record_in_child  # noqa: E402

SCHEMA = "cdt_fast-gpu-smoke/1"
EXIT_MISMATCH, EXIT_FAILED, EXIT_STOPPED, EXIT_STICKY = 1, 2, 3, 4

__all__ = [
    "SCHEMA",
    "smoke_tolerance",
    "reduction_length",
    "record_calls",
    "materialise",
    "compare",
    "run_calls",
    "main",
]


# -- tolerances: the one place they come from ---------------------------------------------------


def smoke_tolerance(dtype: torch.dtype, k: int, scale: float) -> Tuple[float, float]:
    """(atol, rtol) for an op's output in ``dtype`` whose elements reduce ``k`` products, against
    the fp32 op on the same (rounded) inputs. The rule is the test suite's
    (``tests.helpers.tolerance``: fp32 error ~eps*k, 16-bit storage ~eps*sqrt(k), for products
    of unit variance) applied at the data's scale: ``scale`` is the RMS of one product, which
    :func:`compare` takes as the reference output's RMS over sqrt(k). Replace this function to
    change every tolerance of the smoke test."""
    from tests.helpers import tolerance

    tol = tolerance(dtype, k)
    return tol["atol"] * scale, tol["rtol"]


def reduction_length(op: str, bound: Dict[str, Any]) -> int:
    """The longest reduction behind one output element of ``op`` (its tolerance's ``k``)."""
    if op in ("causal_conv3d", "causal_conv3d_norm", "time_downsample", "time_upsample"):
        weight = bound["weight"]
        k = weight.numel() // weight.shape[0]
        return max(k, weight.shape[0]) if op == "causal_conv3d_norm" else k
    if op == "channel_norm":
        return bound["x"].shape[1]
    if op in ("linear_attention", "linear_attention_block"):
        return max(bound["x"].shape[1], bound["w_qkv"].shape[0] // 3)
    return 1


# -- comparison -----------------------------------------------------------------------------------


def compare(op: str, out: torch.Tensor, ref: torch.Tensor, bound: Dict[str, Any]) -> dict:
    """How far the Triton op's ``out`` is from the fp32 ``ref``: ``ok``, the largest error and
    the tolerance it had, and ``worst``: the largest |error| / (atol + rtol |ref|)."""
    if out.shape != ref.shape:
        return {"ok": False, "reason": f"shape {list(out.shape)}, expected {list(ref.shape)}"}
    if out.dtype == torch.uint8:  # frames: one step where a half-way value rounds apart
        err = (out.int() - ref.int()).abs().max().item() if out.numel() else 0
        return {"ok": err <= 1, "max_abs_err": err, "atol": 1, "rtol": 0.0, "k": 1}
    got, want = out.float(), ref.float()
    finite = torch.isfinite(want)
    if not torch.equal(torch.isfinite(got), finite):
        return {"ok": False, "reason": "non-finite values where the reference has none"}
    k = reduction_length(op, bound)
    rms = want[finite].square().mean().sqrt().item() if finite.any() else 0.0
    atol, rtol = smoke_tolerance(out.dtype, k, max(rms, 1e-30) / math.sqrt(k))
    diff = (got - want)[finite].abs()
    allowed = atol + rtol * want[finite].abs()
    worst = (diff / allowed).max().item() if diff.numel() else 0.0
    return {
        "ok": bool(worst <= 1.0),
        "max_abs_err": diff.max().item() if diff.numel() else 0.0,
        "atol": atol,
        "rtol": rtol,
        "k": k,
        "ref_rms": rms,
        "worst": worst,
    }


# -- step 2: compile ------------------------------------------------------------------------------


def precompile(
    groups: Sequence[Tuple[str, str, List[dict]]],
    arch: int,
    jobs: int,
    timeout: Optional[float] = None,
) -> Dict[str, Any]:
    """Compile the kernels of (preset, dtype, calls) groups before they run: the calls are
    replayed on empty CPU tensors under launch interception, the distinct launches compiled by
    ``jobs`` forked workers within ``timeout`` seconds
    (:func:`cdt_fast.engine.warmup.compile_launches`)."""
    from cdt_fast.dtypes import dtype_from_name
    from cdt_fast.engine.dispatch import resolve
    from cdt_fast.engine.warmup import capture_launches, compile_launches, distinct_launches

    started = time.perf_counter()
    launches, failed = [], []
    cpu = torch.device("cpu")
    with capture_launches(arch) as captured, torch.no_grad():
        for preset, dtype_name, calls in groups:
            for i, call in enumerate(calls):
                fn, reason = resolve("triton", call["op"], cpu, {"TRITON_INTERPRET": "1"})
                if fn is None:
                    failed.append(f"{preset} {dtype_name} #{i} {call['op']}: {reason}")
                    continue
                args, kwargs = materialise(call, dtype_from_name(dtype_name), cpu)
                try:
                    fn(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - recorded; the run step reports it too
                    failed.append(f"{preset} {dtype_name} #{i} {call['op']}: {err}")
            launches += [launch for launch, _ in distinct_launches(captured, arch)]
            captured.clear()
    failed += compile_launches(launches, arch, jobs, timeout=timeout)
    return {
        "groups": [f"{preset} {dtype_name}" for preset, dtype_name, _ in groups],
        "kernels": len(launches),
        "jobs": jobs,
        "seconds": round(time.perf_counter() - started, 2),
        "failed": failed,
    }


# -- step 3: run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _synchronised_launches(device: torch.device, current: Dict[str, str]) -> Iterator[None]:
    """Each compiled Triton launch names itself in ``current`` and is followed by a synchronize,
    so that an asynchronous CUDA error surfaces at the kernel that caused it."""
    if device.type != "cuda":
        yield
        return
    from triton.runtime.jit import JITFunction

    original = JITFunction.run

    def run(self, *args, **kwargs):
        current["kernel"] = getattr(self, "__name__", str(self))
        result = original(self, *args, **kwargs)
        torch.cuda.synchronize(device)
        return result

    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = original


def device_usable(device: torch.device) -> bool:
    """False when the CUDA context is poisoned (a sticky error: every later call fails)."""
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add_(1).item() == 2.0
    except RuntimeError:
        return False


class Stopped(BaseException):
    """SIGTERM: record that the run was stopped and leave."""


def _shapes(args: tuple, kwargs: dict) -> str:
    items = [("", a) for a in args] + list(kwargs.items())
    return " ".join(
        f"{name + '=' if name else ''}{'x'.join(map(str, v.shape)) or 'scalar'}"
        for name, v in items
        if isinstance(v, torch.Tensor)
    )


def run_calls(
    groups: Sequence[Tuple[str, str, List[dict]]],
    device: torch.device,
    report: dict,
    write,
    seed: int = 0,
) -> int:
    """Step 3 over every group, appending one result per call to ``report["results"]`` and
    calling ``write()`` after each. Returns the exit status."""
    from cdt_fast import functional
    from cdt_fast.dtypes import dtype_from_name
    from cdt_fast.engine.dispatch import resolve

    env = {"TRITON_INTERPRET": "1"} if device.type == "cpu" else None
    status = 0
    for preset, dtype_name, calls in groups:
        for i, call in enumerate(calls):
            op = call["op"]
            entry: Dict[str, Any] = {
                "preset": preset,
                "dtype": dtype_name,
                "call": i,
                "op": op,
                "kernels": call["kernels"],
            }
            report["results"].append(entry)
            current: Dict[str, str] = {}
            started = time.perf_counter()
            try:
                fn, reason = resolve("triton", op, device, env)
                if fn is None:
                    raise RuntimeError(f"no Triton function for {op}: {reason}")
                args, kwargs = materialise(call, dtype_from_name(dtype_name), device, seed + i)
                entry["shapes"] = _shapes(args, kwargs)
                with torch.no_grad(), _synchronised_launches(device, current):
                    out = fn(*args, **kwargs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                current.pop("kernel", None)
                with torch.no_grad():
                    ref = getattr(functional, op)(*as_fp32(args), **as_fp32(kwargs))
                bound = inspect.signature(getattr(functional, op)).bind(*args, **kwargs)
                entry.update(compare(op, out, ref, bound.arguments))
                entry["status"] = "ok" if entry["ok"] else "mismatch"
            except Exception as err:  # noqa: BLE001 - recorded with the kernel that was running
                entry.update(ok=False, status="error", error=f"{type(err).__name__}: {err}"[:600])
                if current.get("kernel"):
                    entry["kernel"] = current["kernel"]
                if not device_usable(device):
                    entry["status"] = "cuda-error"
                    report["status"] = "cuda-error"
                    report["stopped_at"] = f"{preset} {dtype_name} #{i} {op}"
                    entry["seconds"] = round(time.perf_counter() - started, 3)
                    write()
                    return EXIT_STICKY
            entry["seconds"] = round(time.perf_counter() - started, 3)
            if not entry["ok"]:
                status = EXIT_MISMATCH
            write()
    return status


# -- the script -----------------------------------------------------------------------------------


def _size(text: str) -> Tuple[int, int]:
    from cdt_fast.cli.warmup import parse_size

    return parse_size(text)


def _csv(allowed: Sequence[str]):
    def parse(text: str) -> List[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma list of {', '.join(allowed)}, got {text!r}"
            )
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    from cdt_fast.dtypes import DTYPE_NAMES
    from cdt_fast.engine.dispatch import implementations

    p = argparse.ArgumentParser(prog="tools/gpu_smoke.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="the JSON report, rewritten after every op")
    p.add_argument("--presets", type=_csv(("small", "base")), default=["small", "base"])
    p.add_argument("--dtypes", type=_csv(tuple(DTYPE_NAMES)), default=["bf16", "fp32"])
    p.add_argument("--size", type=_size, default=(256, 256), metavar="HxW")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--ops", type=_csv(tuple(implementations("triton"))), default=None)
    p.add_argument("--jobs", type=int, default=1, help="compile workers (forked)")
    p.add_argument(
        "--compile-timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop the compile workers of one dtype after S seconds (the JIT compiles the rest)",
    )
    p.add_argument("--arch", default=None, help="target of the capture (default: the GPU's)")
    p.add_argument("--tiny", action="store_true", help="narrow networks (tests only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--record-calls",
        type=Path,
        default=None,
        metavar="FILE",
        help="only record the op calls (step 1) into FILE, then exit",
    )
    p.add_argument(
        "--calls", type=Path, default=None, metavar="FILE", help="replay calls recorded so"
    )
    return p


def _arch(args: argparse.Namespace, device: torch.device) -> int:
    from cdt_fast.engine.warmup import parse_arch

    if args.arch is not None:
        return parse_arch(args.arch)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major * 10 + minor
    return 90  # the tile tables' sm_90 family: what the capture plans for on CPU


def _write_json(path: Optional[Path], payload: dict) -> None:
    if path is None:
        return
    from cdt_fast.checkpoint import atomic_write

    text = json.dumps(payload, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _new_report(args: argparse.Namespace, device: torch.device, arch: int, interpreted: bool):
    return {
        "schema": SCHEMA,
        "status": "running",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "arch": f"sm_{arch}",
        "torch": torch.__version__,
        "settings": {
            "presets": args.presets,
            "dtypes": args.dtypes,
            "size": list(args.size),
            "frames": args.frames,
            "tiny": args.tiny,
            "interpreted": interpreted,
        },
        "tolerance": inspect.getdoc(smoke_tolerance).split("\n\n")[0],
        "calls": {},
        "compile": [],
        "results": [],
    }


def _recorded_calls(
    args: argparse.Namespace, arch: int, interpreted: bool, report: Dict[str, Any]
) -> Dict[str, List[dict]]:
    """Step 1: the calls of every preset (recorded here, in a child, or read from ``--calls``),
    those of ``--ops`` only; their counts go into ``report``."""
    if args.calls is not None:
        recorded = json.loads(args.calls.read_text())
    elif interpreted:
        recorded = record_in_child(args, arch)
    else:
        recorded = {
            p: record_calls(p, args.size, args.frames, arch, args.tiny) for p in args.presets
        }
    missing = [p for p in args.presets if p not in recorded]
    if missing:
        raise ValueError(f"no recorded calls for {', '.join(missing)}")
    recorded = {p: recorded[p] for p in args.presets}
    for preset, calls in recorded.items():
        if args.ops is not None:
            recorded[preset] = [c for c in calls if c["op"] in args.ops]
        report["calls"][preset] = len(recorded[preset])
    report["planned"] = len(args.dtypes) * sum(len(c) for c in recorded.values())
    return recorded


def _summarise(report: Dict[str, Any], started: float) -> None:
    results = report["results"]
    report["summary"] = {
        s: sum(r.get("status") == s for r in results)
        for s in ("ok", "mismatch", "error", "cuda-error")
    }
    report["summary"]["not_run"] = report.get("planned", 0) - len(results)
    report["seconds"] = round(time.perf_counter() - started, 1)


def _print_summary(report: Dict[str, Any]) -> None:
    summary = report["summary"]
    print(
        f"gpu_smoke: {report['status']}: {summary['ok']} ok, {summary['mismatch']} mismatch, "
        f"{summary['error'] + summary['cuda-error']} error, {summary['not_run']} not run "
        f"({report['seconds']} s)"
    )
    for r in report["results"]:
        if not r.get("ok"):
            print(
                f"  {r['preset']} {r['dtype']} #{r['call']} {r['op']}: {r.get('status')} "
                f"{r.get('error') or r.get('reason') or r.get('worst')}"
            )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    from cdt_fast.availability import triton_interpreted

    if args.record_calls is not None:  # step 1 only, for a parent that runs interpreted
        arch = _arch(args, torch.device("cpu"))
        calls = {p: record_calls(p, args.size, args.frames, arch, args.tiny) for p in args.presets}
        _write_json(args.record_calls, calls)
        return 0
    if args.out is None:
        parser.error("--out is required")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    interpreted = triton_interpreted()
    if device.type == "cuda" and interpreted:
        parser.error("unset TRITON_INTERPRET: the interpreter runs on CPU tensors")
    if device.type == "cpu" and not interpreted:
        parser.error(
            "--device cpu runs the kernels under the Triton interpreter: set TRITON_INTERPRET=1"
        )
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # an IEEE fp32 oracle, and fp32 kernels to match
        torch.backends.cuda.matmul.allow_tf32 = False
    arch = _arch(args, device)
    report = _new_report(args, device, arch, interpreted)
    write = lambda: _write_json(args.out, report)  # noqa: E731

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    started = time.perf_counter()
    code = 0
    try:
        write()
        recorded = _recorded_calls(args, arch, interpreted, report)
        write()
        # The benchmark's dtype (bf16) first, CDT-small before CDT-base; each dtype's kernels
        # are compiled (in parallel) just before its calls run.
        for dtype_name in args.dtypes:
            groups = [(p, dtype_name, recorded[p]) for p in args.presets]
            if not interpreted:
                report["compile"].append(precompile(groups, arch, args.jobs, args.compile_timeout))
                write()
            code = max(code, run_calls(groups, device, report, write, args.seed))
            if code == EXIT_STICKY:
                break
        if report["status"] == "running":
            report["status"] = "done"
    except Stopped as why:
        report["status"] = f"stopped by {why}"
        if report["results"] and "status" not in report["results"][-1]:
            report["results"][-1]["status"] = "stopped"
        code = EXIT_STOPPED
    except Exception as err:  # noqa: BLE001 - the report says why, the traceback goes to stderr
        traceback.print_exc()
        report["status"] = f"failed: {type(err).__name__}: {err}"[:600]
        code = EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
        _summarise(report, started)
        write()
    _print_summary(report)
    return code


if __name__ == "__main__":
    sys.exit(main())
