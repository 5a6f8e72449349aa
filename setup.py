"""Build script: the pure-Python package, with ``kernels/`` installed as ``cdt_fast.kernels``, and
the optional compiled extension ``cdt_fast._C`` from ``csrc/`` (notes/csrc.md).

The extension is plain C++ (and CUDA) behind pybind11 with a raw-pointer ABI: it needs neither
torch nor a GPU to build. The C++ part is built everywhere; the CUDA part where nvcc is found.
Environment switches (flash-attention style):

- ``CDT_FAST_SKIP_CPP_BUILD=1``: no extension at all (a pure-Python install).
- ``CDT_FAST_SKIP_CUDA_BUILD=1``: the C++ (CPU) extension only, even where nvcc is found.
- ``CDT_FAST_FORCE_BUILD=1``: a failed extension build fails the install. By default a failed
  build warns and the install goes on (CUDA failing -> CPU-only; C++ failing -> pure Python).
- ``CDT_FAST_CUDA_ARCHS="80;90"``: GPU architectures (SASS for each, PTX for the last).
- ``NVCC`` / ``CUDA_HOME``: which nvcc (default: PATH, then /usr/local/cuda/bin/nvcc).
- ``MAX_JOBS``: parallel compile jobs (ninja is used when found, else a thread pool).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
EXTENSION = "cdt_fast._C"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def cpp_sources():
    return [
        CSRC / "common.cpp",
        *sorted((CSRC / "cpu").glob("*.cpp")),
        CSRC / "python" / "bindings.cpp",
    ]


def cuda_sources():
    return sorted((CSRC / "cuda").glob("*.cu"))


def find_nvcc():
    candidates = [os.environ.get("NVCC")]
    candidates += [
        os.path.join(os.environ[v], "bin", "nvcc")
        for v in ("CUDA_HOME", "CUDA_PATH")
        if os.environ.get(v)
    ]
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def nvcc_include_flags(nvcc: str):
    """The CUDA include flags nvcc itself uses (nvcc may be a wrapper script outside the toolkit)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.cu"
        probe.write_text("__global__ void probe() {}\n")
        dry = subprocess.run(
            [nvcc, "--dryrun", "-c", str(probe), "-o", str(probe.with_suffix(".o"))],
            capture_output=True,
            text=True,
            check=True,
        )
    for line in (dry.stdout + dry.stderr).splitlines():
        if line.startswith("#$ INCLUDES="):
            return shlex.split(line.split("=", 1)[1])
    raise RuntimeError("could not find the CUDA include path in `nvcc --dryrun` output")


def gencode_flags():
    archs = [
        a.strip().replace("sm_", "").replace(".", "")
        for a in os.environ.get("CDT_FAST_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
        if a.strip()
    ]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return archs, flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def ninja_escape(path: Path) -> str:
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def run_compile_jobs(jobs, workdir: Path) -> None:
    """jobs: (command, source, object). Ninja when found (incremental, header deps), else a pool."""
    workdir.mkdir(parents=True, exist_ok=True)
    max_jobs = os.environ.get("MAX_JOBS")
    ninja = shutil.which("ninja")
    if ninja:
        lines = [
            "ninja_required_version = 1.3",
            "rule compile",
            "  command = $cmd",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = compile $in",
            "",
        ]
        for cmd, src, obj in jobs:
            lines += [
                f"build {ninja_escape(obj)}: compile {ninja_escape(src)}",
                f"  cmd = {shlex.join(cmd + ['-MD', '-MF', str(obj) + '.d'])}".replace("$", "$$")
                .replace("$$in", "$in")
                .replace("$$out", "$out"),
            ]
        (workdir / "build.ninja").write_text("\n".join(lines) + "\n")
        cmd = [ninja, "-C", str(workdir)] + (["-j", max_jobs] if max_jobs else [])
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError("compilation failed:\n" + (result.stdout + result.stderr)[-4000:])
        return

    def compile_one(job):
        cmd, src, _ = job
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"compiling {src.name} failed:\n" + result.stderr[-4000:])

    workers = int(max_jobs) if max_jobs else (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(compile_one, jobs))


