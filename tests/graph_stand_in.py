"""A CPU stand-in for CUDA graph capture that replays only the tensor work a step recorded.

:class:`RecordingCapture` has :class:`cdt_fast.engine.graphs.CudaGraphCapture`'s interface.
Its capture runs the step once under a ``TorchDispatchMode`` that records every aten op (the op,
its arguments, its outputs). What that run wrote into tensors that existed before it is then put
back, and the graph's first replay computes the chunk: a real capture records without computing,
and its first replay computes. A replay re-executes the recorded ops on the same tensor objects
(static inputs, weights, history buffers, and every tensor the recording created, which the graph
keeps alive as a CUDA graph keeps its addresses and pool): a functional op's result is copied
into its recorded output, an in-place or ``out=`` op writes where it wrote, a view is not redone
(the recorded view already aliases the same memory), an allocation is not redone (a graph's
memory keeps whatever it holds). The Python step is never called again. So a value the step took
on the host at capture (a Python number, an ``.item()``, a decision on a tensor's value) is
replayed as it was then: the bug that makes a real graph replay stale results.

``host_reads="raise"`` makes a value read on the host during capture (``.item()``, ``bool()``,
``torch.equal``: ops that return no tensor) an error, as a CUDA capture refuses the sync it needs.

Not seen: work that bypasses torch's dispatcher (the C++ extension's kernels, Triton kernels
under the interpreter). Engines run under this stand-in with the torch backend.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["RecordingCapture", "RecordedGraph", "Recorder", "host_reads_of"]

# Ops that only allocate: a replay leaves their memory as it is, as a graph's pool does.
_ALLOCATIONS = {
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::new_empty",
    "aten::new_empty_strided",
}


def _tensors(tree) -> List[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _written(func, args, kwargs) -> List[torch.Tensor]:
    """The tensors an op writes in place (``Tensor(a!)`` arguments: self of ``add_``, ``out=``)."""
    written = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(arg.name)
        written += _tensors(value)
    return written


def _returns_views(func) -> bool:
    return any(r.alias_info is not None for r in func._schema.returns)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Recorder(TorchDispatchMode):
    """Records the aten ops run under it: ``ops`` holds ``(op, args, kwargs, outputs)`` and
    ``host_reads`` the names of ops that returned a host value. Before an op first writes a
    tensor that existed before the recording, its memory is saved; :meth:`undo` restores it."""

    def __init__(self, host_reads: str = "record"):
        super().__init__()
        if host_reads not in ("record", "raise"):
            raise ValueError(f"host_reads must be 'record' or 'raise', got {host_reads!r}")
        self.raise_on_host_reads = host_reads == "raise"
        self.ops: list = []
        self.host_reads: List[str] = []
        self._created: set = set()
        self._saved: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        written = _written(func, args, kwargs)
        for t in written:
            key = _storage_key(t)
            if t.untyped_storage().nbytes() and key not in self._created and key not in self._saved:
                self._saved[key] = (t.untyped_storage(), t.untyped_storage().clone())
        out = func(*args, **kwargs)
        outputs = _tensors(out)
        if not outputs and tree_flatten(out)[0]:  # a value brought to the host
            self.host_reads.append(func._schema.name)
            if self.raise_on_host_reads:
                raise RuntimeError(
                    f"{func._schema.name} read a tensor's value on the host during capture "
                    "(a CUDA capture refuses the sync this needs; a replay would reuse the value)"
                )
        elif not _returns_views(func) and not written:
            self._created.update(_storage_key(t) for t in outputs)
        self.ops.append((func, args, kwargs, out))
        return out

    def undo(self) -> None:
        """Put back what the recorded run wrote into tensors that existed before it."""
        for storage, saved in self._saved.values():
            storage.copy_(saved)
        self._saved.clear()


class RecordedGraph:
    """The recorded ops of one capture; :meth:`replay` re-executes their tensor work."""

    def __init__(self, ops: list):
        self.ops = ops
        self.replays = 0

    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            outputs = _tensors(out)
            if _written(func, args, kwargs):
                func(*args, **kwargs)  # in place / out=: writes where the recording wrote
            elif not outputs or _returns_views(func) or func._schema.name in _ALLOCATIONS:
                continue  # a host value (frozen in what the step did with it), a view, an allocation
            else:
                for recorded, fresh in zip(outputs, _tensors(func(*args, **kwargs))):
                    recorded.copy_(fresh)
        self.replays += 1


def host_reads_of(fn: Callable[[], object]) -> List[str]:
    """The ops of ``fn()`` that brought a tensor's value to the host (none in a capturable step)."""
    recorder = Recorder()
    with recorder:
        fn()
    return recorder.host_reads


class RecordingCapture:
    """The CPU stand-in for :class:`cdt_fast.engine.graphs.CudaGraphCapture` (module docstring).
    ``fail``: None, "oom" (every capture runs out of memory before recording) or "error" (every
    capture fails otherwise). ``host_reads``: "record" or "raise" (see :class:`Recorder`).
    Counts ``warm_ups``, ``captured`` and ``pools``; ``capturing`` is True while a step records."""

    def __init__(self, fail: Optional[str] = None, host_reads: str = "record"):
        self.fail, self.host_reads = fail, host_reads
        self.pools = self.captured = self.warm_ups = 0
        self.capturing = False
        self.graphs: List[RecordedGraph] = []

    def unavailable(self, device):
        return None

    def new_pool(self, device):
        self.pools += 1
        return object()

    def warm_up(self, fn, device):
        self.warm_ups += 1
        return fn()

    def capture(self, fn, pool, device):
        if self.fail == "oom":
            raise torch.OutOfMemoryError("simulated CUDA out of memory at capture")
        if self.fail == "error":
            raise RuntimeError("operation not permitted when stream is capturing")
        recorder = Recorder(self.host_reads)
        self.capturing = True
        try:
            with recorder:
                output = fn()
        finally:
            self.capturing = False
            recorder.undo()  # a capture computes nothing, even when it fails half way
        graph = RecordedGraph(recorder.ops)
        graph.replay()
        self.captured += 1
        self.graphs.append(graph)
        return graph, output
