"""CUDA graphs of a per-chunk step: capture once the shapes are fixed, replay for every chunk.

A chunk step runs eagerly until its stream is steady (every layer's history full, so every later
chunk runs the same code) and it has run once eagerly at that input shape in steady state -- that
run warms up lazy initialisation, cuDNN/Triton autotuning and the engine's backend measurements.
The next chunk of that shape is captured and every later one replays. Chunks of another shape (a
stream's first chunks, an odd last chunk) run eagerly. Where capture is impossible (CPU, disabled,
or a capture that fails) the step always runs eagerly and :attr:`reason` says why.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

__all__ = ["ChunkGraphs"]


class _Captured:
    def __init__(self, graph, inputs: Tuple[torch.Tensor, ...], output):
        self.graph, self.inputs, self.output = graph, inputs, output

    def replay(self, args: Sequence[torch.Tensor]):
        for static, value in zip(self.inputs, args):
            static.copy_(value)
        self.graph.replay()
        return self.output


class ChunkGraphs:
    """Captured graphs of one step function, keyed by the shapes and dtypes of its inputs.

    The step's output of a replay lives in the graph's static memory: copy it before the next call.
    """

    def __init__(self, device: torch.device, enabled: bool = True, max_graphs: int = 2):
        self.device = torch.device(device)
        self.max_graphs = max_graphs  # each graph keeps its chunk's activations in its own pool
        self.graphs: Dict[tuple, _Captured] = {}
        self.warm: set = set()
        self.reason: Optional[str] = None
        if not enabled:
            self.reason = "CUDA graphs disabled by the caller"
        elif self.device.type != "cuda":
            self.reason = f"no CUDA graphs on {self.device.type}"
        self.captures = 0
        self.replays = 0

    @property
    def enabled(self) -> bool:
        return self.reason is None

    def __call__(self, step: Callable, args: Sequence[torch.Tensor], steady: bool):
        if not self.enabled or not steady:
            return step(*args)
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        captured = self.graphs.get(key)
        if captured is None:
            if key not in self.warm:
                self.warm.add(key)
                return step(*args)
            captured = self._capture(step, args, key)
            if captured is None:
                return step(*args)
        self.replays += 1
        return captured.replay(args)

    def _capture(self, step: Callable, args, key) -> Optional[_Captured]:
        while len(self.graphs) >= self.max_graphs:
            self.graphs.pop(next(iter(self.graphs)))
        # static inputs live on the device; a replay copies host chunks into them directly
        inputs = tuple(a.to(self.device, copy=True) for a in args)
        graph = torch.cuda.CUDAGraph()
        try:  # a capture that fails turns graphs off for this step, it does not fail the decode
            with torch.cuda.device(self.device), torch.cuda.graph(graph):
                output = step(*inputs)
        except torch.OutOfMemoryError:
            raise  # the caller halves the chunk; graphs stay on
        except Exception as err:  # noqa: BLE001
            self.reason = f"capture failed ({type(err).__name__}: {err}); running eagerly"
            self.graphs.clear()
            return None
        self.captures += 1
        self.graphs[key] = _Captured(graph, inputs, output)
        return self.graphs[key]

    def clear(self) -> None:
        """Drop every graph (their memory pools go with them), e.g. before retrying after OOM."""
        self.graphs.clear()
        self.warm.clear()
