"""Run the Triton interpreter's programs out of grid order, to expose programs that depend on
each other.

On a GPU the programs of one launch run concurrently, in no defined order; the interpreter runs
them one after another in grid order. A kernel in which one program reads what another program of
the same launch writes (a race on a GPU) therefore passes every interpreter test by the luck of
that order. :func:`program_order` makes the interpreter run each launch's programs reversed or in
a seeded shuffle instead; a kernel whose programs are independent gives the same result.

How: ``GridExecutor.__call__`` (``triton/runtime/interpreter.py``, Triton 3.5 to 3.9) walks the
grid in nested loops and calls ``interpreter_builder.set_grid_dim(nx, ny, nz)`` once, then
``interpreter_builder.set_grid_idx(x, y, z)`` before each program. While a launch runs, the
wrapper installs, on that builder object, a ``set_grid_dim`` that draws a permutation of the
grid and a ``set_grid_idx`` that sends the n-th position of the walk to the n-th program of the
permutation. The launch is checked afterwards: every program ran exactly once through the
wrapper, or a RuntimeError says that Triton's interpreter moved under this module.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import random
from typing import Iterator, List, Optional

__all__ = ["ORDERS", "permutation", "program_order"]

ORDERS = ("grid", "reversed", "shuffled")


def permutation(order: str, n: int, rng: random.Random) -> List[int]:
    """The order in which to run programs ``0 .. n-1`` (linear grid indices). ``shuffled`` never
    returns the grid order itself for n >= 2 (two programs are then simply swapped)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "grid":
        return list(range(n))
    if order == "reversed":
        return list(range(n - 1, -1, -1))
    perm = list(range(n))
    rng.shuffle(perm)
    if n >= 2 and perm == sorted(perm):
        perm[0], perm[1] = perm[1], perm[0]
    return perm


def _interpreter_module():
    """triton.runtime.interpreter, after checking the internals this module relies on."""
    from triton.runtime import interpreter

    executor = getattr(interpreter, "GridExecutor", None)
    builder = getattr(interpreter, "interpreter_builder", None)
    missing = [
        name
        for name, ok in (
            ("GridExecutor.__call__", callable(vars(executor).get("__call__") if executor else 0)),
            ("interpreter_builder.set_grid_dim", callable(getattr(builder, "set_grid_dim", None))),
            ("interpreter_builder.set_grid_idx", callable(getattr(builder, "set_grid_idx", None))),
        )
        if not ok
    ]
    if not missing:
        source = inspect.getsource(executor.__call__)
        missing = [
            f"a call of {call} in GridExecutor.__call__"
            for call in ("interpreter_builder.set_grid_dim(", "interpreter_builder.set_grid_idx(")
            if call not in source
        ]
    if missing:
        raise RuntimeError(
            "tests/program_order.py cannot reorder this Triton's interpreter: it lacks "
            + ", ".join(missing)
            + " (its grid walk moved; adapt the wrapper to it)"
        )
    return interpreter


class _Launch:
    """One launch's grid walk, sent through a permutation."""

    def __init__(self, builder, order: str, rng: random.Random):
        self.builder, self.order, self.rng = builder, order, rng
        self.set_dim = type(builder).set_grid_dim
        self.set_idx = type(builder).set_grid_idx
        self.dims: Optional[tuple] = None
        self.perm: List[int] = []
        self.ran = 0

    def grid_dim(self, nx, ny, nz):
        self.dims = (int(nx), int(ny), int(nz))
        self.perm = permutation(self.order, nx * ny * nz, self.rng)
        self.ran = 0
        return self.set_dim(self.builder, nx, ny, nz)

    def grid_idx(self, x, y, z):
        if self.dims is None:
            raise RuntimeError("the interpreter set a program index before the grid size")
        _, ny, nz = self.dims
        x, rest = divmod(self.perm[(x * ny + y) * nz + z], ny * nz)
        y, z = divmod(rest, nz)
        self.ran += 1
        return self.set_idx(self.builder, x, y, z)

    def check(self) -> None:
        if self.dims is None:
            raise RuntimeError(
                "a Triton interpreter launch never called interpreter_builder.set_grid_dim: "
                "its grid walk moved; tests/program_order.py reordered nothing"
            )
        nx, ny, nz = self.dims
        if self.ran != nx * ny * nz:
            raise RuntimeError(
                f"a launch of grid {self.dims} ran {self.ran} programs through "
                "interpreter_builder.set_grid_idx: its grid walk moved; "
                "tests/program_order.py did not reorder it"
            )


@contextlib.contextmanager
def program_order(order: str, seed: int = 0) -> Iterator[None]:
    """Within the block, every Triton interpreter launch runs its programs in ``order``:
    ``"grid"`` (the interpreter's own order: nothing is patched), ``"reversed"`` or
    ``"shuffled"`` (a fresh permutation per launch from ``random.Random(seed)``)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "grid":
        yield
        return
    interpreter = _interpreter_module()
    executor = interpreter.GridExecutor
    original = executor.__call__
    if getattr(original, "_program_order", None):
        raise RuntimeError(f"program_order({order!r}) inside program_order(...): they do not nest")
    rng = random.Random(seed)

    @functools.wraps(original)  # __wrapped__: inspect still finds the grid walk's source
    def reordered(self, *args, **kwargs):
        builder = interpreter.interpreter_builder
        launch = _Launch(builder, order, rng)
        # Instance attributes shadow the builder's methods for this launch only.
        builder.set_grid_dim, builder.set_grid_idx = launch.grid_dim, launch.grid_idx
        try:
            result = original(self, *args, **kwargs)
        finally:
            del builder.set_grid_dim, builder.set_grid_idx
        launch.check()
        return result

    reordered._program_order = order
    executor.__call__ = reordered
    try:
        yield
    finally:
        executor.__call__ = original
