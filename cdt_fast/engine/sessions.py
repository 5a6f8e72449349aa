"""Sessions: the preallocated state of one stream shape (stream states, CUDA graphs, the default
chunk size and, for decode, the sampling schedule's constants), and the one chunk step each runs.
An :class:`~cdt_fast.engine.AcceleratedCDT` keeps a few, reused by later streams of the same shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from ..functional import ddim_coefficients
from ..reference import DDIMSchedule
from .graphs import ChunkGraphs
from .plan import Run
from .state import StreamState

if TYPE_CHECKING:
    from .accelerated import AcceleratedCDT

__all__ = ["DecodeSession", "EncodeSession", "Session", "graph_state", "run_or_none_on_oom"]


class Session:
    """The preallocated state of one stream shape: stream states, CUDA graphs, the default
    chunk size and (decode) the constants of the sampling schedule. Reused by later streams of
    the same shape: keeping the chunk plan is what lets their chunks replay the same graphs."""

    def __init__(self, engine: "AcceleratedCDT", states):
        self.states = states
        enabled = engine.cuda_graphs is not False
        capture = None if isinstance(engine.cuda_graphs, bool) else engine.cuda_graphs
        self.graphs = ChunkGraphs(engine.device, enabled, capture, record=engine.ops.record)
        self.chunk: Optional[int] = None  # the default chunk chosen by the first stream
        self.busy = False

    @property
    def steady(self) -> bool:
        return all(s.steady for s in self.states)

    def run(self, *args):
        try:
            return self.graphs(self.step, args, self.states)
        except BaseException:
            for s in self.states:
                s.rollback()
            raise

    def reset(self) -> None:
        for s in self.states:
            s.reset()

    def commit(self) -> None:
        for s in self.states:
            s.commit()


class EncodeSession(Session):
    def __init__(self, engine: "AcceleratedCDT"):
        super().__init__(engine, [StreamState()])
        self.plan, self.device = engine.encoder_plan, engine.device

    def step(self, x: torch.Tensor) -> torch.Tensor:
        params = self.plan(x.to(self.device), Run(self.states[0]))
        self.commit()
        return params


class DecodeSession(Session):
    def __init__(self, engine: "AcceleratedCDT", batch: int, steps: int):
        super().__init__(engine, [StreamState() for _ in range(steps + 1)])
        cfg, device = engine.config, engine.device
        schedule = DDIMSchedule.create(cfg.num_timesteps, steps)
        self.steps, self.device, self.sample_gamma = steps, device, cfg.sample_gamma
        self.context_plan, self.unet_plan, self.ops = (
            engine.context_plan,
            engine.unet_plan,
            engine.ops,
        )
        # Constant for the whole decode: per-step DDIM coefficients (one 4-element fp32 tensor on
        # the device per step, the form the kernels read, so the chunk step moves no value
        # between host and device) and every ResnetBlock's mlp(time_emb).
        self.coefficients = [
            ddim_coefficients(schedule.coefficients(s), device) for s in range(steps)
        ]
        self.time_biases = [
            self.unet_plan.time_biases(schedule.time_input(s, batch, device)) for s in range(steps)
        ]

    def step(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        # The initial sample is formed here, inside the captured step, from the raw noise chunk
        # (the reference's arithmetic: gamma * noise in the noise's dtype, then fp32).
        x = (self.sample_gamma * noise.to(self.device)).float()
        context = self.context_plan(z.to(self.device), Run(self.states[0]))
        for s in reversed(range(self.steps)):
            x0 = self.unet_plan(x, context, Run(self.states[s + 1], self.time_biases[s])).float()
            x = self.ops("ddim_update", x, x0, self.coefficients[s])
        self.commit()
        return x


def run_or_none_on_oom(session: Session, *args):
    """The chunk's result, or None when it ran out of memory. Returning (rather than handling the
    error in an ``except`` block) drops the traceback, and with it the failed chunk's tensors,
    before the caller empties the allocator cache."""
    try:
        return session.run(*args)
    except torch.OutOfMemoryError:
        return None


def graph_state(graphs: ChunkGraphs) -> tuple:
    """(state, captures, replays) of one session's graphs; the state names the keys that stay
    eager and why."""
    report = graphs.report()
    state = "; ".join([report["state"], *report["eager"]])
    return state, report["captures"], report["replays"]
