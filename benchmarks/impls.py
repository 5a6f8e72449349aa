"""The implementations the benchmark compares, behind one interface: ``Runner.run(op, inputs)``.

- ``reference``: the eager reference model (``cdt_fast.CDT``), contiguous tensors, as upstream runs.
- ``reference-cl``: the same with weights and inputs in ``torch.channels_last_3d`` (the cuDNN
  baseline: NDHWC is cuDNN's fast layout for 3D convs on tensor cores).
- ``reference-compiled``: the reference with its three network entry points (encoder, context
  decoder, U-Net) wrapped in ``torch.compile``; the chunk loop stays eager, as a user would do it.
- ``engine-<backend>``: ``cdt_fast.accelerate(model, backend=..., dtype=...)`` for every backend
  ``cdt_fast.backends()`` reports available (only ``torch`` when the engine has no ``backends()``).
  Its runner reads the engine's execution record (``Runner.record``), the backends each op ran
  on, which the rows carry.
- peer: diffusers' ``AutoencoderKLWan`` (the Wan 2.1 video VAE) decoding a latent of the same
  shape, random weights: a different model, shown for scale only.

All of them are built from one fp32 master model on the CPU (seeded random or checkpoint weights),
so they share weights exactly.
"""

from __future__ import annotations

import copy
import gc
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

import cdt_fast
from cdt_fast import CDT

__all__ = [
    "REFERENCE_IMPLS",
    "Inputs",
    "Runner",
    "engine_backends",
    "resolve_impls",
    "build_runner",
    "build_peer",
    "release",
]

REFERENCE_IMPLS = ("reference", "reference-cl", "reference-compiled")
PEER_MODEL = "wan2.1-vae"
PEER_IMPL = "diffusers-AutoencoderKLWan (peer: a different model)"


@dataclass
class Inputs:
    """One setting's inputs, on the benchmark device: video ``x`` [B,3,T,H,W] in [-1, 1],
    latent ``z`` and the decode's standard-normal ``noise`` (so every decode is comparable)."""

    x: Optional[torch.Tensor]
    z: torch.Tensor
    noise: torch.Tensor


