"""CUDA graphs of a chunk step, keyed by everything that changes its launch sequence.

A chunk step (encode: video chunk -> posterior parameters; decode: latent and noise chunk ->
video chunk) launches a sequence of kernels fixed by the session (op, batch, size, steps, dtype),
the shapes, strides and dtypes of its inputs, and the Python-visible stream state before it (how
many history frames each causal layer holds, which layers have started). Those are a graph's key
(:func:`graph_key`, with :meth:`StreamState.signature`). The first time a key is seen the step
runs eagerly (warm-up); the second time it is captured and replayed; from then on it only
replays. A 17-frame clip decoded as one chunk is thus captured on the second call of that shape
and replayed on every later one, and a long stream replays its steady chunks from its third chunk
on.

The warm-up runs on the stream the capture will use, a side stream of the capture object (torch's
advice for ``torch.cuda.graph``, as ``make_graphed_callables`` does). Everything a first call does
lazily then happens before capture, where it is legal: per shape (history buffers, cuDNN
algorithm search, Triton compilation and autotuning, loading kernel modules) and per stream
(cuBLAS/cuBLASLt handles and workspaces, cached per device and stream; the allocator's blocks for
that stream). The key's own first call is that warm-up: an extra eager call at capture would run
the step twice, and the step is not idempotent (it advances the stream state and writes the
history buffers).

A replay does no Python work, so the stream state a captured step leaves behind is recorded at
capture and restored after each replay (:meth:`StreamState.snapshot` / ``restore``).

Memory: all graphs of a session share one private pool. They never run concurrently, and the
only tensor of a graph that outlives its replay is its output, which the caller copies out before
the next chunk runs; so a graph's temporaries may reuse another's (the pool holds about one
chunk's activations, not one per graph), and an output is valid until the next replay of any of
the session's graphs. The allocator's cache is emptied before a capture so that the pool can take
back what the eager warm-up held. The chunk
size accounts for this (:class:`~cdt_fast.engine.memory.MemoryModel`). A capture that runs out of
memory leaves that key eager for the session (:attr:`ChunkGraphs.eager` says why) and the step
runs eagerly at once, so the output is the same. Any other capture failure turns graphs off for
the session (:attr:`ChunkGraphs.reason`).

Execution record: given an engine's :class:`~cdt_fast.engine.record.ExecutionRecord`, the graphs
note each chunk step there (eager and why, captured, replayed) and add a captured step's op counts
again at each replay, since a replay runs no Python that could count them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .record import ExecutionRecord

__all__ = ["CAPTURE_METHODS", "ChunkGraphs", "CudaGraphCapture", "graph_key"]

# What ChunkGraphs calls on a capture object (CudaGraphCapture, or a stand-in).
CAPTURE_METHODS = ("unavailable", "new_pool", "warm_up", "capture")


class CudaGraphCapture:
    """Capture through ``torch.cuda.graph``. The interface :class:`ChunkGraphs` uses, so that a
    stand-in (tests on CPU) can replace it: ``unavailable(device)`` (a reason or None),
    ``new_pool(device)``, ``warm_up(fn, device)`` returning ``fn()`` run eagerly where captures
    run, and ``capture(fn, pool, device)`` returning ``(graph, output)`` with ``output`` already
    computed for the current inputs and ``graph.replay()`` recomputing it.

    Warm-ups and captures run on one side stream per device (:meth:`stream`), ordered after the
    caller's current stream and before its later work, so the caller sees ordinary stream
    semantics; replays run on the caller's current stream."""

    def __init__(self) -> None:
        self._streams: Dict[torch.device, "torch.cuda.Stream"] = {}

    def unavailable(self, device: torch.device) -> Optional[str]:
        if device.type != "cuda":
            return f"no CUDA graphs on {device.type}"
        return None

    def new_pool(self, device: torch.device):
        return torch.cuda.graph_pool_handle()

    def stream(self, device: torch.device) -> "torch.cuda.Stream":
        """The side stream this object warms up and captures on, for ``device``."""
        device = torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    def warm_up(self, fn: Callable[[], torch.Tensor], device: torch.device):
        side, current = self.stream(device), torch.cuda.current_stream(device)
        side.wait_stream(current)  # the inputs the caller just wrote
        try:
            with torch.cuda.stream(side):
                return fn()
        finally:
            # The caller's later work (reading the output, freeing inputs) follows the step. A
            # block the step allocated and the caller frees goes back to the side stream's pool;
            # it is reused only by a later warm-up or capture, which first waits for the caller.
            current.wait_stream(side)

    def capture(self, fn: Callable[[], torch.Tensor], pool, device: torch.device):
        side = self.stream(device)
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # the eager warm-up's cached blocks go back to the device
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=pool, stream=side):
                    output = fn()
            except BaseException:
                del graph
                torch.cuda.empty_cache()
                raise
            graph.replay()  # a capture only records: this computes the current chunk
        return graph, output


