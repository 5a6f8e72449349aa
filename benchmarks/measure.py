"""Measuring a plan: per model every implementation is built from one fp32 master, then each
(setting, op) times them interleaved (:mod:`benchmarks.timing`) on the same seeded inputs, and
each timing becomes a row (:mod:`benchmarks.rows`) with its PSNR against the fp32 eager
reference's output. A failing implementation, or one whose engine ran none of its backend's
ops, is listed under ``plan.skipped`` with the reason; the others go on.

In one process all implementations get the same seeded random weights (or ``--ckpt``), the same
input video, latent and decode noise.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from benchmarks import flops, impls, timing
from benchmarks.plan import Plan, Setting, model_config
from benchmarks.rows import attach_record, make_row, psnr_against
from cdt_fast import CDT, CDTConfig, randomize_
from cdt_fast.api import load as load_model
from cdt_fast.chunking import latent_frames

__all__ = [
    "Progress",
    "build_master",
    "make_inputs",
    "reference_outputs",
    "count_steps",
    "run_model",
    "run_peer",
    "run_plan",
]

Row = Dict[str, Any]


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
    video = (1, config.channels, s.frames, s.height, s.width)
    x = torch.rand(*video, generator=_generator(seed)) * 2 - 1
    noise = torch.randn(*video, generator=_generator(seed + 1))
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


def count_steps(plan: Plan) -> int:
    """The progress bar's steps of :func:`run_plan`."""
    main = plan.main_settings()
    timed = sum(len(plan.ops) if s.suite == "main" else 1 for s in plan.settings)
    return len(plan.models) * (len(main) + timed) + (len(main) if plan.peer else 0)


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