def accepts_flag(compiler, flag: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("int main() { return 0; }\n")
        return (
            subprocess.run(
                [*compiler, flag, str(src), "-o", str(Path(tmp) / "probe")], capture_output=True
            ).returncode
            == 0
        )


def check_importable(path: Path) -> None:
    """Loads the built module in a fresh interpreter: catches unresolved symbols at build time."""
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('cdt_fast._C', sys.argv[1]);"
        " m = u.module_from_spec(s); s.loader.exec_module(m); print(m.ABI_VERSION)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError("the built module does not import:\n" + result.stderr[-2000:])


class BuildCsrc(build_ext):
    """Builds cdt_fast._C with our own compiler commands (C++ and nvcc objects, one link)."""

    def initialize_options(self):
        super().initialize_options()
        self.skipped = set()  # optional extensions whose build failed: nothing to copy or install

    def copy_extensions_to_source(self):  # --inplace / editable installs
        built = self.extensions
        self.extensions = [e for e in built if e.name not in self.skipped]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = built

    def get_outputs(self):
        return [
            path
            for ext, path in zip(self.extensions, super().get_outputs())
            if ext.name not in self.skipped
        ]

    def build_extension(self, ext):
        if ext.name != EXTENSION:
            return super().build_extension(ext)
        force = env_flag("CDT_FAST_FORCE_BUILD")
        try:
            self._build_csrc(ext, force)
        except Exception as exc:  # an optional build: never fail the install unless forced
            if force:
                raise
            self.skipped.add(ext.name)
            self.warn(
                f"cdt_fast: the C++ extension was not built ({exc}); installing pure Python "
                "(set CDT_FAST_FORCE_BUILD=1 to make this an error)"
            )

    def _build_csrc(self, ext, force: bool) -> None:
        import pybind11  # a build requirement (pyproject.toml)

        out = Path(self.get_ext_fullpath(ext.name))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(self.build_temp).resolve() / "csrc"
        nvcc = None if env_flag("CDT_FAST_SKIP_CUDA_BUILD") else find_nvcc()
        if nvcc:
            try:
                self._compile_and_link(tmp / "cuda", out, pybind11.get_include(), nvcc)
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
        self._compile_and_link(tmp / "cpu", out, pybind11.get_include(), None)

    def _compile_and_link(self, tmp: Path, out: Path, pybind_include: str, nvcc) -> None:
        cxx = shlex.split(os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++")
        openmp = ["-fopenmp"] if accepts_flag(cxx, "-fopenmp") else []
        includes = [
            f"-I{CSRC / 'include'}",
            f"-I{pybind_include}",
            f"-I{sysconfig.get_paths()['include']}",
        ]
        # -ffp-contract=off: no FMA contraction (the DDIM update matches torch bit for bit);
        # -fno-trapping-math: lets clamps and selects vectorise (we never read FP exceptions).
        flags = [
            "-O3",
            "-std=c++17",
            "-DNDEBUG",
            "-fPIC",
            "-fvisibility=hidden",
            "-ffp-contract=off",
            "-fno-trapping-math",
            *openmp,
            *includes,
        ]
        jobs = []
        if nvcc:
            archs, gencode = gencode_flags()
            flags += nvcc_include_flags(nvcc)
            flags += ["-DCDT_FAST_WITH_CUDA", f'-DCDT_FAST_CUDA_ARCHS="{";".join(archs)}"']
            nvcc_flags = [
                "-O3",
                "-std=c++17",
                "-DNDEBUG",
                "-Xcompiler",
                "-fPIC,-fvisibility=hidden",
                f"-I{CSRC / 'include'}",
                *gencode,
            ]
            jobs += [
                (
                    [nvcc, *nvcc_flags, "-c", str(src), "-o", str(tmp / (src.stem + ".cu.o"))],
                    src,
                    tmp / (src.stem + ".cu.o"),
                )
                for src in cuda_sources()
            ]
        jobs += [
            (
                [*cxx, *flags, "-c", str(src), "-o", str(tmp / (src.stem + ".o"))],
                src,
                tmp / (src.stem + ".o"),
            )
            for src in cpp_sources()
        ]
        run_compile_jobs(jobs, tmp)
        objects = [str(obj) for _, _, obj in jobs]
        if nvcc:  # nvcc links the static CUDA runtime: no libcudart.so needed at run time
            link = [nvcc, "-shared", "--cudart", "static", "-o", str(out), *objects]
            if openmp:
                link += ["-Xcompiler", "-fopenmp"]
        else:
            link = [*cxx, "-shared", "-o", str(out), *objects, *openmp]
            if sys.platform == "darwin":
                link += ["-undefined", "dynamic_lookup"]
        result = subprocess.run(link, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError("linking failed:\n" + result.stderr[-4000:])
        check_importable(out)


def extensions():
    if env_flag("CDT_FAST_SKIP_CPP_BUILD"):
        return []
    return [Extension(EXTENSION, sources=[])]


packages = find_packages(include=["cdt_fast", "cdt_fast.*"]) + ["cdt_fast.kernels"]

setup(
    packages=packages,
    package_dir={"": ".", "cdt_fast.kernels": "kernels"},
    package_data={"cdt_fast": ["py.typed", "assets/*.safetensors"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildCsrc},
)
