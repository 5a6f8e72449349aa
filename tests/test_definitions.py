"""One definition each, read off the sources of the package, the kernels, the benchmarks and the
tools: the device's arch family (``cdt_fast.devices``), the map between dtype names and torch
dtypes (``cdt_fast.dtypes``) and every backend's status (``cdt_fast.availability``). A second
copy, however small, fails here with the line that holds it."""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import List, Tuple

import torch

from cdt_fast.devices import arch_family, capability_family
from cdt_fast.dtypes import DTYPE_NAMES, dtype_from_name, dtype_name

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("cdt_fast", "kernels", "benchmarks", "tools")
DTYPE_SPELLINGS = set(DTYPE_NAMES) | set(DTYPE_NAMES.values())


@functools.lru_cache(maxsize=None)
def _trees() -> Tuple[Tuple[str, ast.AST], ...]:
    return tuple(
        (str(path.relative_to(ROOT)), ast.parse(path.read_text()))
        for folder in SOURCES
        for path in sorted((ROOT / folder).rglob("*.py"))
    )


def _is_dtype_spelling(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in DTYPE_SPELLINGS
    # torch.bfloat16, torch.float16, ...
    return isinstance(node, ast.Attribute) and node.attr in DTYPE_NAMES.values()


def _dtype_maps(tree: ast.AST) -> List[int]:
    """Lines of dict literals pairing a dtype spelling with another (name -> dtype, dtype ->
    name, name -> name)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        and any(
            key is not None and _is_dtype_spelling(key) and _is_dtype_spelling(value)
            for key, value in zip(node.keys, node.values)
        )
    ]


def _where(tree: ast.AST, found) -> List[int]:
    return [node.lineno for node in ast.walk(tree) if found(node)]


def _defines(name: str):
    return lambda node: isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name


def _builds_status(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "BackendStatus"
    )


def _scan(found) -> List[str]:
    return [f"{path}:{line}" for path, tree in _trees() for line in found(tree)]


def test_arch_family_is_defined_once():
    hits = _scan(lambda tree: _where(tree, _defines("arch_family")))
    assert [hit.split(":")[0] for hit in hits] == ["cdt_fast/devices.py"], hits


def test_dtype_names_are_mapped_once():
    hits = _scan(_dtype_maps)
    assert [hit.split(":")[0] for hit in hits] == ["cdt_fast/dtypes.py"], hits


def test_only_availability_decides_a_backends_status():
    hits = _scan(lambda tree: _where(tree, _builds_status))
    assert hits and {hit.split(":")[0] for hit in hits} == {"cdt_fast/availability.py"}, hits


def test_the_scan_sees_a_second_definition():
    copy = ast.parse(
        "def arch_family(d):\n    return 'cpu'\n"
        "NAMES = {torch.bfloat16: 'bf16'}\nALIASES = {'float32': 'fp32'}\n"
        "s = BackendStatus('flash', True, '')\n"
    )
    assert _where(copy, _defines("arch_family")) == [1]
    assert _dtype_maps(copy) == [3, 4] and _where(copy, _builds_status) == [5]
    assert not _dtype_maps(ast.parse("PEAK = {'bf16': 989.4, 'fp32': 66.9}"))


def test_the_one_map_and_the_one_family():
    for short, torch_name in DTYPE_NAMES.items():
        dtype = getattr(torch, torch_name)
        assert dtype_from_name(short) is dtype_from_name(torch_name) is dtype
        assert dtype_name(dtype) == dtype_name(torch_name) == dtype_name(short) == short
    assert dtype_name(torch.float64) == "float64" and dtype_name("auto") == "auto"
    for bad in ("fp64", "half", None):
        try:
            dtype_from_name(bad)
        except ValueError as err:
            assert "bf16" in str(err) and repr(bad) in str(err)
        else:
            raise AssertionError(f"dtype_from_name({bad!r}) did not raise")
    assert arch_family("cpu") == arch_family(torch.device("meta")) == "cpu"
    # a compute capability's family (warm-up compiles for a GPU it does not have)
    assert [capability_family(m) for m in (7, 8, 9, 10, 12)] == ["sm_80"] * 2 + ["sm_90"] * 3
