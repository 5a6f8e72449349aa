#!/usr/bin/env python
"""The CDT benchmark: reference vs compiled reference vs engine, CDT-base vs CDT-small.

    python benchmarks/run.py                  # best device present, its default settings
    python benchmarks/run.py --full           # more settings (and, on CPU, torch.compile too)
    python benchmarks/run.py --models small --ops decode --sizes 17x256x256 --impls reference,engine
    python benchmarks/run.py --publish        # write benchmarks/results/ and the README table
    python benchmarks/run.py --readme-table benchmarks/results/<key>.json

Defaults. CUDA: the paper's settings, 17 frames at 256x256 and 720x720, bf16, every
implementation, plus a decode memory-vs-length series at 720x720 (65 and 129 frames; 257 with
--full). CPU: reduced sizes so that the run ends within about 3 minutes on 2 cores: 9 frames at
64x64, fp32, the real preset widths, encode and decode (roundtrip, 17 frames, 128x128, a decode
length series and ``reference-compiled`` only with --full). Every row says whether its setting
is reduced.

Statistics: per (model, setting, op) the implementations are interleaved (timing.py): after a
warm-up, every round times one call of each implementation in rotated order; rows give the
median over rounds and the min-max spread, and a ratio whose spreads overlap is marked not
significant.

In one process all implementations get the same seeded random weights (or ``--ckpt``), the same
input video, latent and decode noise; ``psnr_vs_reference`` compares each output with the fp32
eager reference's. Results: markdown on stdout, and ``<device-key>.{json,md,png}`` in
``benchmarks/results/local/`` (git-ignored: running the benchmark leaves the checkout clean), or
with ``--publish`` in ``benchmarks/results/`` with the README's table regenerated; JSON also in
``--out``. All files are written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import environment, flops, impls, kernel_summary, report, timing  # noqa: E402
from cdt_fast import CDT, CDTConfig, randomize_  # noqa: E402
from cdt_fast.api import load as load_model  # noqa: E402
from cdt_fast.checkpoint import atomic_write  # noqa: E402
from cdt_fast.chunking import latent_frames  # noqa: E402

__all__ = [
    "main",
    "build_parser",
    "make_plan",
    "run_plan",
    "Interrupted",
    "ROW_FIELDS",
    "SCHEMA",
    "attach_record",
    "EXIT_INTERRUPTED",
]

SCHEMA = "cdt_fast-benchmark/1"
EXIT_INTERRUPTED = 3  # SIGTERM during the run: the rows measured so far were still written
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
PAPER_FRAMES, PAPER_SIZES = 17, ((256, 256), (720, 720))
TINY_WIDTH = 8
ROW_FIELDS = (
    "model",
    "impl",
    "op",
    "device",
    "dtype",
    "frames",
    "height",
    "width",
    "batch",
    "suite",
    "widths",
    "reduced",
    "latency_ms_p20",
    "latency_ms_p50",
    "latency_ms_p80",
    "latency_ms_min",
    "latency_ms_max",
    "samples_ms",
    "repeats",
    "warmup",
    "frames_per_s",
    "peak_mem_bytes",
    "peak_mem_delta_bytes",
    "mem_method",
    "flops",
    "tflops",
    "pct_peak",
    "pct_peak_note",
    "psnr_vs_reference",
    "max_abs_err_vs_reference",
    "psnr_note",
    "ran_on",
    "backends_used",
    "cuda_graphs",
)


@dataclass(frozen=True)
class Setting:
    frames: int
    height: int
    width: int
    suite: str  # "main" (every op, PSNR) or "length" (decode only: memory vs video length)


@dataclass
class Plan:
    device: torch.device
    dtype: torch.dtype
    models: List[str]
    impls: List[str]
    ops: List[str]
    settings: List[Setting]
    warmup: int
    repeats: int  # rounds: timed calls per implementation
    min_repeats: int
    max_time_s: Optional[float]
    tiny: bool
    seed: int
    compile_mode: Optional[str]
    ckpts: Dict[str, str]
    peer: bool
    deadline: Optional[float] = None  # time.perf_counter() value of --time-budget's end
    notes: List[str] = field(default_factory=list)
    skipped: List[Dict[str, str]] = field(default_factory=list)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def main_settings(self) -> List[Setting]:
        return [s for s in self.settings if s.suite == "main"]

    def reduced(self, s: Setting) -> bool:
        """Smaller than the paper's settings (the length series varies frames by design)."""
        paper_size = (s.height, s.width) in PAPER_SIZES
        return self.tiny or not paper_size or (s.suite == "main" and s.frames != PAPER_FRAMES)


