"""The training loop: AdamW, warmup + cosine LR, grad clipping, EMA, bf16 autocast on CUDA,
resumable checkpoints and DDP."""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..api import save
from ..checkpoint import atomic_write, load_into, read_state_dict, save_state_dict
from ..config import CONFIG_METADATA_KEY
from ..data import ClipDataset, StepBatches
from ..reference import CDT
from .config import TrainConfig
from .distributed import Dist, params_digest, setup_distributed
from .ema import EMA
from .losses import CDTLoss

__all__ = ["Trainer", "lr_factor"]

STATE_FILE = "trainer_state.pt"


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Trains a CDT on ``dataset`` into ``out_dir``.

    ``out_dir`` receives ``metrics.jsonl`` (one JSON object per logged step), ``train_config.json``,
    ``checkpoints/step_NNNNNNN/`` (``model.safetensors`` and ``ema.safetensors`` in the upstream
    state-dict format with their config, plus ``trainer_state.pt``: optimizer, scheduler, RNG
    states, step) and, at the end, ``model.safetensors`` / ``ema.safetensors``.
    ``resume=True`` continues from the latest checkpoint bit-for-bit (same world size).
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: ClipDataset,
        out_dir: Union[str, Path],
        resume: bool = False,
        init_weights: Optional[Union[str, Path]] = None,
        lpips: Optional[torch.nn.Module] = None,
        device: Optional[str] = None,
        progress: bool = True,
        dist_info: Optional[Dist] = None,
    ):
        self.config = config
        self.out = Path(out_dir)
        self.dist = dist_info or setup_distributed(device)
        self.progress = progress and self.dist.is_main
        cfg, dev = config, self.dist.device

        torch.manual_seed(cfg.seed)  # the same fresh initialisation on every rank
        self.model = CDT(cfg.model).float().train()
        if init_weights is not None:
            load_into(
                self.model, read_state_dict(init_weights), strict=True, source=str(init_weights)
            )
        self.model.to(dev)
        self.loss_fn = CDTLoss(
            self.model, cfg.loss, lpips.to(dev) if lpips is not None else None, cfg.t_range
        )
        self._start(dataset, resume)

    def _start(self, dataset, resume: bool) -> None:
        """Everything after the model and its loss exist (``self.model``, ``self.loss_fn``):
        DDP, optimizer, LR schedule, EMA, RNG, batches; then resume, or claim a fresh run folder.
        Shared by every trainer built on this loop."""
        cfg, dev = self.config, self.dist.device
        self.loss_fn.to(dev)
        self.ddp = (
            DistributedDataParallel(
                self.loss_fn, device_ids=[dev.index] if dev.type == "cuda" else None
            )
            if self.dist.enabled
            else self.loss_fn
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        )
        self.ema = EMA(self.model, cfg.ema_decay)
        self.generator = torch.Generator(device=dev).manual_seed(cfg.seed * 1009 + self.dist.rank)
        self.batches = StepBatches(
            dataset, cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world_size
        )
        self.step = 0
        if resume:
            self._resume()
            return
        if self.latest_checkpoint() is not None:
            raise ValueError(
                f"{self.out} already holds a run's checkpoints: pass resume=True "
                "(--resume) to continue it, or choose another output folder"
            )
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            config_text = json.dumps(cfg.to_dict(), indent=2)
            atomic_write(
                self.out / "train_config.json", lambda tmp: Path(tmp).write_text(config_text)
            )
            metrics = self.out / "metrics.jsonl"
            if metrics.exists():
                metrics.unlink()

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Optional[Path]:
        pointer = self.checkpoint_dir / "latest"
        if not pointer.is_file():
            return None
        return self.checkpoint_dir / pointer.read_text().strip()

    def _rng_state(self) -> Dict:
        state = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "generator": self.generator.get_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self) -> Optional[Path]:
        """Write ``checkpoints/step_N`` (rank 0) and point ``latest`` at it, last, so that a crash
        mid-write leaves the previous checkpoint in charge."""
        rng = self.dist.gather_objects(self._rng_state())  # every rank's RNG, saved by rank 0
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        folder = self.checkpoint_dir / f"step_{self.step:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        self._write_weights(folder)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "world_size": self.dist.world_size,
            "config": self.config.to_dict(),
        }
        atomic_write(folder / STATE_FILE, lambda tmp: torch.save(state, tmp))
        atomic_write(
            self.checkpoint_dir / "latest", lambda tmp: Path(tmp).write_text(folder.name + "\n")
        )
        old = sorted(p for p in self.checkpoint_dir.glob("step_*") if p.is_dir() and p != folder)
        for stale in old[: max(0, len(old) - (self.config.keep_checkpoints - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
        self.dist.barrier()
        return folder

    def _write_weights(self, folder: Path) -> None:
        """``model.safetensors`` and ``ema.safetensors`` in ``folder`` (a checkpoint or the run's
        final export): the one place a trainer subclass changes what its weights carry."""
        save(self.model, folder / "model.safetensors")
        meta = {CONFIG_METADATA_KEY: json.dumps(self.model.config.to_dict())}
        save_state_dict(self.ema.state_dict(), folder / "ema.safetensors", metadata=meta)

    def _resume(self) -> None:
        folder = self.latest_checkpoint()
        if folder is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.checkpoint_dir}")
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
        if state["world_size"] != self.dist.world_size:
            warnings.warn(
                f"resuming a run of {state['world_size']} processes with "
                f"{self.dist.world_size}: training continues, but not bit-for-bit",
                stacklevel=2,
            )
        load_into(
            self.model,
            read_state_dict(folder / "model.safetensors"),
            strict=True,
            source=str(folder),
        )
        self.ema.load_state_dict(read_state_dict(folder / "ema.safetensors"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"][min(self.dist.rank, len(state["rng"]) - 1)]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["generator"].to(self.generator.get_state().device))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = int(state["step"])
        if self.dist.is_main:  # drop log lines written after the checkpoint
            metrics = self.out / "metrics.jsonl"
            if metrics.exists():
                kept = [
                    line
                    for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step
                ]
                text = "".join(line + "\n" for line in kept)
                atomic_write(metrics, lambda tmp: Path(tmp).write_text(text))

    # -- loop --------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        return DataLoader(
            self.batches,
            batch_sampler=self.batches.batches(self.step),
            num_workers=self.config.num_workers,
            pin_memory=self.dist.device.type == "cuda",
        )

    def loss_parts(self, batch) -> Dict[str, torch.Tensor]:
        """The loss and its logged parts for one batch from the loader, on the training device;
        a trainer of another model overrides only this."""
        return self.ddp(batch.to(self.dist.device, non_blocking=True), self.generator)

    def train_step(self, batch) -> Dict[str, torch.Tensor]:
        dev = self.dist.device
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
        )
        with autocast:
            parts = self.loss_parts(batch)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return parts

    def fit(self, until: Optional[int] = None) -> Dict[str, float]:
        """Train until step ``until`` (default: ``config.steps``); checkpoint every
        ``ckpt_every`` steps and at the end. Returns the last logged values."""
        cfg = self.config
        until = cfg.steps if until is None else min(until, cfg.steps)
        last: Dict[str, float] = {}
        if self.step >= until:
            return last
        bar = None
        if self.progress and sys.stderr.isatty():  # a log file gets no bar
            from tqdm.auto import tqdm

            bar = tqdm(total=until, initial=self.step, desc="train", dynamic_ncols=True)
        start = time.perf_counter()
        try:
            for x in self._loader():
                parts = self.train_step(x)
                if self.step % cfg.log_every == 0 or self.step == until:
                    last = self._log(parts, time.perf_counter() - start)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.ckpt_every == 0 and self.step < until:
                    self.save_checkpoint()
                if self.step >= until:
                    break
        finally:
            if bar is not None:
                bar.close()
        self.save_checkpoint()
        if self.step >= cfg.steps:
            self.export()
        return last

    def _log(self, parts: Dict[str, torch.Tensor], elapsed: float) -> Dict[str, float]:
        values = self.dist.mean(parts)
        record = {
            "step": self.step,
            **values,
            "lr": self.scheduler.get_last_lr()[0],
            "elapsed_s": round(elapsed, 3),
        }
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    def ranks_agree(self) -> bool:
        """Whether every rank holds bit-identical weights (always True for one process)."""
        digests = self.dist.gather_objects(params_digest(self.model))
        return len(set(digests)) == 1

    def export(self) -> None:
        """``model.safetensors`` (raw weights) and ``ema.safetensors`` in ``out_dir``."""
        if self.dist.is_main:
            self._write_weights(self.out)
        self.dist.barrier()
