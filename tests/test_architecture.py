"""What the layers contract (``[tool.importlinter]`` in pyproject.toml, run by ``lint-imports``)
cannot see, checked here: imports that go through the package root's lazy names, and the Triton
kernels' imports (their sources sit outside the package folder). docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import cdt_fast

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
# The top layer: the command line may use the package's public names like any user.
TOP = ("cdt_fast.cli", "cdt_fast.__main__")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> Iterator[Tuple[int, str, List[str]]]:
    """(line, imported module, names) of every import in ``path``, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield node.lineno, target, [alias.name for alias in node.names]


def _layers() -> List[List[str]]:
    """The contract's layers, top to bottom, each as its module names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [
        [name.strip(" ()") for name in layer.replace("|", ":").split(":")]
        for layer in contract["layers"]
    ]


def _root_name_imports(paths, root: Path):
    for path in paths:
        module = _module_name(path, root)
        for line, target, names in _imports(path, module):
            lazy = [n for n in names if n in cdt_fast.__all__ and n != "__version__"]
            if target == "cdt_fast" and (lazy or not names):
                yield f"{path.relative_to(root)}:{line} imports {lazy or 'cdt_fast'}"


def test_modules_import_what_they_use_from_the_module_that_defines_it():
    """``import cdt_fast`` or ``from cdt_fast import load`` below the CLI would hide a
    dependency from the layers contract: the root resolves those names lazily, so the import graph
    shows no edge to the module that defines them."""
    package = ROOT / "cdt_fast"
    paths = [p for p in sorted(package.rglob("*.py")) if not _module_name(p, ROOT).startswith(TOP)]
    assert not list(_root_name_imports(paths, ROOT))


def test_root_name_check_sees_a_hidden_import(tmp_path):
    module = tmp_path / "cdt_fast" / "latents.py"
    module.parent.mkdir()
    module.write_text("import cdt_fast\nfrom . import accelerate, video_io\n")
    found = list(_root_name_imports([module], tmp_path))
    assert len(found) == 2 and "['accelerate']" in found[1], found


def test_the_triton_kernels_import_only_their_layer_and_the_ones_below():
    layers = _layers()
    (level,) = [i for i, layer in enumerate(layers) if "kernels" in layer]
    allowed = {name for layer in layers[level:] for name in layer}
    assert "functional" in allowed and "api" not in allowed
    wrong = []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        module = "cdt_fast.kernels." + path.stem
        for line, target, _ in _imports(path, module):
            parts = target.split(".")
            if parts[0] == "cdt_fast" and (len(parts) < 2 or parts[1] not in allowed):
                wrong.append(f"kernels/{path.name}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)