class Runner:
    """An implementation prepared on one device and dtype; ``run(op, inputs)`` returns the op's
    output (latent for encode, video for decode and roundtrip)."""

    def __init__(
        self,
        name: str,
        model,
        memory_format: Optional[torch.memory_format] = None,
        ops: Tuple[str, ...] = ("encode", "decode", "roundtrip"),
    ):
        self.name = name
        self.model = model
        self.memory_format = memory_format
        self.ops = ops
        self.records = name.startswith("engine-")

    def reset_record(self) -> None:
        """Start the engine's execution record afresh (nothing to do for other runners)."""
        if self.records:
            self.model.reset_execution_record()

    def record(self) -> Optional[Dict[str, Any]]:
        """The engine's execution record since :meth:`reset_record` (``{"ops": {op: {backend:
        calls}}, "cuda_graphs": {...}}``), or None for a reference or peer runner."""
        return self.model.execution_record() if self.records else None

    def _prep(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.memory_format is None else t.contiguous(memory_format=self.memory_format)

    def run(self, op: str, inputs: Inputs) -> torch.Tensor:
        if op == "encode":
            return self.model.encode(self._prep(inputs.x))
        if op == "decode":
            return self.model.decode(self._prep(inputs.z), noise=inputs.noise)
        if op == "roundtrip":
            if type(self.model).forward is nn.Module.forward:  # no forward of its own
                return self.model.decode(
                    self.model.encode(self._prep(inputs.x)), noise=inputs.noise
                )
            return self.model(self._prep(inputs.x), noise=inputs.noise)
        raise ValueError(f"op must be encode, decode or roundtrip, got {op!r}")


class _PeerDecoder:
    """diffusers' VAE behind the ``decode(z, noise=...)`` call of our runners (noise unused: the
    VAE decoder is deterministic)."""

    def __init__(self, vae):
        self.vae = vae

    @torch.no_grad()
    def decode(self, z: torch.Tensor, noise=None) -> torch.Tensor:
        return self.vae.decode(z.to(self.vae.dtype)).sample


def engine_backends() -> Tuple[Dict[str, Tuple[bool, str]], Optional[str]]:
    """({backend: (available, reason)}, None), or ({}, why there is no engine)."""
    if not hasattr(cdt_fast, "accelerate"):
        return {}, ("cdt_fast.accelerate is not in this build, so there are no engine rows")
    if not hasattr(cdt_fast, "backends"):
        return {"torch": (True, "")}, None
    out: Dict[str, Tuple[bool, str]] = {}
    for name, info in dict(cdt_fast.backends()).items():
        if name == "auto":
            continue
        out[str(name)] = (
            bool(getattr(info, "available", False)),
            str(getattr(info, "reason", "") or ""),
        )
    return out, None


def resolve_impls(
    requested: Optional[List[str]], device: torch.device, full: bool
) -> Tuple[List[str], List[Dict[str, str]], List[str]]:
    """(impls to run, skipped [{impl, reason}], notes). ``requested`` None means the default set:
    on CUDA every impl; on CPU the reference, engines and, with ``--full`` only, the compiled and
    channels-last references."""
    backends, no_engine = engine_backends()
    skipped: List[Dict[str, str]] = []
    notes: List[str] = []
    if no_engine:
        skipped.append({"impl": "engine", "reason": no_engine})
    engines = [f"engine-{b}" for b, (ok, _) in backends.items() if ok]
    for b, (ok, reason) in backends.items():
        if not ok:
            skipped.append({"impl": f"engine-{b}", "reason": reason or "backend unavailable"})

    if requested is None:
        impls = ["reference"]
        if device.type == "cuda" or full:
            impls += ["reference-cl", "reference-compiled"]
        else:
            why = (
                "skipped on CPU without --full: torch.compile of the preset networks takes "
                "minutes on a few cores, longer than the whole default run"
            )
            skipped.append({"impl": "reference-compiled", "reason": why})
            skipped.append(
                {
                    "impl": "reference-cl",
                    "reason": "skipped on CPU without --full: "
                    "channels_last_3d is the cuDNN baseline layout",
                }
            )
            notes.append(f"reference-compiled {why}; pass --full to include it.")
        return impls + engines, skipped, notes

    impls: List[str] = []
    for name in requested:
        if name in REFERENCE_IMPLS:
            impls.append(name)
        elif name == "engine":
            impls += engines
        elif name.startswith("engine-"):
            backend = name[len("engine-") :]
            if backend in backends and backends[backend][0]:
                impls.append(name)
            elif not no_engine and backend not in backends:
                raise ValueError(
                    f"--impls: unknown engine backend {backend!r}; known: {sorted(backends)}"
                )
        else:
            raise ValueError(
                f"--impls: unknown implementation {name!r}; expected one of "
                f"{list(REFERENCE_IMPLS)}, 'engine' or 'engine-<backend>'"
            )
    return list(dict.fromkeys(impls)), skipped, notes


def _compile_reference(model: CDT, mode: Optional[str]) -> CDT:
    compile_ = lambda fn: torch.compile(fn, mode=mode)  # noqa: E731
    ctx, unet = model.context_model, model.unet
    # Instance attributes shadow the methods; the master's modules are not touched.
    ctx.encode = compile_(ctx.encode)
    ctx.decode = compile_(ctx.decode)
    unet.forward = compile_(unet.forward)
    return model


def build_runner(
    name: str,
    master: CDT,
    device: torch.device,
    dtype: torch.dtype,
    compile_mode: Optional[str] = None,
) -> Runner:
    """Prepare implementation ``name`` from the fp32 CPU ``master`` (never modified)."""
    if name == "reference" and device.type == "cpu" and dtype == torch.float32:
        return Runner(name, master)  # the master itself: no copy of the weights
    if name.startswith("engine-"):
        model = copy.deepcopy(master).to(device)
        engine = cdt_fast.accelerate(model, backend=name[len("engine-") :], dtype=dtype)
        if not all(
            callable(getattr(engine, m, None))
            for m in ("execution_record", "reset_execution_record")
        ):
            raise TypeError(
                "this engine has no execution_record(): which backend ran each op is unknown, "
                "so its rows could not say what they measured"
            )
        return Runner(name, engine)
    model = copy.deepcopy(master).to(device=device, dtype=dtype).eval()
    if name == "reference":
        return Runner(name, model)
    if name == "reference-cl":
        return Runner(
            name,
            model.to(memory_format=torch.channels_last_3d),
            memory_format=torch.channels_last_3d,
        )
    if name == "reference-compiled":
        return Runner(name, _compile_reference(model, compile_mode))
    raise ValueError(f"unknown implementation {name!r}")


def build_peer(
    device: torch.device, dtype: torch.dtype, seed: int
) -> Tuple[Optional[Runner], Optional[str]]:
    """(runner, None) for diffusers' AutoencoderKLWan with seeded random weights, or
    (None, reason) when it cannot be built: diffusers or the class missing, or any failure while
    importing (diffusers' lazy imports raise RuntimeError, not ImportError) or constructing it.
    A peer is optional: its failure is a "Not measured" line, never the end of the run."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as err:
        return None, f"diffusers with AutoencoderKLWan is not installed ({err})"
    except Exception as err:  # noqa: BLE001 - a broken optional install must not end the run
        return None, f"diffusers' AutoencoderKLWan does not import: {_one_line(err)}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan()
        vae = vae.to(device=device, dtype=dtype).eval()
    except Exception as err:  # noqa: BLE001 - e.g. out of memory on a small device
        return None, f"diffusers' AutoencoderKLWan could not be built: {_one_line(err)}"
    return Runner(PEER_IMPL, _PeerDecoder(vae), ops=("decode",)), None


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}"


def release(runner: Optional[Runner], device: torch.device) -> None:
    """Drop a runner's weights and caches before the next implementation is measured, so that
    peak memory counts one implementation at a time."""
    compiled = runner is not None and runner.name == "reference-compiled"
    if runner is not None:
        runner.model = None
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
