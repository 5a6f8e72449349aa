"""The op calls of ``tools/gpu_smoke.py``: recorded from a real engine encode and decode as JSON
(shapes, strides, storage offsets and aliasing, no values), and materialised again as tensors with
random values (or empty, to capture their launches)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

SCRIPT = Path(__file__).resolve().with_name("gpu_smoke.py")
# Arguments that are weights: drawn N(0, 1/fan_in) (fan_in: the elements per output channel).
WEIGHT_ARGS = ("weight", "w_qkv", "w_out")

__all__ = ["as_fp32", "encode_argument", "materialise", "record_calls", "record_in_child"]


# -- step 1: the op calls of a real encode and decode --------------------------------------------


def _tensor_spec(t: torch.Tensor, storages: Dict[int, int]) -> dict:
    key = t.untyped_storage().data_ptr()
    storage = storages.setdefault(key, len(storages))
    spec = {
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "offset": t.storage_offset(),
        "dtype": str(t.dtype).replace("torch.", ""),
        "storage": storage,
        "storage_numel": t.untyped_storage().nbytes() // t.element_size(),
    }
    if t.dim() == 0:  # a scalar the engine computed (e.g. a DDIM coefficient): keep its value
        spec["value"] = t.item()
    return {"tensor": spec}


def encode_argument(value: Any, storages: Dict[int, int]) -> Any:
    """An op argument as JSON: tensors as specs, tuples tagged (the ops take some as tuples)."""
    if isinstance(value, torch.Tensor):
        return _tensor_spec(value, storages)
    if isinstance(value, tuple):
        return {"tuple": [encode_argument(v, storages) for v in value]}
    if isinstance(value, list):
        return [encode_argument(v, storages) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record an op argument of type {type(value).__name__}")


def _config_overrides(preset: str, tiny: bool) -> dict:
    """CDTConfig fields for the benchmark's narrow test networks (``benchmarks/run.py --tiny``)."""
    if not tiny:
        return {}
    from benchmarks.plan import model_config
    from cdt_fast import CDTConfig

    narrow, full = (
        dataclasses.asdict(model_config(preset, True)),
        dataclasses.asdict(CDTConfig.preset(preset)),
    )
    return {k: v for k, v in narrow.items() if v != full[k]}


def record_calls(
    preset: str, size: Tuple[int, int], frames: int, arch: int, tiny: bool = False
) -> List[dict]:
    """The engine's Triton op calls for one bf16 encode and decode of ``preset``, as JSON-ready
    dicts (``op``, ``args``, ``kwargs``, ``kernels``: the kernel names it launched), one per
    distinct set of kernel compilations, in the order the engine first made them."""
    from cdt_fast.engine.warmup import OpCall, capture_model, specialise

    calls: List[OpCall] = []
    launches = capture_model(
        preset,
        size,
        frames,
        torch.bfloat16,
        arch=arch,
        calls=calls,
        **_config_overrides(preset, tiny),
    )
    seen, kept = set(), []
    for call in calls:
        mine = launches[call.first : call.end]
        keys = frozenset(
            specialise(launch.fn, launch.args, launch.compile_kwargs(), arch)[-1] for launch in mine
        )
        if not keys or keys in seen:
            continue
        seen.add(keys)
        storages: Dict[int, int] = {}
        kept.append(
            {
                "op": call.op,
                "args": encode_argument(call.args, storages)["tuple"],
                "kwargs": {k: encode_argument(v, storages) for k, v in call.kwargs.items()},
                "kernels": sorted({launch.name for launch in mine}),
            }
        )
    return kept


def record_in_child(args: argparse.Namespace, arch: int) -> Dict[str, List[dict]]:
    """Step 1 in a fresh interpreter without TRITON_INTERPRET (capturing needs compiled kernel
    objects, and this process's are interpreted)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "calls.json"
        cmd = [sys.executable, str(SCRIPT), "--record-calls", str(out)]
        cmd += ["--presets", ",".join(args.presets), "--size", f"{args.size[0]}x{args.size[1]}"]
        cmd += ["--frames", str(args.frames), "--arch", str(arch)] + (
            ["--tiny"] if args.tiny else []
        )
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"recording the op calls failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(out.read_text())


# -- inputs ---------------------------------------------------------------------------------------


def _decode(value: Any, make) -> Any:
    if isinstance(value, dict) and "tensor" in value:
        return make(value["tensor"])
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode(v, make) for v in value["tuple"])
    if isinstance(value, list):
        return [_decode(v, make) for v in value]
    return value


def materialise(
    call: dict, dtype: torch.dtype, device: torch.device, seed: Optional[int] = None
) -> Tuple[tuple, dict]:
    """A recorded call's arguments as tensors on ``device``: same shapes, strides, storage
    offsets and aliasing; floating tensors recorded in bf16 in ``dtype`` (fp32 ones stay fp32).
    With a ``seed``, random values drawn on the device (weights scaled to N(0, 1/fan_in));
    without one, empty (enough to capture launches)."""
    storages: Dict[Tuple[int, torch.dtype], torch.Tensor] = {}
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)

    def make(spec: dict) -> torch.Tensor:
        recorded = getattr(torch, spec["dtype"])
        want = dtype if recorded == torch.bfloat16 else recorded
        if "value" in spec:
            return torch.tensor(spec["value"], dtype=want, device=device)
        key = (spec["storage"], want)
        if key not in storages:
            if generator is None:
                buf = torch.empty(spec["storage_numel"], dtype=want, device=device)
            else:
                numel = spec["storage_numel"]
                buf = torch.randn(numel, device=device, generator=generator).to(want)
            storages[key] = buf
        return storages[key].as_strided(spec["shape"], spec["stride"], spec["offset"])

    args = tuple(_decode(a, make) for a in call["args"])
    kwargs = {k: _decode(v, make) for k, v in call["kwargs"].items()}
    if seed is not None:
        from cdt_fast import functional

        bound = inspect.signature(getattr(functional, call["op"])).bind(*args, **kwargs)
        for name in WEIGHT_ARGS:
            weight = bound.arguments.get(name)
            if isinstance(weight, torch.Tensor) and weight.numel():
                weight.mul_((weight.numel() // weight.shape[0]) ** -0.5)
    return args, kwargs


def as_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, tuple):
        return tuple(as_fp32(v) for v in value)
    if isinstance(value, list):
        return [as_fp32(v) for v in value]
    return value
