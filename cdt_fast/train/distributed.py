"""torchrun/DDP plumbing: one process per device, gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Dist", "setup_distributed", "params_digest"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, values: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Average scalars over ranks (every rank must call it)."""
        names = sorted(values)
        stacked = torch.stack([values[k].detach().float() for k in names]).to(self.device)
        if self.enabled:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        return {k: float(v) for k, v in zip(names, stacked.cpu())}

    def gather_objects(self, obj) -> List:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device: Optional[str] = None) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group.
    Without it, a single process on ``device`` (default: cuda if available)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world
        )
    return Dist(rank=rank, world_size=world, local_rank=local, device=dev)


def params_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