# -- command line --------------------------------------------------------------------------------


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _frames_list(text: str) -> List[int]:
    if text.strip().lower() in ("none", "0", ""):
        return []
    out = []
    for t in _csv(text):
        n = int(t)
        if n < 1 or (n - 1) % 4:
            raise argparse.ArgumentTypeError(f"frames must be 1 + 4k (1, 5, 9, 17, ...), got {n}")
        out.append(n)
    return out


def _sizes(text: str) -> List[Tuple[int, int]]:
    out = []
    for t in _csv(text):
        h, _, w = t.lower().partition("x")
        h, w = int(h), int(w or h)
        if h < 8 or w < 8 or h % 8 or w % 8:
            raise argparse.ArgumentTypeError(f"sizes must be multiples of 8 (S or HxW), got {t!r}")
        out.append((h, w))
    return out


def _shapes(text: str) -> List[Tuple[int, int, int]]:
    out = []
    for t in _csv(text):
        parts = t.lower().split("x")
        try:
            f, h, w = (int(v) for v in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"sizes must be TxHxW (e.g. 17x256x256), got {t!r}"
            ) from None
        if f < 1 or (f - 1) % 4:
            raise argparse.ArgumentTypeError(f"sizes: frames must be 1 + 4k, got {t!r}")
        if h < 8 or w < 8 or h % 8 or w % 8:
            raise argparse.ArgumentTypeError(f"sizes: H and W must be multiples of 8, got {t!r}")
        out.append((f, h, w))
    return out


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _dtype(text: str) -> torch.dtype:
    if text.lower() not in DTYPES:
        raise argparse.ArgumentTypeError(f"dtype must be one of {sorted(DTYPES)}, got {text!r}")
    return DTYPES[text.lower()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, help="also write the JSON results to this file")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where <device-key>.json/.md/.png go (default benchmarks/results/local, "
        "git-ignored; with --publish benchmarks/results)",
    )
    p.add_argument(
        "--publish",
        action="store_true",
        help="write the results into the committed benchmarks/results/ and regenerate the "
        "README performance table of this device from them",
    )
    p.add_argument(
        "--time-budget",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="stop measuring after this many seconds (the current measurement ends its "
        "round) and write the rows measured so far",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="more settings and repeats; on CPU also reference-compiled/-cl",
    )
    p.add_argument(
        "--models",
        type=_csv,
        default=None,
        help="comma list of base, small (default both); 'none' for kernels only",
    )
    p.add_argument(
        "--impls",
        type=_csv,
        default=None,
        help="comma list: reference, reference-cl, reference-compiled, engine (every "
        "available backend), engine-<backend> (default: per device)",
    )
    p.add_argument("--ops", type=_csv, default=None, help="comma list of encode, decode, roundtrip")
    p.add_argument(
        "--dtype",
        type=_dtype,
        default=None,
        help="fp32, fp16 or bf16 (default bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument("--frames", type=_frames_list, default=None, help="comma list of 1+4k")
    p.add_argument("--size", type=_sizes, default=None, help="comma list of S or HxW")
    p.add_argument(
        "--sizes",
        type=_shapes,
        default=None,
        help="comma list of TxHxW settings (e.g. 17x256x256), instead of --frames/--size",
    )
    p.add_argument(
        "--long-frames",
        type=_frames_list,
        default=None,
        help="decode memory-vs-length series at the largest size ('none' to skip)",
    )
    p.add_argument(
        "--ckpt",
        action="append",
        default=[],
        metavar="[MODEL=]PATH",
        help="checkpoint instead of random weights; MODEL= when benchmarking both",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help=f"narrow networks ({TINY_WIDTH} channels): for tests, not the real models",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: best present)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per implementation")
    p.add_argument(
        "--rounds",
        "--repeats",
        type=int,
        default=None,
        dest="repeats",
        help="interleaved rounds, each timing one call of every implementation",
    )
    p.add_argument(
        "--min-rounds",
        type=int,
        default=None,
        dest="min_repeats",
        help="rounds done even past --max-time (default 3; at most --rounds)",
    )
    p.add_argument(
        "--max-time",
        type=float,
        default=None,
        dest="max_time_s",
        help="stop adding rounds to a measurement after this many seconds (once --min-rounds "
        "are done)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of reference-compiled (default max-autotune on CUDA)",
    )
    p.add_argument("--no-peer", action="store_true", help="skip the diffusers peer row")
    p.add_argument(
        "--kernels",
        action="store_true",
        help="also run and summarise benchmarks/bench_*.py kernel microbenchmarks",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--tag", default=None, help="suffix of the results file names (e.g. one per --models run)"
    )
    p.add_argument(
        "--readme-table",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="print the README performance table of results JSON files and exit",
    )
    return p


def _parse_ckpts(values: Sequence[str], models: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in ("base", "small"):
            out[name] = path
        elif len(models) == 1:
            out[models[0]] = value
        else:
            raise ValueError("--ckpt: with several models, name the model: --ckpt base=PATH")
    return out


def make_plan(args: argparse.Namespace) -> Plan:
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
    cuda = device.type == "cuda"
    models = [] if args.models == ["none"] else (args.models or ["base", "small"])
    for m in models:
        if m not in ("base", "small"):
            raise ValueError(f"--models: expected base and/or small, got {m!r}")
    ops = args.ops or list(flops.OPS)
    for op in ops:
        if op not in flops.OPS:
            raise ValueError(f"--ops: expected some of {flops.OPS}, got {op!r}")
    if args.tiny and args.ckpt:
        raise ValueError("--tiny builds narrow networks that no checkpoint fits; drop --ckpt")

    if args.sizes is not None and (args.frames is not None or args.size is not None):
        raise ValueError("--sizes gives whole TxHxW settings: drop --frames/--size")
    if args.ops is None and not cuda and not args.full:
        # roundtrip is encode then decode: on CPU it would add their time again for no news
        ops = ["encode", "decode"]
    notes: List[str] = []
    custom = args.frames is not None or args.size is not None or args.sizes is not None
    if cuda:
        frames = args.frames or [PAPER_FRAMES]
        sizes = args.size or list(PAPER_SIZES)
        long_frames = [65, 129] + ([257] if args.full else [])
    else:
        frames = args.frames or ([9, 17] if args.full else [9])
        sizes = args.size or ([(64, 64), (128, 128)] if args.full else [(64, 64)])
        # At these sizes a decode is one chunk, so memory grows with length by design: the
        # series says little on CPU and would double the default run.
        long_frames = [17, 25, 33] if args.full else []
        if not custom:
            notes.append(
                "CPU run with REDUCED sizes: "
                + ", ".join(f"{f} frames" for f in frames)
                + " at "
                + ", ".join(f"{h}x{w}" for h, w in sizes)
                + " (the paper's 17 frames at 256x256 "
                "and 720x720 are the CUDA default), so that it ends in minutes on 2 cores. "
                + ("Tiny widths." if args.tiny else "Real CDT-base/CDT-small widths.")
            )
    if args.long_frames is not None:
        long_frames = args.long_frames
    elif custom:
        long_frames = []
    if args.tiny:
        notes.append(
            f"--tiny: networks {TINY_WIDTH} channels wide, not the real presets; "
            "numbers only exercise the pipeline."
        )
    if args.sizes is not None:
        settings = [Setting(f, h, w, "main") for f, h, w in args.sizes]
        largest = max(((h, w) for _, h, w in args.sizes), key=lambda s: s[0] * s[1])
        frames = [f for f, _, _ in args.sizes]
    else:
        settings = [Setting(f, h, w, "main") for h, w in sizes for f in frames]
        largest = max(sizes, key=lambda s: s[0] * s[1])
    if "decode" in ops:
        settings += [Setting(f, *largest, "length") for f in long_frames if f not in frames]

    impl_names, skipped, impl_notes = impls.resolve_impls(args.impls, device, args.full)
    notes += impl_notes
    full_repeats = 20 if cuda else 7
    repeats = (
        args.repeats
        if args.repeats is not None
        else (full_repeats if args.full else (10 if cuda else 5))
    )
    min_repeats = args.min_repeats if args.min_repeats is not None else min(3, repeats)
    if repeats < 1 or min_repeats < 1 or min_repeats > repeats:
        raise ValueError(
            f"--rounds must be >= 1 and --min-rounds in [1, --rounds], got {repeats}, {min_repeats}"
        )
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    return Plan(
        device=device,
        dtype=args.dtype or (torch.bfloat16 if cuda else torch.float32),
        models=models,
        impls=impl_names,
        ops=ops,
        settings=settings,
        warmup=args.warmup if args.warmup is not None else (3 if cuda else 1),
        repeats=repeats,
        min_repeats=min_repeats,
        max_time_s=args.max_time_s if args.max_time_s is not None else (60.0 if cuda else 20.0),
        tiny=args.tiny,
        seed=args.seed,
        compile_mode=args.compile_mode or ("max-autotune" if cuda else None),
        ckpts=_parse_ckpts(args.ckpt, models),
        peer=not args.no_peer and "decode" in ops,
        notes=notes,
        skipped=skipped,
    )


# -- models and inputs ---------------------------------------------------------------------------


def model_config(name: str, tiny: bool) -> CDTConfig:
    if not tiny:
        return CDTConfig.preset(name)
    out_channels = CDTConfig.preset(name).out_channels
    return CDTConfig.preset(
        name,
        context_dim=TINY_WIDTH,
        unet_dim=TINY_WIDTH,
        out_channels=min(out_channels, TINY_WIDTH),
    )


def build_master(config: CDTConfig, seed: int, ckpt: Optional[str]) -> CDT:
    """The fp32 CPU model every implementation is built from."""
    if ckpt:
        return load_model(config, ckpt, device="cpu", dtype=torch.float32)
    return randomize_(CDT(config), seed=seed).eval()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_inputs(
    config: CDTConfig, s: Setting, seed: int, device: torch.device, z: Optional[torch.Tensor] = None
) -> impls.Inputs:
    """Seeded inputs of a setting: the same for every implementation. ``z`` (the fp32 reference's
    encoding of ``x``) replaces the random latent when given."""
    sf = config.space_factor
    lt = latent_frames(s.frames, config.time_factor)
    x = (
        torch.rand(1, config.channels, s.frames, s.height, s.width, generator=_generator(seed)) * 2
        - 1
    )
    noise = torch.randn(
        1, config.channels, s.frames, s.height, s.width, generator=_generator(seed + 1)
    )
    if z is None:
        z = torch.randn(
            1, config.latent_dim, lt, s.height // sf, s.width // sf, generator=_generator(seed + 2)
        )
    return impls.Inputs(x.to(device) if s.suite == "main" else None, z.to(device), noise.to(device))


@torch.no_grad()
def reference_outputs(
    master: CDT, config: CDTConfig, s: Setting, seed: int, device: torch.device
) -> Dict[str, torch.Tensor]:
    """The fp32 eager reference's outputs on the setting's inputs, on the CPU:
    encode -> latent, decode/roundtrip -> video (decode runs on the reference's own latent, so the
    decode and roundtrip references are one tensor)."""
    model = master.to(device)
    try:
        inputs = make_inputs(config, s, seed, device)
        z = model.encode(inputs.x)
        y = model.decode(z, noise=inputs.noise)
        return {"encode": z.cpu(), "decode": y.cpu(), "roundtrip": y.cpu()}
    finally:
        master.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


# -- one measurement -----------------------------------------------------------------------------


def psnr_against(out: torch.Tensor, ref: torch.Tensor, op: str) -> Tuple[Optional[float], float]:
    """(PSNR in dB or None when equal, max abs error). The peak is 2 for videos (range [-1, 1])
    and the reference latent's range for encode."""
    out = out.detach().float().cpu()
    ref = ref.float()
    if out.shape != ref.shape:
        raise ValueError(
            f"output shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}"
        )
    diff = out - ref
    max_abs = float(diff.abs().max())
    mse = float(diff.pow(2).mean())
    if mse == 0.0:
        return None, max_abs
    peak = 2.0 if op != "encode" else float(ref.max() - ref.min())
    return 10.0 * math.log10(peak * peak / mse), max_abs


def pct_of_peak(
    tflops: Optional[float], header: Dict[str, Any], dtype_name: str
) -> Tuple[Optional[float], str]:
    if header.get("gpu_name") is None:
        return None, "no peak FLOP/s for CPUs: pct_peak is reported for CUDA devices only"
    label, peaks = flops.peak_tflops(header["gpu_name"])
    if peaks is None:
        return None, f"no peak table entry for {header['gpu_name']!r} (see benchmarks/flops.py)"
    key = dtype_name
    if dtype_name == "fp32" and header["torch_settings"]["cudnn_allow_tf32"]:
        key = "tf32"  # cuDNN runs fp32 convs on TF32 tensor cores when allowed (torch's default)
    if tflops is None:
        return None, "no FLOP count"
    return 100.0 * tflops / peaks[key], f"{label} dense {key} peak {peaks[key]} TFLOP/s"


def make_row(
    plan: Plan,
    header: Dict[str, Any],
    model: str,
    impl: str,
    op: str,
    s: Setting,
    t: timing.Timing,
    flop_count: Optional[int],
    suite: Optional[str] = None,
) -> Dict[str, Any]:
    seconds = t.p50 / 1e3
    tflops = flop_count / seconds / 1e12 if flop_count is not None else None
    pct, pct_note = pct_of_peak(tflops, header, plan.dtype_name)
    return {
        "model": model,
        "impl": impl,
        "op": op,
        "device": str(plan.device),
        "dtype": plan.dtype_name,
        "frames": s.frames,
        "height": s.height,
        "width": s.width,
        "batch": 1,
        "suite": suite or s.suite,
        "widths": "tiny" if plan.tiny else "preset",
        "reduced": plan.reduced(s),
        "latency_ms_p20": t.p20,
        "latency_ms_p50": t.p50,
        "latency_ms_p80": t.p80,
        "latency_ms_min": t.min,
        "latency_ms_max": t.max,
        "samples_ms": [round(v, 4) for v in t.samples_ms],
        "repeats": t.repeats,
        "warmup": t.warmup,
        "frames_per_s": s.frames / seconds,
        "peak_mem_bytes": t.peak_mem_bytes,
        "peak_mem_delta_bytes": t.peak_mem_delta_bytes,
        "mem_method": t.mem_method,
        "flops": flop_count,
        "tflops": tflops,
        "pct_peak": pct,
        "pct_peak_note": pct_note,
        "psnr_vs_reference": None,
        "max_abs_err_vs_reference": None,
        "psnr_note": None,
        "ran_on": None,
        "backends_used": None,
        "cuda_graphs": None,
    }


def attach_record(row: Dict[str, Any], record: Dict[str, Any]) -> Optional[str]:
    """Put an engine's execution record of the row's timed calls on ``row``: ``ran_on`` ({op:
    {backend: calls}}), ``backends_used`` (sorted) and ``cuda_graphs``. Returns why the row is
    not a result when the backend in its name ran none of its ops, else None."""
    ran_on = record["ops"]
    used = sorted({backend for counts in ran_on.values() for backend in counts})
    row["ran_on"], row["backends_used"] = ran_on, used
    row["cuda_graphs"] = record["cuda_graphs"]
    backend = report.engine_backend(row["impl"])
    if backend is not None and backend not in used:
        return (
            f"not a result: backend {backend} ran none of the timed calls' ops "
            f"(they ran on {', '.join(used) or 'nothing'})"
        )
    return None


# -- the run -------------------------------------------------------------------------------------


def _count_steps(plan: Plan) -> int:
    main = plan.main_settings()
    steps = len(plan.models) * (len(main) + _impl_steps(plan))
    return steps + (len(main) if plan.peer else 0)


class Progress:
    """A tqdm bar on stderr when it is a terminal (or nothing: a log file gets no bar)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)

    def step(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _resident_bytes(model: Any, inputs: impls.Inputs) -> int:
    """Bytes an implementation holds besides its calls' working memory: its weights (each
    storage once) and the inputs."""
    seen, total = set(), 0
    tensors: List[torch.Tensor] = []
    if isinstance(model, torch.nn.Module):
        tensors += list(model.parameters()) + list(model.buffers())
    elif isinstance(getattr(model, "vae", None), torch.nn.Module):
        tensors += list(model.vae.parameters()) + list(model.vae.buffers())
    tensors += [t for t in (inputs.x, inputs.z, inputs.noise) if t is not None]
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _measure(
    plan: Plan,
    runners: Dict[str, impls.Runner],
    op: str,
    inputs: impls.Inputs,
    warmups: Dict[str, int],
    keep_output: bool,
) -> Tuple[Dict[str, timing.Timing], Dict[str, BaseException]]:
    """Every runner's timing of ``op`` on ``inputs``, interleaved round by round."""
    with torch.no_grad():
        return timing.measure_interleaved(
            {name: (lambda r=runner: r.run(op, inputs)) for name, runner in runners.items()},
            plan.device,
            warmup=warmups,
            rounds=plan.repeats,
            min_rounds=plan.min_repeats,
            max_time_s=plan.max_time_s,
            deadline=plan.deadline,
            keep_output=keep_output,
            resident_bytes={
                name: _resident_bytes(runner.model, inputs) for name, runner in runners.items()
            },
            after_warmup=lambda name: runners[name].reset_record(),
        )


def _impl_steps(plan: Plan) -> int:
    return sum(len(plan.ops) if s.suite == "main" else 1 for s in plan.settings)


def _failure(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"failed: {type(err).__name__}: {text[:300]}"


def _out_of_time(plan: Plan) -> bool:
    return plan.deadline is not None and time.perf_counter() > plan.deadline


def _skip_for_time(plan: Plan, model: str, what: str) -> None:
    plan.skipped.append({"model": model, "setting": what, "reason": "not measured: --time-budget"})


def run_model(
    plan: Plan,
    header: Dict[str, Any],
    model: str,
    progress: Progress,
    rows: Optional[List[Dict[str, Any]]] = None,
) -> List[Dict[str, Any]]:
    """Measures one model: every implementation is built, then each (setting, op) times them
    interleaved. Rows are appended to ``rows`` as they are measured (so that an interrupted run
    keeps them) and returned."""
    rows = [] if rows is None else rows
    if _out_of_time(plan):
        _skip_for_time(plan, model, "all")
        return rows
    config = model_config(model, plan.tiny)
    master = build_master(config, plan.seed, plan.ckpts.get(model))
    refs: Dict[Setting, Dict[str, torch.Tensor]] = {}
    for s in plan.main_settings():
        progress.step(f"{model} fp32 reference outputs {s.frames}x{s.height}x{s.width}")
        refs[s] = reference_outputs(master, config, s, plan.seed, plan.device)
        progress.done()
    runners: Dict[str, impls.Runner] = {}
    try:
        for impl in plan.impls:
            try:
                runners[impl] = impls.build_runner(
                    impl, master, plan.device, plan.dtype, plan.compile_mode
                )
            except Exception as err:  # one broken implementation must not sink the others' rows
                plan.skipped.append({"model": model, "impl": impl, "reason": _failure(err)})
        # On CPU in fp32 the reference runner is the master that just computed the reference
        # outputs: those calls were its warm-up.
        warmups = {
            name: 0 if r.model is master and refs else plan.warmup for name, r in runners.items()
        }
        flop_counts: Dict[Tuple[str, Setting], int] = {}
        for s in plan.settings:
            ops = plan.ops if s.suite == "main" else ["decode"]
            z = refs[s]["encode"] if s in refs else None
            inputs = make_inputs(config, s, plan.seed, plan.device, z)
            for op in ops:
                label = f"{s.frames}x{s.height}x{s.width}"
                progress.step(f"{model} {op} {label} ({len(runners)} impls interleaved)")
                if _out_of_time(plan):
                    _skip_for_time(plan, model, f"{op} {label}")
                    progress.done()
                    continue
                timings, errors = _measure(plan, runners, op, inputs, warmups, s in refs)
                for impl, err in errors.items():
                    plan.skipped.append(
                        {
                            "model": model,
                            "impl": impl,
                            "op": op,
                            "setting": label,
                            "reason": _failure(err),
                        }
                    )
                if (op, s) not in flop_counts:
                    flop_counts[(op, s)] = flops.count_macs(
                        config, op, s.frames, s.height, s.width
                    ).flops
                for impl, runner in runners.items():
                    if impl not in timings:
                        continue
                    t = timings[impl]
                    row = make_row(plan, header, model, impl, op, s, t, flop_counts[(op, s)])
                    record = runner.record()
                    problem = attach_record(row, record) if record is not None else None
                    if problem is not None:
                        plan.skipped.append(
                            {
                                "model": model,
                                "impl": impl,
                                "op": op,
                                "setting": label,
                                "reason": problem,
                            }
                        )
                        continue
                    if s in refs:
                        row["psnr_vs_reference"], row["max_abs_err_vs_reference"] = psnr_against(
                            t.output, refs[s][op], op
                        )
                        if row["psnr_vs_reference"] is None:
                            row["psnr_note"] = "bitwise equal to the fp32 reference"
                    else:
                        row["psnr_note"] = "not computed for the memory-vs-length series"
                    t.output = None
                    rows.append(row)
                del timings
                progress.done()
            del inputs
    finally:
        for runner in runners.values():
            impls.release(runner, plan.device)
    return rows


def run_peer(
    plan: Plan,
    header: Dict[str, Any],
    progress: Progress,
    rows: Optional[List[Dict[str, Any]]] = None,
) -> List[Dict[str, Any]]:
    rows = [] if rows is None else rows
    runner, reason = impls.build_peer(plan.device, plan.dtype, plan.seed)
    if runner is None:
        plan.skipped.append({"model": impls.PEER_MODEL, "reason": reason})
        for _ in plan.main_settings():
            progress.done()
        return rows
    config = CDTConfig.base()  # only for the latent's shape: 16 channels, 4x time, 8x space
    try:
        for s in plan.main_settings():
            progress.step(f"peer decode {s.frames}x{s.height}x{s.width}")
            if _out_of_time(plan):
                _skip_for_time(plan, impls.PEER_MODEL, f"decode {s.frames}x{s.height}x{s.width}")
                progress.done()
                continue
            inputs = make_inputs(config, s, plan.seed, plan.device)
            timings, errors = _measure(
                plan, {runner.name: runner}, "decode", inputs, {runner.name: plan.warmup}, False
            )
            if errors:
                plan.skipped.append(
                    {"model": impls.PEER_MODEL, "reason": _failure(errors[runner.name])}
                )
                progress.done()
                continue
            t = timings[runner.name]
            row = make_row(
                plan, header, impls.PEER_MODEL, runner.name, "decode", s, t, None, suite="peer"
            )
            row["psnr_note"] = "a different model (Wan 2.1 VAE, random weights): no reference"
            row["pct_peak_note"] = "no FLOP model for the peer"
            rows.append(row)
            progress.done()
    finally:
        impls.release(runner, plan.device)
    return rows


def run_plan(
    plan: Plan,
    header: Dict[str, Any],
    progress: Progress,
    rows: Optional[List[Dict[str, Any]]] = None,
) -> List[Dict[str, Any]]:
    """Every row of the plan, appended to ``rows`` (when given) as each is measured."""
    rows = [] if rows is None else rows
    for model in plan.models:
        run_model(plan, header, model, progress, rows)
    if plan.peer and plan.models:
        run_peer(plan, header, progress, rows)
    return rows


class Interrupted(BaseException):
    """SIGTERM arrived (e.g. from ``timeout``). A BaseException, so that the per-implementation
    ``except Exception`` guards do not mistake it for one implementation failing."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """Within the block SIGTERM raises :class:`Interrupted`, so that a time guard around the
    whole run still gets the rows measured so far written instead of losing them all."""

    def stop(signum, frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (main() called from a worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- outputs -------------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _write_json(path: Path, payload: Dict[str, Any]) -> None:
    _write_text(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")


def build_header(plan: Plan, argv: Sequence[str]) -> Dict[str, Any]:
    header = environment.describe(plan.device)
    label, peaks = flops.peak_tflops(header.get("gpu_name"))
    backends, no_engine = impls.engine_backends()
    header.update(
        {
            "command": "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv),
            "dtype": plan.dtype_name,
            "seed": plan.seed,
            "warmup": plan.warmup,
            "repeats": plan.repeats,
            "min_repeats": plan.min_repeats,
            "statistics": "implementations interleaved: per round one timed call of each, order "
            "rotated by one per round; latency = median over rounds, spread = min-max; a ratio "
            "whose spreads overlap is not significant",
            "max_time_s": plan.max_time_s,
            "compile_mode": plan.compile_mode,
            "widths": "tiny" if plan.tiny else "preset",
            "weights": {
                m: plan.ckpts.get(m, f"random (cdt_fast.randomize_, seed {plan.seed})")
                for m in plan.models
            },
            "settings": [vars(s) for s in plan.settings],
            "impls": plan.impls,
            "engine_backends": {
                b: {"available": ok, "reason": why} for b, (ok, why) in backends.items()
            },
            "engine_missing": no_engine,
            "peak_tflops": {"gpu": label, **dict(peaks)} if peaks else None,
            "flop_model": "benchmarks/flops.py: MACs of convs, linears and attention matmuls, x2",
        }
    )
    return header


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.readme_table is not None:
        try:
            parts = [json.loads(Path(p).read_text()) for p in args.readme_table]
        except (OSError, ValueError) as err:
            parser.error(f"--readme-table: cannot read a results file: {err}")
        sys.stdout.write(report.readme_table(report.merge_results(parts)))
        return 0
    started = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        plan = make_plan(args)
    except ValueError as err:
        parser.error(str(err))
    if args.publish and args.results_dir is not None:
        parser.error("--publish writes benchmarks/results/: drop --results-dir")
    out_dir = Path(
        args.results_dir
        if args.results_dir is not None
        else (BENCH_DIR / "results" if args.publish else BENCH_DIR / "results" / "local")
    )
    if args.time_budget is not None:
        plan.deadline = started + args.time_budget
    if plan.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # recorded in the header's torch_settings
    header = build_header(plan, argv)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)

    progress = Progress(_count_steps(plan) + (1 if args.kernels else 0), not args.no_progress)
    rows: List[Dict[str, Any]] = []
    kernels = None
    interrupted = None
    try:
        with _sigterm_interrupts():
            run_plan(plan, header, progress, rows)
            if args.kernels:
                progress.step("kernel microbenchmarks")
                kernels = kernel_summary.summarise(BENCH_DIR)
                progress.done()
    except Interrupted as stop:
        interrupted = str(stop)
        note = (
            f"INTERRUPTED ({interrupted}) after {len(rows)} rows: partial results, the "
            "implementations and settings after the last row were not measured."
        )
        plan.notes.append(note)
        print(f"note: {note}", file=sys.stderr)
    finally:
        progress.close()

    header["load_average_at_end"] = environment.load_average()
    header["interrupted"] = interrupted
    header["wall_s"] = round(time.perf_counter() - started, 1)
    header["time_budget_s"] = args.time_budget
    if any(s.get("reason") == "not measured: --time-budget" for s in plan.skipped):
        note = (
            f"TIME BUDGET of {args.time_budget:g} s spent after {len(rows)} rows: partial "
            "results, the settings listed under 'Not measured' were not timed."
        )
        plan.notes.append(note)
        print(f"note: {note}", file=sys.stderr)
    rows.sort(key=lambda r: _row_order(plan, r))
    results = {
        "schema": SCHEMA,
        "header": header,
        "notes": plan.notes,
        "rows": rows,
        "ratios": report.compute_ratios(rows),
        "skipped": plan.skipped,
        "kernels": kernels,
    }
    key = (
        environment.device_key(header)
        + ("-tiny" if plan.tiny else "")
        + (f"-{environment.slug(args.tag)}" if args.tag else "")
    )
    _write_json(out_dir / f"{key}.json", results)
    if args.out is not None:
        _write_json(Path(args.out), results)
    markdown = report.render_markdown(results)
    _write_text(out_dir / f"{key}.md", markdown)
    if not args.no_plot:
        report.write_plot(results, out_dir / f"{key}.png")
    sys.stdout.write(markdown)
    print(
        f"\nwrote {out_dir / key}.json/.md"
        + ("" if args.no_plot else "/.png")
        + (f" and {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    if args.publish:
        readme = publish_readme_table(out_dir / f"{key}.json", out_dir, REPO_ROOT / "README.md")
        print(f"regenerated the performance table in {readme}", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else 0


def _row_order(plan: Plan, row: Dict[str, Any]) -> Tuple:
    """Rows as the tables read best: model, suite, implementation, setting, op (measurement
    interleaves the implementations, so rows arrive setting by setting)."""

    def position(seq: Sequence[Any], value: Any) -> int:
        return seq.index(value) if value in seq else len(seq)

    setting = Setting(row["frames"], row["height"], row["width"], row["suite"])
    return (
        position(plan.models, row["model"]),
        position(["main", "length", "peer"], row["suite"]),
        position(plan.impls, row["impl"]),
        position(plan.settings, setting),
        position(list(flops.OPS), row["op"]),
    )


def _replace_block(text: str, name: str, body: str, where: str) -> str:
    start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(
            f"{where}: expected one '{start.strip()}' line and one '{end}' line around the "
            f"performance table, found {text.count(start)} and {text.count(end)}"
        )
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return head + start + body.rstrip("\n") + "\n" + end + tail


def publish_readme_table(results_json: Path, results_dir: Path, readme: Path) -> Path:
    """Regenerate ``readme``'s performance table of the device of ``results_json`` (between
    ``<!-- perf-table-gpu -->`` and ``<!-- /perf-table-gpu -->`` for a GPU, ``<!-- perf-table
    -->`` and ``<!-- /perf-table -->`` for a CPU) from every results file of that device and
    widths in ``results_dir``, merged oldest first."""

    def key(data: Dict[str, Any]) -> Tuple[str, str]:
        return environment.device_key(data["header"]), data["header"].get("widths", "preset")

    mine = json.loads(Path(results_json).read_text())
    parts = []
    for path in sorted(p for p in Path(results_dir).glob("*.json") if p.is_file()):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("schema") == SCHEMA and key(data) == key(mine):
            parts.append(data)
    parts.sort(key=lambda d: d["header"].get("timestamp_utc", ""))
    block = "perf-table-gpu" if mine["header"].get("gpu_name") else "perf-table"
    table = report.readme_table(report.merge_results(parts))
    _write_text(readme, _replace_block(readme.read_text(), block, table, str(readme)))
    return readme


if __name__ == "__main__":
    sys.exit(main())
