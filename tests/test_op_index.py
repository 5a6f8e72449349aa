"""The op index (docs/kernels.md, "Op index") against the code: one row per op of the dispatch
table, each backend's column naming exactly the module the table imports for that op and a
function of the op's name in it, every named file present (an op without its test or benchmark
fails here) and its test and benchmark naming the op, one family stem across a row's files, and
no compiled source, binding or C++ function outside the index's names."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from cdt_fast import functional
from cdt_fast.engine import dispatch
from cdt_fast.engine.dispatch import OPS, implementations

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "kernels.md"
COLUMNS = ("op", "spec", "reference", "Triton", "C++", "CUDA", "dispatch", "test", "benchmark")
# Where each column's files live: (folder, file name around the family stem).
FILES = {
    "Triton": ("kernels", "{}.py"),
    "C++": ("csrc/cpu", "{}.cpp"),
    "CUDA": ("csrc/cuda", "{}.cu"),
    "test": ("tests", "test_{}.py"),
    "benchmark": ("benchmarks", "bench_{}.py"),
}
BACKEND_OF = {"Triton": "triton", "C++": "cpp", "CUDA": "cuda"}
# Shared code of the compiled backends, named in no row.
COMPILED_SHARED = {"common.h", "common.cuh"}
# The extension's one binding that is not an op: it reports the CUDA runtime.
EXTENSION_BINDINGS = {"cuda_runtime_status"}


def read_index(text: str) -> dict:
    """{op: {column: cell}} of the table under "## Op index" (backticks stripped)."""
    section = text.split("\n## Op index\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert tuple(header) == COLUMNS, header
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS), line
        row = dict(zip(COLUMNS, cells))
        assert row["op"] not in rows, f"two rows for {row['op']}"
        rows[row["op"]] = row
    return rows


INDEX = read_index(DOC.read_text())


def _family(column: str, cell: str) -> str:
    """The family stem of a file cell, checked against its column's folder and pattern."""
    folder, pattern = FILES[column]
    path = cell.split(":", 1)[0]
    prefix, suffix = pattern.split("{}")
    match = re.fullmatch(re.escape(f"{folder}/{prefix}") + r"(\w+)" + re.escape(suffix), path)
    assert match, f"{column} column: {cell!r} is not {folder}/{pattern.format('<family>')}"
    return match.group(1)


def _resolve(dotted: str):
    """The object a dotted name names: its longest importable module, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            owner = getattr(owner, attr)
        return owner
    raise ImportError(f"{dotted!r} names no module")


def _row(op: str) -> dict:
    assert op in INDEX, f"{op} is an op of the dispatch table without a row in {DOC.name}"
    return INDEX[op]


def test_one_row_per_op_of_the_dispatch_table():
    assert list(INDEX) == list(OPS), "the index's rows must be dispatch.OPS, in its order"


@pytest.mark.parametrize("op", OPS)
def test_spec_dispatch_and_reference(op):
    row = _row(op)
    assert row["spec"] == f"cdt_fast.functional.{op}" and op in functional.__all__
    assert callable(getattr(functional, op))
    assert row["dispatch"] == op
    if row["reference"] == "-":
        return
    source = inspect.getsource(_resolve(row["reference"]))
    # The reference computes the op: it calls it, or (a block op) its parts or the layers that do.
    assert re.search(rf"\b{op}\(", source) or op in dispatch._COMPOSITES, (op, row["reference"])


@pytest.mark.parametrize("op", OPS)
def test_backend_columns_are_the_dispatch_tables_modules(op):
    row = _row(op)
    for column, backend in BACKEND_OF.items():
        module = implementations(backend).get(op)
        if row[column] == "-":
            assert module is None, f"{op}: the {backend} backend implements it, the index says -"
            continue
        assert module is not None, f"{op}: the index names {row[column]}, {backend} has no {op}"
        family = _family(column, row[column])
        if column == "Triton":
            path, _, name = row[column].partition(":")
            assert name == op, f"{op}: the Triton function must be named {op}, got {name!r}"
            assert module == f"cdt_fast.kernels.{family}", (op, module)
        else:
            assert module == "cdt_fast.cpp_ops", (op, module)
        assert callable(getattr(importlib.import_module(module), op)), (module, op)


@pytest.mark.parametrize("op", OPS)
def test_every_named_file_exists_and_shares_the_family_stem(op):
    row = _row(op)
    families = set()
    for column in FILES:
        cell = row[column]
        assert cell != "-" or column not in ("test", "benchmark"), f"{op} needs a {column} file"
        if cell == "-":
            continue
        families.add(_family(column, cell))
        path = ROOT / cell.split(":", 1)[0]
        assert path.is_file(), f"{op}: {path.relative_to(ROOT)} is missing"
        if column in ("test", "benchmark"):
            # a family's file that never names one of its ops neither tests nor times it
            assert re.search(rf"\b{op}\b", path.read_text()), f"{cell} never names {op}"
    assert len(families) == 1, f"{op}: one family stem across its files, got {sorted(families)}"


def test_compiled_sources_bindings_and_functions_are_indexed():
    """Every csrc/cpu and csrc/cuda source is an indexed family's; every binding and every C++
    function of the ops' namespaces starts with an indexed op's name."""
    for column, folder in (("C++", "csrc/cpu"), ("CUDA", "csrc/cuda")):
        named = {Path(row[column]).name for row in INDEX.values() if row[column] != "-"}
        found = {p.name for p in (ROOT / folder).iterdir() if p.is_file()} - COMPILED_SHARED
        assert found == named, (folder, sorted(found ^ named))
    bindings = re.findall(r'm\.def\("(\w+)"', (ROOT / "csrc/python/bindings.cpp").read_text())
    headers = [ROOT / "csrc/include/cdt_fast" / h for h in ("ops.h", "ops_cuda.h")]
    functions = [f for h in headers for f in re.findall(r"^void (\w+)\(", h.read_text(), re.M)]
    assert bindings and functions
    for name in {*bindings, *functions} - EXTENSION_BINDINGS:
        assert any(name.startswith(op) for op in OPS), f"{name} is named for no op"
