"""What a result was measured on: device, library versions, torch settings, git revision."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

import torch

__all__ = [
    "REPO_ROOT",
    "cpu_model",
    "describe",
    "device_key",
    "git_revision",
    "load_average",
    "package_version",
    "slug",
    "torch_settings",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(dist: str) -> Optional[str]:
    """The installed version of distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_revision(root: Path = REPO_ROOT) -> Dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the checkout the benchmark ran from
    (``CDT_FAST_GIT_COMMIT`` names the commit where the checkout has no ``.git``)."""

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None and os.environ.get("CDT_FAST_GIT_COMMIT", "").strip():
        # A copy of the tree without .git (as on a remote GPU machine): the commit its caller names.
        return {
            "commit": os.environ["CDT_FAST_GIT_COMMIT"].strip(),
            "dirty": None,
            "source": "CDT_FAST_GIT_COMMIT",
        }
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def torch_settings() -> Dict[str, Any]:
    return {
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }


def describe(device: torch.device) -> Dict[str, Any]:
    """The header of a results file."""
    cuda = device.type == "cuda"
    info: Dict[str, Any] = {
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "cpu_model": cpu_model(),
        "cpu_count": _cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": package_version("triton"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cdt_fast": package_version("cdt_fast"),
        "git": git_revision(),
        "torch_settings": torch_settings(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # Other processes competing for the cores skew CPU timings; this says how busy it was.
        "load_average_at_start": load_average(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_bytes"] = int(props.total_memory)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["driver_visible_gpus"] = torch.cuda.device_count()
    return info


def load_average() -> Optional[list]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_count() -> Optional[int]:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def device_key(info: Dict[str, Any]) -> str:
    """File-name key of a results file: the GPU name, or ``cpu-<model>``, plus the torch version,
    e.g. ``nvidia-h100-80gb-hbm3-torch2.13.0`` or ``cpu-amd-epyc-torch2.13.0-cpu``."""
    name = info.get("gpu_name") or f"cpu-{info.get('cpu_model', 'unknown')}"
    return f"{slug(name)}-torch{slug(info['torch'])}"