def graph_key(states: Sequence, args: Sequence[torch.Tensor]) -> tuple:
    """What fixes a step's launch sequence within a session: the stream states' signatures and
    each input's shape, strides and dtype (its device does not matter: replays copy inputs into
    device-resident static tensors)."""
    return (
        tuple(s.signature() for s in states),
        tuple((tuple(a.shape), tuple(a.stride()), a.dtype) for a in args),
    )


class _Captured:
    __slots__ = ("graph", "inputs", "output", "after", "counts")

    def __init__(self, graph, inputs: Tuple[torch.Tensor, ...], output, after, counts):
        self.graph, self.inputs, self.output, self.after = graph, inputs, output, after
        self.counts = counts  # op -> backend -> calls of the captured step


class ChunkGraphs:
    """The captured graphs of one session's step.

    ``capture``: the capture implementation (default :class:`CudaGraphCapture`). The output of a
    replayed step lives in the pool and may be overwritten by the next replay of any graph of
    this session: the caller copies it out before the next chunk. ``record``: the engine's
    :class:`~cdt_fast.engine.record.ExecutionRecord` (None: a private one).
    """

    def __init__(
        self, device, enabled: bool = True, capture=None, max_graphs: int = 8, record=None
    ) -> None:
        self.device = torch.device(device)
        self.backend = CudaGraphCapture() if capture is None else capture
        self.record = ExecutionRecord(()) if record is None else record
        self.max_graphs = max_graphs
        self.graphs: "OrderedDict[tuple, _Captured]" = OrderedDict()
        self.warm: set = set()
        self.eager: Dict[tuple, str] = {}  # keys that stay eager, and why
        self.pool = None
        self.captures = 0
        self.replays = 0
        self.reason: Optional[str] = None
        if not enabled:
            self.reason = "CUDA graphs disabled by the caller"
        else:
            self.reason = self.backend.unavailable(self.device)

    @property
    def enabled(self) -> bool:
        return self.reason is None

    def __call__(self, step: Callable, args: Sequence[torch.Tensor], states: Sequence):
        """``step(*args)``, eagerly or through a graph; ``states`` are the step's StreamStates."""
        if not self.enabled:
            self.record.ran_eagerly(self.reason)
            return step(*args)
        key = graph_key(states, args)
        captured = self.graphs.get(key)
        if captured is None:
            if key in self.eager:
                self.record.ran_eagerly(self.eager[key])
                return step(*args)
            if key not in self.warm:
                output = self.backend.warm_up(lambda: step(*args), self.device)
                self.warm.add(key)  # only once it ran to the end (an OOM leaves it cold)
                self.record.ran_eagerly(None)  # the warm-up
                return output
            return self._capture(step, args, states, key)
        self.graphs.move_to_end(key)
        for static, value in zip(captured.inputs, args):
            static.copy_(value)
        # A replay runs no Python: it counts as its capture's ops.
        captured.graph.replay()
        self.record.replayed(captured.counts)
        self.replays += 1
        for state, snap in zip(states, captured.after):
            state.restore(snap)
        return captured.output

    def _capture(self, step: Callable, args, states, key):
        before = [s.snapshot() for s in states]
        mark = self.record.mark()
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        # static inputs live on the device, in the inputs' layout (part of the key)
        inputs = tuple(a.to(self.device, copy=True) for a in args)
        try:
            if self.pool is None:
                self.pool = self.backend.new_pool(self.device)
            graph, output = self.backend.capture(lambda: step(*inputs), self.pool, self.device)
        except Exception as err:  # noqa: BLE001 - a failed capture must not fail the stream
            for state, snap in zip(states, before):
                state.restore(snap)
            self.record.restore(mark)  # the eager run below counts the step's ops
            del inputs
            if _out_of_memory(err):
                self.eager[key] = f"out of memory at capture ({_first_line(err)}); runs eagerly"
                self.record.ran_eagerly(self.eager[key])
                return step(*args)
            self.reason = f"capture failed ({type(err).__name__}: {_first_line(err)}); eager"
            self.record.ran_eagerly(self.reason)
            self.clear()
            return step(*args)
        self.captures += 1
        self.replays += 1  # the capture's own replay computed this chunk
        counts = self.record.since(mark)
        self.record.captured()
        self.graphs[key] = _Captured(graph, inputs, output, [s.snapshot() for s in states], counts)
        return output

    def report(self) -> dict:
        return {
            "state": self.reason or "enabled",
            "captures": self.captures,
            "replays": self.replays,
            "graphs": len(self.graphs),
            "eager": sorted(set(self.eager.values())),
        }

    def clear(self) -> None:
        """Drop every graph and its pool (e.g. before retrying after out-of-memory); keys need a
        new warm-up, and keys that ran out of memory at capture may try again."""
        self.graphs.clear()
        self.warm.clear()
        self.eager.clear()
        self.pool = None


def _out_of_memory(err: BaseException) -> bool:
    """An OOM inside ``torch.cuda.graph`` may surface as the error ending the capture, with the
    OOM as its context."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, torch.OutOfMemoryError):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
