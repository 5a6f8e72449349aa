"""``cdt-fast info PATH``: what a checkpoint, latent or video file holds."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Dict, Tuple

from .. import video_io
from ..video_io.sources import is_glob
from . import _common

_PICKLES = (".ckpt", ".pt", ".pth", ".bin")


def _tensor_shapes(path: Path) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """name -> (shape, dtype), without reading tensor data where the format allows."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {
                    key: (tuple(f.get_slice(key).get_shape()), str(f.get_slice(key).get_dtype()))
                    for key in f.keys()
                }
        except Exception as err:  # safetensors' own error type for a corrupt header
            raise ValueError(
                f"{path} is not a readable .safetensors file ({str(err).splitlines()[0]})"
            ) from None
    from ..checkpoint import read_state_dict

    return {
        k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in read_state_dict(path).items()
    }


def _describe_checkpoint(path: Path) -> dict:
    from ..config import config_from_file

    shapes = _tensor_shapes(path)
    params = 0
    for shape, _ in shapes.values():
        n = 1
        for s in shape:
            n *= s
        params += n
    prefixes = Counter(".".join(k.split(".")[:2]) for k in shapes)
    config = config_from_file(path)
    out = {
        "kind": "model checkpoint",
        "path": str(path),
        "tensors": len(shapes),
        "parameters": params,
        "dtypes": dict(Counter(d for _, d in shapes.values())),
        "modules": dict(prefixes),
    }
    if config is not None:
        out["config"] = config.to_dict()
        out["architecture_hash"] = config.architecture_hash()
    else:
        out["config"] = None
    return out


def describe(path: str, allow_truncated: bool = False) -> dict:
    """A JSON-able summary of ``path``: a latent file, a checkpoint or a video."""
    from .. import latents

    p = Path(path)
    if not p.exists() and not is_glob(path):
        raise FileNotFoundError(f"not found: {path}")
    if latents.is_latent_file(p):
        info = latents.read_latent_metadata(p)
        return {
            "kind": "latent",
            "path": str(p),
            "latent_shape": list(info.shape),
            "model": info.config.name,
            "architecture_hash": info.architecture_hash,
            "latent_scale": info.latent_scale,
            "video": info.video,
            "config": info.config.to_dict(),
        }
    if p.suffix in (".safetensors",) + _PICKLES:
        return _describe_checkpoint(p)
    v = video_io.probe(path, allow_truncated=allow_truncated)
    out = {
        "kind": "video",
        "path": path,
        "frames": v.frames,
        "height": v.height,
        "width": v.width,
        "fps": str(v.fps),
        "codec": v.codec,
        "timing": v.timing_text,
    }
    if v.rotation:
        out["rotation"] = v.rotation  # degrees counter-clockwise the frames are turned upright
    if v.truncated:
        out["truncated"] = True
    return out


def _print_text(d: dict) -> None:
    print(f"{d['path']}: {d['kind']}")
    for key, value in d.items():
        if key in ("path", "kind", "config"):
            continue
        print(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    if d.get("config") is not None:
        print("  config: " + json.dumps(d["config"]))
    elif d["kind"] == "model checkpoint":
        print("  config: none stored (an upstream state dict: load it with --preset base|small)")


def _info(args: argparse.Namespace) -> int:
    summary = describe(args.path, args.allow_truncated)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_text(summary)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show what a checkpoint, latent or video file holds",
        description="Show what a file holds: a model checkpoint (config, "
        "tensors, parameter count), a latent file (shape, model, "
        "video metadata) or a video (frames, size, fps, codec).",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print JSON")
    _common.add_allow_truncated_arg(p)
    p.set_defaults(func=_info)
