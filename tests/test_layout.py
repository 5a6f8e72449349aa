"""Module and function sizes: no module over 600 lines, no function over 100 lines outside Triton
kernel bodies (``@triton.jit``), in the package, the kernels, the benchmarks, the tools and the
tests. A module that outgrows this does more than one job; split it where the pieces have names
of their own (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("cdt_fast", "kernels", "benchmarks", "tools", "tests")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def _modules() -> Iterator[Path]:
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "fixtures" not in path.relative_to(ROOT).parts:
                yield path


def _is_kernel_body(node: ast.AST) -> bool:
    """A ``@triton.jit`` (or ``@jit``) function: Triton inlines its helpers, so a kernel body is
    long by nature and is not held to the function limit."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "jit":
            return True
    return False


def oversized(path: Path, text: str) -> Iterator[Tuple[str, str]]:
    """(what, description) for the module itself and each function that is too long."""
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        yield "module", f"{lines} lines"
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_kernel_body(node):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                yield node.name, f"function {node.name} (line {node.lineno}) is {length} lines"


def test_no_module_or_function_is_too_long():
    found = [
        f"{path.relative_to(ROOT).as_posix()}: {description}"
        for path in _modules()
        for _, description in oversized(path, path.read_text())
    ]
    assert not found, "over the limits:\n" + "\n".join(found)


def test_the_size_check_sees_long_modules_and_functions_but_not_kernel_bodies():
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES))
    text = (
        f"import triton\n\n\n@triton.jit\ndef kernel():\n{body}\n\n\n"
        f"@triton.jit(do_not_specialize=['n'])\ndef tuned(n):\n{body}\n\n\n"
        f"def launcher():\n{body}\n" + "\n" * MAX_MODULE_LINES
    )
    found = dict(oversized(Path("example.py"), text))
    assert set(found) == {"module", "launcher"}, found