def _time_op(
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


def _failure(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"failed: {type(err).__name__}: {text[:300]}"


@dataclass
class _ModelRun:
    """One model's measurement: its config, fp32 reference outputs and built implementations."""

    plan: Plan
    header: Dict[str, Any]
    model: str
    progress: Progress
    rows: List[Row]
    config: CDTConfig
    refs: Dict[Setting, Dict[str, torch.Tensor]] = field(default_factory=dict)
    runners: Dict[str, impls.Runner] = field(default_factory=dict)
    flop_counts: Dict[Tuple[str, Setting], int] = field(default_factory=dict)

    def skip(self, reason: str, **where: str) -> None:
        self.plan.skipped.append({"model": self.model, **where, "reason": reason})

    def build(self, master: CDT) -> Dict[str, int]:
        """Reference outputs of the main settings and every implementation; returns each one's
        warm-up calls (on CPU in fp32 the reference runner is the master that just computed
        the reference outputs: those calls were its warm-up)."""
        plan = self.plan
        for s in plan.main_settings():
            self.progress.step(f"{self.model} fp32 reference outputs {s.label}")
            self.refs[s] = reference_outputs(master, self.config, s, plan.seed, plan.device)
            self.progress.done()
        for impl in plan.impls:
            try:
                self.runners[impl] = impls.build_runner(
                    impl, master, plan.device, plan.dtype, plan.compile_mode
                )
            except Exception as err:  # one broken implementation must not sink the others' rows
                self.skip(_failure(err), impl=impl)
        return {
            name: 0 if r.model is master and self.refs else plan.warmup
            for name, r in self.runners.items()
        }

    def measure_setting(self, s: Setting, warmups: Dict[str, int]) -> None:
        plan = self.plan
        z = self.refs[s]["encode"] if s in self.refs else None
        inputs = make_inputs(self.config, s, plan.seed, plan.device, z)
        for op in plan.ops if s.suite == "main" else ["decode"]:
            self.progress.step(
                f"{self.model} {op} {s.label} ({len(self.runners)} impls interleaved)"
            )
            if plan.out_of_time():
                plan.skip_for_time(self.model, f"{op} {s.label}")
            else:
                timings, errors = _time_op(plan, self.runners, op, inputs, warmups, s in self.refs)
                for impl, err in errors.items():
                    self.skip(_failure(err), impl=impl, op=op, setting=s.label)
                for impl in (i for i in self.runners if i in timings):
                    self._add_row(impl, op, s, timings[impl])
                del timings
            self.progress.done()

    def _add_row(self, impl: str, op: str, s: Setting, t: timing.Timing) -> None:
        if (op, s) not in self.flop_counts:
            self.flop_counts[(op, s)] = flops.count_macs(
                self.config, op, s.frames, s.height, s.width
            ).flops
        row = make_row(
            self.plan, self.header, self.model, impl, op, s, t, self.flop_counts[(op, s)]
        )
        record = self.runners[impl].record()
        problem = attach_record(row, record) if record is not None else None
        if problem is not None:
            self.skip(problem, impl=impl, op=op, setting=s.label)
            return
        if s in self.refs:
            row["psnr_vs_reference"], row["max_abs_err_vs_reference"] = psnr_against(
                t.output, self.refs[s][op], op
            )
            if row["psnr_vs_reference"] is None:
                row["psnr_note"] = "bitwise equal to the fp32 reference"
        else:
            row["psnr_note"] = "not computed for the memory-vs-length series"
        t.output = None
        self.rows.append(row)


def run_model(
    plan: Plan, header: Dict[str, Any], model: str, progress: Progress, rows: List[Row]
) -> None:
    """Measures one model: every implementation is built, then each (setting, op) times them
    interleaved. Rows are appended to ``rows`` as they are measured (so that an interrupted run
    keeps them)."""
    if plan.out_of_time():
        plan.skip_for_time(model, "all")
        return
    config = model_config(model, plan.tiny)
    run = _ModelRun(plan, header, model, progress, rows, config)
    try:
        warmups = run.build(build_master(config, plan.seed, plan.ckpts.get(model)))
        for s in plan.settings:
            run.measure_setting(s, warmups)
    finally:
        for runner in run.runners.values():
            impls.release(runner, plan.device)


def run_peer(plan: Plan, header: Dict[str, Any], progress: Progress, rows: List[Row]) -> None:
    """The peer's decode rows (:func:`benchmarks.impls.build_peer`), one per main setting,
    appended to ``rows``."""
    runner, reason = impls.build_peer(plan.device, plan.dtype, plan.seed)
    if runner is None:
        plan.skipped.append({"model": impls.PEER_MODEL, "reason": reason})
        for _ in plan.main_settings():
            progress.done()
        return
    config = CDTConfig.base()  # only for the latent's shape: 16 channels, 4x time, 8x space
    try:
        for s in plan.main_settings():
            progress.step(f"peer decode {s.label}")
            if plan.out_of_time():
                plan.skip_for_time(impls.PEER_MODEL, f"decode {s.label}")
            else:
                _peer_row(plan, header, runner, config, s, rows)
            progress.done()
    finally:
        impls.release(runner, plan.device)


def _peer_row(plan: Plan, header, runner: impls.Runner, config, s: Setting, rows) -> None:
    inputs = make_inputs(config, s, plan.seed, plan.device)
    warmups = {runner.name: plan.warmup}
    timings, errors = _time_op(plan, {runner.name: runner}, "decode", inputs, warmups, False)
    if errors:
        plan.skipped.append({"model": impls.PEER_MODEL, "reason": _failure(errors[runner.name])})
        return
    t = timings[runner.name]
    row = make_row(plan, header, impls.PEER_MODEL, runner.name, "decode", s, t, None, suite="peer")
    row["psnr_note"] = "a different model (Wan 2.1 VAE, random weights): no reference"
    row["pct_peak_note"] = "no FLOP model for the peer"
    rows.append(row)


def run_plan(
    plan: Plan,
    header: Dict[str, Any],
    progress: Progress,
    rows: Optional[List[Row]] = None,
) -> List[Row]:
    """Every row of the plan, appended to ``rows`` (when given) as each is measured."""
    rows = [] if rows is None else rows
    for model in plan.models:
        run_model(plan, header, model, progress, rows)
    if plan.peer and plan.models:
        run_peer(plan, header, progress, rows)
    return rows
