"""Build script: the pure-Python package, with the top-level ``kernels/`` modules installed inside
``cdt_fast.kernels`` (never as a top-level ``kernels``: that name is Hugging Face's), and the
optional compiled extension ``cdt_fast._C``, built by ``CMakeLists.txt`` (the one build
description; this file only drives it, as in pybind11's CMake example).

The extension is plain C++ (and CUDA) behind pybind11 with a raw-pointer ABI: it needs neither
torch nor a GPU to build. The C++ part is built everywhere; the CUDA part where nvcc is found.
Environment switches (flash-attention style):

- ``CDT_FAST_SKIP_CPP_BUILD=1``: no extension at all (a pure-Python install).
- ``CDT_FAST_SKIP_CUDA_BUILD=1``: the C++ (CPU) extension only, even where nvcc is found.
- ``CDT_FAST_FORCE_BUILD=1``: a failed extension build fails the install. By default a failed
  build warns and the install goes on (CUDA failing -> CPU-only; C++ failing -> pure Python).
- ``CDT_FAST_CUDA_ARCHS="80;90"``: GPU architectures (SASS for each, PTX for the last).
- ``NVCC`` / ``CUDA_HOME``: which nvcc (default: PATH, then /usr/local/cuda/bin/nvcc).
- ``MAX_JOBS``: parallel compile jobs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
EXTENSION = "cdt_fast._C"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def find_nvcc():
    candidates = [os.environ.get("NVCC")]
    candidates += [
        os.path.join(os.environ[v], "bin", "nvcc")
        for v in ("CUDA_HOME", "CUDA_PATH")
        if os.environ.get(v)
    ]
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def find_cmake():
    """The cmake on PATH (pip puts the build requirement's there), else the ``cmake`` package."""
    found = shutil.which("cmake")
    if found:
        return found
    try:
        import cmake  # the PyPI distribution of CMake

        return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    except ImportError:
        raise RuntimeError("cmake not found (pip install cmake, or put cmake on PATH)") from None


def cuda_architectures() -> str:
    """CMake's spelling of CDT_FAST_CUDA_ARCHS: SASS for every arch, PTX for the newest only."""
    archs = [
        a.strip().replace("sm_", "").replace(".", "")
        for a in os.environ.get("CDT_FAST_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
        if a.strip()
    ]
    if not archs:
        raise ValueError("CDT_FAST_CUDA_ARCHS names no architecture")
    return ";".join([f"{a}-real" for a in archs[:-1]] + [archs[-1]])


class BuildPy(build_py):
    """Copies the top-level ``kernels/*.py`` into ``cdt_fast/kernels/`` of the build. An editable
    install copies nothing: there ``cdt_fast/kernels/__init__.py`` finds the checkout's folder."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "cdt_fast" / "kernels"
        self.mkpath(str(target))
        for source in sorted((ROOT / "kernels").glob("*.py")):
            self.copy_file(str(source), str(target / source.name), preserve_mode=False)


class BuildError(RuntimeError):
    pass


def run(cmd, cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        log = (result.stdout + result.stderr)[-4000:]
        raise BuildError(f"`{' '.join(map(str, cmd[:2]))} ...` failed:\n{log}")


def check_importable(path: Path) -> None:
    """Loads the built module in a fresh interpreter: catches unresolved symbols at build time."""
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('cdt_fast._C', sys.argv[1]);"
        " m = u.module_from_spec(s); s.loader.exec_module(m)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if result.returncode:
        raise BuildError(f"the built module does not import:\n{result.stderr[-2000:]}")


class CMakeBuild(build_ext):
    """Configures and builds ``CMakeLists.txt`` with the Python module on; a failed optional build
    is skipped with a warning (CUDA first falls back to the CPU-only module)."""

    def run(self):
        self.skipped = set()
        super().run()

    def copy_extensions_to_source(self):
        # --inplace copies every extension into the tree: not the ones whose build was skipped.
        built = self.extensions
        self.extensions = [e for e in built if e.name not in self.skipped]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = built

    def build_extension(self, ext):
        force = env_flag("CDT_FAST_FORCE_BUILD")
        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        nvcc = None if env_flag("CDT_FAST_SKIP_CUDA_BUILD") else find_nvcc()
        try:
            if nvcc:
                try:
                    self._cmake(out, nvcc)
                    return
                except Exception as exc:
                    if force:
                        raise
                    self.warn(
                        f"cdt_fast: the CUDA part of the extension was not built ({exc}); "
                        "building the CPU-only extension"
                    )
            elif not env_flag("CDT_FAST_SKIP_CUDA_BUILD"):
                self.announce("cdt_fast: nvcc not found; building the CPU-only extension", level=2)
            self._cmake(out, None)
        except Exception as exc:  # an optional build: never fail the install unless forced
            if force:
                raise
            self.skipped.add(ext.name)
            self.warn(
                f"cdt_fast: the C++ extension was not built ({exc}); installing pure Python "
                "(set CDT_FAST_FORCE_BUILD=1 to make this an error)"
            )

    def _cmake(self, out: Path, nvcc) -> None:
        import pybind11  # a build requirement (pyproject.toml)

        build = Path(self.build_temp).resolve() / ("cmake-cuda" if nvcc else "cmake-cpu")
        build.mkdir(parents=True, exist_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmake = find_cmake()
        configure = [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DCDT_FAST_BUILD_PYTHON=ON",
            "-DCDT_FAST_BUILD_TESTS=OFF",
            f"-DCDT_FAST_BUILD_CUDA={'ON' if nvcc else 'OFF'}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out.parent}",
        ]
        if nvcc:
            configure += [
                f"-DCMAKE_CUDA_COMPILER={nvcc}",
                f"-DCDT_FAST_CUDA_ARCHITECTURES={cuda_architectures()}",
            ]
        if shutil.which("ninja") and not (build / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        run(configure, ROOT)
        jobs = os.environ.get("MAX_JOBS")
        run(
            [
                cmake,
                "--build",
                str(build),
                "--target",
                "_C",
                "--parallel",
                *([jobs] if jobs else []),
            ],
            ROOT,
        )
        if not out.exists():
            raise BuildError(f"CMake did not produce {out.name} in {out.parent}")
        check_importable(out)


def extensions():
    if env_flag("CDT_FAST_SKIP_CPP_BUILD"):
        return []
    return [Extension(EXTENSION, sources=[])]


setup(
    packages=find_packages(include=["cdt_fast", "cdt_fast.*"]),
    package_data={"cdt_fast": ["py.typed", "assets/*.safetensors"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
)
