"""Triton kernels, one module per op family (``cdt_fast.kernels.causal_conv3d``, ...).

The sources live in the repository's top-level ``kernels/`` folder, which has no ``__init__.py``
of its own: it is never importable as a top-level ``kernels`` package, so it cannot shadow
Hugging Face's ``kernels`` distribution (which diffusers and transformers import). The package is
reachable under this one name in every way the project is used:

- a built wheel: ``setup.py`` copies ``kernels/*.py`` next to this file;
- an editable install, or a plain checkout on ``PYTHONPATH``: this file adds the checkout's
  ``kernels/`` folder to the package's search path.
"""

from pathlib import Path

_MARKER = "causal_conv3d.py"  # a module every copy of the kernels holds


def _source_folder(here: Path):
    """Where the kernel modules are: beside this file (a wheel), else the checkout's kernels/."""
    if (here / _MARKER).is_file():
        return None
    checkout = here.parent.parent / "kernels"
    if (checkout / _MARKER).is_file() and not (checkout / "__init__.py").exists():
        return str(checkout)
    raise ImportError(
        f"cdt_fast.kernels: no kernel modules beside {here} nor in {checkout}; "
        "reinstall cdt_fast (pip install cdt_fast[triton])"
    )


_folder = _source_folder(Path(__file__).resolve().parent)
if _folder is not None:
    __path__.append(_folder)  # noqa: F821 - a package's own search path
del _folder
