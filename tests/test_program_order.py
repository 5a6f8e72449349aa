"""The program-order switch (tests/program_order.py) really reorders the interpreter's programs:
a deliberately order-dependent kernel passes in grid order and fails in the others."""

from __future__ import annotations

import random

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl

from .helpers import INTERPRETED
from .program_order import ORDERS, permutation
from .program_order import program_order as reorder_programs

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="reorders the Triton interpreter only")


@triton.jit
def _ticket_kernel(counter_ptr, out_ptr):
    # Each program takes the next ticket: out[program] = its place in the execution order. On a
    # GPU this is a race; under the interpreter it records the order the programs ran in.
    pid = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(
        2
    ) + tl.program_id(2)
    ticket = tl.load(counter_ptr)
    tl.store(counter_ptr, ticket + 1)
    tl.store(out_ptr + pid, ticket)


@triton.jit
def _chained_prefix_sum_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    # Program i adds its block to the running total that program i-1 left in out: correct only
    # if the programs run in grid order (a deliberate inter-program dependence).
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    carry = tl.load(out_ptr + pid * BLOCK - 1, mask=pid > 0, other=0.0)
    total = tl.cumsum(tl.load(x_ptr + offs), axis=0) + carry
    tl.store(out_ptr + offs, total)


def _tickets(grid) -> torch.Tensor:
    counter = torch.zeros(1, dtype=torch.int32)
    out = torch.full((grid[0] * grid[1] * grid[2],), -1, dtype=torch.int32)
    _ticket_kernel[grid](counter, out)
    assert counter.item() == out.numel()
    return out


@pytest.mark.parametrize("program_order", ORDERS, indirect=True)
def test_switch_runs_every_program_once_in_the_chosen_order(program_order):
    grid = (2, 3, 4)
    tickets = _tickets(grid)
    n = tickets.numel()
    assert sorted(tickets.tolist()) == list(range(n))  # every program ran exactly once
    if program_order == "grid":
        assert tickets.tolist() == list(range(n))
    elif program_order == "reversed":
        assert tickets.tolist() == list(range(n - 1, -1, -1))
    else:
        assert tickets.tolist() not in (list(range(n)), list(range(n - 1, -1, -1)))
        assert not torch.equal(_tickets(grid), tickets)  # a fresh shuffle per launch


@pytest.mark.parametrize("program_order", ORDERS, indirect=True)
def test_order_dependent_kernel_passes_only_in_grid_order(program_order):
    x = torch.arange(1, 8 * 16 + 1, dtype=torch.float32)
    out = torch.zeros_like(x)
    _chained_prefix_sum_kernel[(8,)](x, out, BLOCK=16)
    assert torch.equal(out, x.cumsum(0)) == (program_order == "grid")


def test_permutations():
    rng = random.Random(0)
    assert permutation("grid", 4, rng) == [0, 1, 2, 3]
    assert permutation("reversed", 4, rng) == [3, 2, 1, 0]
    assert permutation("shuffled", 2, rng) == [1, 0]  # never the identity
    assert all(sorted(permutation("shuffled", 5, rng)) == list(range(5)) for _ in range(20))
    assert permutation("shuffled", 1, rng) == [0]
    with pytest.raises(ValueError, match="order must be one of"):
        permutation("random", 3, rng)


@pytest.mark.parametrize("program_order", ["grid"], indirect=True)
def test_fails_loudly_when_the_interpreter_moved(monkeypatch, program_order):
    """Run in grid order: the test nests its own reorderings."""
    from triton.runtime import interpreter

    with pytest.raises(ValueError, match="order must be one of"):
        with reorder_programs("sideways"):
            pass

    class WalksItsOwnWay:  # a grid walk that no longer goes through the builder
        def __init__(self, real):
            self.real = real

        def __call__(self, *args, **kwargs):
            return self.real(*args, **kwargs)

    monkeypatch.setattr(interpreter, "GridExecutor", WalksItsOwnWay)
    with pytest.raises(RuntimeError, match="grid walk moved"):
        with reorder_programs("reversed"):
            pass
    monkeypatch.undo()

    # The loop is where it was but skips the builder at run time: the launch check catches it.
    original = interpreter.GridExecutor.__call__

    def silent(self, *args, **kwargs):
        builder = interpreter.interpreter_builder
        set_idx = builder.set_grid_idx
        builder.set_grid_idx = lambda x, y, z: type(builder).set_grid_idx(builder, x, y, z)
        try:
            return original(self, *args, **kwargs)
        finally:
            builder.set_grid_idx = set_idx

    silent.__wrapped__ = original  # inspect.getsource reads the real loop
    monkeypatch.setattr(interpreter.GridExecutor, "__call__", silent)
    with pytest.raises(RuntimeError, match="ran 0 programs"):
        with reorder_programs("reversed"):
            _tickets((2, 1, 1))
    monkeypatch.undo()
    with reorder_programs("reversed"):
        with pytest.raises(RuntimeError, match="do not nest"):
            with reorder_programs("shuffled"):
                pass
