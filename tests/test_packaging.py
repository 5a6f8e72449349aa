"""How the package imports in each way users get it, each checked in a fresh interpreter:

- a plain checkout on ``PYTHONPATH`` with nothing installed (``tools/gpu_check.sh``'s fallback
  when pip cannot install it);
- a built wheel installed into an empty target folder;
- the repository root as the working directory, beside another distribution's top-level
  ``kernels`` package (Hugging Face's, which diffusers and transformers import).

In each, ``cdt_fast.kernels`` must come from the copy under test, and ``import kernels`` must never
find this repository's ``kernels/`` folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNEL_MODULES = ("causal_conv3d", "channel_norm", "linear_attention", "time_resample", "denoise")

# Imports every kernel module and prints where cdt_fast and the kernels came from.
PROBE = (
    "import importlib, cdt_fast, cdt_fast.kernels as k\n"
    f"mods = [importlib.import_module('cdt_fast.kernels.' + m) for m in {KERNEL_MODULES!r}]\n"
    "print(cdt_fast.__file__)\n"
    "print('\\n'.join(m.__file__ for m in mods))\n"
)


def _python(code: str, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(pythonpath)
    env.setdefault("TRITON_INTERPRET", "1")  # the kernel modules import without a GPU
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _checked(result: subprocess.CompletedProcess) -> list:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def _tracked_files() -> list:
    """What a clone holds (plus uncommitted work): tracked and untracked-not-ignored files."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def test_plain_checkout_on_pythonpath(tmp_path):
    pytest.importorskip("triton")
    clone = tmp_path / "clone"
    for rel in _tracked_files():
        if rel.startswith(("cdt_fast/", "kernels/")):
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    files = _checked(_python(PROBE, cwd=elsewhere, pythonpath=clone))
    assert all(Path(f).resolve().is_relative_to(clone.resolve()) for f in files), files
    assert Path(files[1]).parent == (clone / "kernels").resolve()


def test_built_wheel_in_an_empty_target(tmp_path):
    pytest.importorskip("triton")
    pytest.importorskip("setuptools")
    dist = tmp_path / "dist"
    env = dict(os.environ, CDT_FAST_SKIP_CPP_BUILD="1")  # the pure-Python part is under test
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("cdt_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"cdt_fast"}, tops  # never a top-level `kernels`
    for module in KERNEL_MODULES:
        assert f"cdt_fast/kernels/{module}.py" in names
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # what `pip install --target` lays out
        archive.extractall(site)
    files = _checked(_python(PROBE, cwd=tmp_path, pythonpath=site))
    assert all(Path(f).resolve().is_relative_to(site.resolve()) for f in files), files


def _stand_in_kernels(site: Path) -> None:
    """A distribution named ``kernels`` with a top-level ``kernels`` package, like Hugging
    Face's."""
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("STAND_IN = True\nclass CUDAProperties: pass\n")
    info = site / "kernels-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.0.1\n")
    (info / "top_level.txt").write_text("kernels\n")


def test_repo_root_beside_another_kernels_distribution(tmp_path):
    pytest.importorskip("triton")
    site = tmp_path / "site"
    _stand_in_kernels(site)
    code = (
        "import kernels\n"
        "assert getattr(kernels, 'STAND_IN', False), kernels.__path__\n"
        "from kernels import CUDAProperties\n" + PROBE
    )
    files = _checked(_python(code, cwd=ROOT, pythonpath=site))
    assert all(Path(f).resolve().is_relative_to(ROOT) for f in files), files


def test_diffusers_imports_from_the_repo_root():
    """diffusers imports Hugging Face's ``kernels`` (installed with transformers 5): from the
    repository root it must get that one, not this repository's kernels/ folder."""
    pytest.importorskip("diffusers")
    code = (
        "from diffusers import AutoencoderKLWan\n"
        "import importlib.metadata as md, importlib.util as u\n"
        "try:\n    md.distribution('kernels')\nexcept md.PackageNotFoundError:\n"
        "    print('-')\nelse:\n    import kernels\n    print(u.find_spec('kernels').origin)\n"
    )
    result = _python(code, cwd=ROOT, pythonpath=Path(os.environ.get("PYTHONPATH") or ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    origin = result.stdout.split()[-1]
    assert origin == "-" or not Path(origin).resolve().is_relative_to(ROOT / "kernels"), origin
