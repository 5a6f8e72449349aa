"""Ahead-of-time compilation of the Triton kernels an encode and a decode of one shape launch.

:func:`capture_launches` runs the engine with every Triton launch recorded instead of run, grid
included (on CPU tensors of the real shapes when no GPU is there, or on meta tensors: shapes only);
:func:`distinct_launches` groups them by the JIT's own specialisation (constexprs, 16-byte
alignment of pointers and integers, integers equal to 1, compile options), and :func:`compile_launch` compiles one for a given GPU architecture
exactly as ``JITFunction.run`` would on that GPU; :func:`compile_launches` compiles many, in
forked worker processes when asked. :func:`warmup` does it all for a model preset, a frame size,
a frame count and a dtype, filling Triton's on-disk cache. :func:`capture_model` can also record
the op-level calls the engine made on the Triton backend (:class:`OpCall`), which is how
``tools/gpu_smoke.py`` replays every Triton op of a real encode and decode at its real shapes.

A cache made this way on a machine without a GPU (``arch=90``) is the cache the JIT reads on an
sm_90 GPU, provided Triton itself (the same wheel: its key hashes Triton's compiler sources,
``libtriton`` and the bundled ``ptxas`` version), the kernel sources and the cache-invalidating
``TRITON_*``/``MLIR_*`` environment variables are the same: Triton's cache key
(``triton.runtime.cache.get_cache_key``) holds no driver, device or host detail beyond the
target's compute capability and warp size. Copy ``~/.triton/cache`` (or ``TRITON_CACHE_DIR``)
across. ``tools/sass_audit.py`` reads the compiled code of the same launches.

Which kernels a clip launches also depends on how the engine cuts it into chunks (each chunk's
frame count, and whether a step carries history), which on a GPU follows its free memory: at
720x720 an 80 GB GPU takes a 17-frame clip in one chunk where the CPU plan takes three. So a
warm-up on the GPU machine captures with that GPU's plan (:func:`chunk_plan`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import select
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..devices import capability_family
from ..dtypes import DTYPE_NAMES, dtype_from_name, dtype_name

__all__ = [
    "KERNEL_MODULES",
    "Launch",
    "OpCall",
    "WarmupResult",
    "parse_arch",
    "capture_launches",
    "capture_model",
    "chunk_plan",
    "specialise",
    "distinct_launches",
    "compile_launch",
    "compile_launches",
    "warmup",
]

# The kernel modules whose launchers the capture redirects (their device checks and arch).
KERNEL_MODULES = (
    "_common",
    "causal_conv3d",
    "causal_conv3d_args",
    "channel_norm",
    "linear_attention",
    "time_resample",
    "denoise",
    "_temporal_attention_kernel",
    "temporal_attention",
)


@dataclass
class Launch:
    """One intercepted kernel launch: the JIT function, its arguments (the tile config among the
    keyword ones), the configs an autotuner would try (after its pruning) when autotuning was
    on, else None, and the grid it was launched on (with the first config when tuning)."""

    fn: object
    args: tuple
    kwargs: dict
    configs: Optional[list] = None
    grid: Optional[Tuple[int, ...]] = None

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", str(self.fn))

    def compile_kwargs(self) -> dict:
        """The keyword arguments the JIT binds: an autotuned launch's with its first config's
        meta-parameters (constexprs the binder needs)."""
        kwargs = dict(self.kwargs)
        if self.configs:
            kwargs.update(self.configs[0].all_kwargs())
        return kwargs


@dataclass
class OpCall:
    """One op the engine ran on the Triton backend during :func:`capture_model`: the op's name
    (a :mod:`cdt_fast.functional` function), the arguments the engine passed (the capture's
    tensors), and the capture's launches it issued, ``launches[first:end]``."""

    op: str
    args: tuple
    kwargs: dict
    first: int
    end: int


@dataclass
class WarmupResult:
    """What :func:`warmup` compiled: ``kernels`` distinct compilations (JIT specialisations),
    ``launches`` kernel launches of the captured encode and decode, ``seconds`` of wall time."""

    kernels: int
    seconds: float
    launches: int
    arch: int
    preset: str
    size: Tuple[int, int]
    frames: int
    dtype: str
    compiled: bool
    per_kernel: Dict[str, int] = field(default_factory=dict)
    capture_seconds: float = 0.0
    triton: str = ""
    failed: List[str] = field(default_factory=list)
    jobs: int = 1

    def to_dict(self) -> dict:
        return {
            "kernels": self.kernels,
            "seconds": round(self.seconds, 2),
            "launches": self.launches,
            "arch": f"sm_{self.arch}" + ("a" if self.arch == 90 else ""),
            "model": self.preset,
            "size": list(self.size),
            "frames": self.frames,
            "dtype": self.dtype,
            "compiled": self.compiled,
            "capture_seconds": round(self.capture_seconds, 2),
            "per_kernel": dict(self.per_kernel),
            "triton": self.triton,
            "failed": list(self.failed),
            "jobs": self.jobs,
        }


def parse_arch(arch) -> int:
    """``"sm_90a"``, ``"sm_80"``, ``"90"`` or 90 -> 90 / 80 (compute capability x 10)."""
    if isinstance(arch, bool):
        raise TypeError(f"arch must be like 'sm_90a' or 90, got {arch!r}")
    if isinstance(arch, int):
        value = arch
    elif isinstance(arch, str) and re.fullmatch(r"(sm_?)?(\d{2,3})a?", arch.strip()):
        value = int(re.fullmatch(r"(sm_?)?(\d{2,3})a?", arch.strip()).group(2))
    else:
        raise ValueError(f"arch must be like 'sm_90a', 'sm_80' or 90, got {arch!r}")
    if not 70 <= value < 200:
        raise ValueError(f"arch must be a CUDA compute capability from sm_70, got {arch!r}")
    return value


@contextlib.contextmanager
def capture_launches(arch: int = 90) -> Iterator[List[Launch]]:
    """Within the block, Triton launches are recorded (with their grids) instead of run, and the
    launchers take CPU tensors as if they were on an ``sm_{arch}`` GPU: its tile tables
    (``tile_options(arch=...)``), no interpreter. Meta tensors are taken too: they carry shapes
    and strides only, so an engine built on the meta device runs at any resolution without
    memory. Outputs stay uninitialised: only shapes, strides and dtypes matter here. Under the
    interpreter (``TRITON_INTERPRET=1``, the kernels then being interpreted functions) launches
    are recorded alike, but cannot be compiled. Everything is restored on exit."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from cdt_fast.kernels._tiles import tile_options

    from . import registry

    launches: List[Launch] = []

    def jit_run(self, *args, grid, warmup=False, **kwargs):
        launches.append(Launch(self, args, kwargs, None, tuple(grid)))

    def tuner_run(self, *args, **kwargs):
        grid = kwargs.pop("grid")
        kwargs = {k: v for k, v in kwargs.items() if k != "warmup"}
        self.nargs = dict(zip(self.arg_names, args))
        try:
            configs = self.prune_configs(kwargs)
        finally:
            self.nargs = None
        self.best_config = configs[0]
        meta = {**dict(zip(self.arg_names, args)), **kwargs, **configs[0].all_kwargs()}
        launches.append(Launch(self.fn, args, kwargs, list(configs), tuple(grid(meta))))

    def nothing(*args, **kwargs):
        return None

    def meta_as_cpu(backend, device=None, env=None):
        # The engine asks whether Triton runs on its device; on the meta device it would fall
        # back to torch ops. The capture takes a meta tensor's launches as a CPU tensor's.
        if device is not None and torch.device(device).type == "meta":
            device = torch.device("cpu")
        return available(backend, device, env)

    available = registry._availability
    replacements = [
        (JITFunction, "run", jit_run),
        (InterpretedFunction, "run", jit_run),
        (Autotuner, "run", tuner_run),
        (registry, "_availability", meta_as_cpu),
    ]
    for name in (*KERNEL_MODULES, "_tiles"):
        module = importlib.import_module(f"cdt_fast.kernels.{name}")
        for attr, value in (("interpreting", lambda: False), ("check_launchable", nothing)):
            if hasattr(module, attr):
                replacements.append((module, attr, value))
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in replacements]
    try:
        for owner, attr, value in replacements:
            setattr(owner, attr, value)
        with tile_options(arch=capability_family(arch // 10)):
            yield launches
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)


@contextlib.contextmanager
def _record_op_calls(launches: List[Launch], calls: List[OpCall]) -> Iterator[None]:
    """Within the block, every op an engine's table sends to the Triton backend is appended to
    ``calls`` with the span of ``launches`` it issued (the table's own choice, then its call)."""
    from .dispatch import OpTable

    original = OpTable.__call__

    def call(self, op, *args, **kwargs):
        choice = self.choice(op, args, kwargs)
        first = len(launches)
        out = choice.fn(*args, **kwargs)
        if choice.backend == "triton":
            calls.append(OpCall(op, args, kwargs, first, len(launches)))
        return out

    OpTable.__call__ = call
    try:
        yield
    finally:
        OpTable.__call__ = original


def capture_model(
    preset: str,
    size: Tuple[int, int],
    frames: int = 17,
    dtype: torch.dtype = torch.bfloat16,
    *,
    arch: int = 90,
    encode: bool = True,
    decode: bool = True,
    autotune: bool = False,
    batch: int = 1,
    device: str = "cpu",
    calls: Optional[List[OpCall]] = None,
    chunks: Optional[Tuple[int, int]] = None,
    **overrides,
) -> List[Launch]:
    """The Triton launches of one engine encode and/or decode of ``batch`` clips of ``frames``
    frames of ``size`` = (H, W) pixels (random weights; ``overrides``: :class:`~cdt_fast.CDTConfig`
    fields, e.g. narrower networks for tests). ``autotune``: record the autotuners' candidate
    configs (:attr:`Launch.configs`) instead of the tables' tiles. ``device="meta"``: model and
    inputs on the meta device, shapes only (any resolution, no memory; the launches' grids and
    specialisations are those of real tensors, but nothing can be compiled from data).
    ``calls``: a list that receives an :class:`OpCall` for every op the engine ran on the Triton
    backend. ``chunks``: the (encode video frames, decode latent frames) per chunk, as
    :func:`chunk_plan` gives them for the GPU that will run the model; None runs the engine's own
    default on ``device``, which on a CPU is upstream's plan (at large sizes, shorter chunks than
    a GPU takes, hence other launches)."""
    from cdt_fast.chunking import latent_frames
    from cdt_fast.config import CDTConfig
    from cdt_fast.engine.accelerated import AcceleratedCDT
    from cdt_fast.kernels._tiles import tile_options
    from cdt_fast.reference import CDT

    height, width = size
    cfg = CDTConfig.preset(preset, **overrides)
    factor = cfg.space_factor
    if height <= 0 or width <= 0 or height % factor or width % factor:
        raise ValueError(f"size must be positive multiples of {factor}, got {height}x{width}")
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if device not in ("cpu", "meta"):
        raise ValueError(f"device must be 'cpu' or 'meta', got {device!r}")
    encode_chunk, decode_chunk = (None, None) if chunks is None else chunks
    model = CDT(cfg).eval().to(device)
    # The tables' tiles unless asked: warm-up compiles what a default run launches.
    with contextlib.ExitStack() as stack:
        stack.enter_context(tile_options(autotune=autotune))
        launches = stack.enter_context(capture_launches(arch))
        stack.enter_context(torch.no_grad())
        if calls is not None:
            stack.enter_context(_record_op_calls(launches, calls))
        # The engine's backend check accepts CPU tensors for Triton only under the interpreter
        # (told here through its env); the kernels were decorated before, so they stay compiled.
        engine = AcceleratedCDT(model, backend="triton", dtype=dtype, env={"TRITON_INTERPRET": "1"})
        if encode:
            x = torch.zeros(batch, 3, frames, height, width, device=device)
            engine.encode(x, chunk_frames=encode_chunk)
        if decode:
            z = torch.zeros(
                batch,
                cfg.latent_dim,
                latent_frames(frames, cfg.time_factor),
                height // factor,
                width // factor,
                device=device,
            )
            noise = torch.zeros(engine.output_shape(z.shape), device=device)
            engine.decode(z, noise=noise, chunk_frames=decode_chunk)
    return launches


def chunk_plan(
    preset: str,
    size: Tuple[int, int],
    dtype: torch.dtype,
    device,
    batch: int = 1,
    **overrides,
) -> Tuple[int, int]:
    """(encode video frames, decode latent frames) per chunk that an engine picks by default on
    ``device`` for clips of ``size`` = (H, W) (CUDA: from the device's free memory, CUDA graphs
    on, as :class:`~cdt_fast.engine.memory.MemoryModel` decides). The chunk plan fixes the
    launches' time extents and which steps carry history, so a warm-up compiles a GPU's kernels
    only when it captures that GPU's plan."""
    from cdt_fast.config import CDTConfig

    from .memory import MemoryModel

    device = torch.device(device)
    memory, (height, width) = MemoryModel(CDTConfig.preset(preset, **overrides)), size
    graphs = device.type == "cuda"
    return (
        memory.encode_chunk(batch, height, width, dtype, device, graphs=graphs),
        memory.decode_chunk(batch, height, width, dtype, device, graphs=graphs),
    )


def specialise(fn, args, kwargs, arch: int):
    """The JIT's own binding of ``args`` for an ``sm_{arch}`` target: (target, signature,
    constexprs, attrs, options, key); equal keys compile to the same kernel."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
    # as JITFunction.run sets them
    kwargs["debug"] = kwargs.get("debug", getattr(fn, "debug", False)) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    key = (
        fn.__name__,
        str(sorted(signature.items())),
        str(sorted(constexprs.items())),
        str(sorted(attrs.items())),
        str(sorted(options.__dict__.items())),
    )
    return target, signature, constexprs, attrs, options, key


def distinct_launches(
    launches: Sequence[Launch], arch: int = 90, kernels: Optional[Sequence[str]] = None
) -> List[Tuple[Launch, int]]:
    """``(launch, how many launches share its specialisation)`` for each distinct compilation
    among ``launches`` (an autotuned launch counts with its first config);
    ``kernels``: only kernels whose name contains one of these strings."""
    distinct: Dict[tuple, list] = {}
    for launch in launches:
        if kernels is not None and not any(k in launch.name for k in kernels):
            continue
        key = specialise(launch.fn, launch.args, launch.compile_kwargs(), arch)[-1]
        distinct.setdefault(key, [launch, 0])[1] += 1
    return [(launch, count) for launch, count in distinct.values()]


def compile_launch(fn, args, kwargs, arch: int = 90):
    """The compiled kernel the JIT would build for this launch on an ``sm_{arch}`` GPU (through
    Triton's cache: a second call, here or in the JIT there, is a cache hit)."""
    import triton
    from triton.compiler import ASTSource

    target, signature, constexprs, attrs, options, _ = specialise(fn, args, kwargs, arch)
    return triton.compile(
        ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
    )


def compile_launches(
    launches: Sequence[Launch],
    arch: int = 90,
    jobs: int = 1,
    progress=None,
    timeout: Optional[float] = None,
) -> List[str]:
    """Compile every launch (:func:`compile_launch`) into Triton's cache and return one line per
    launch that failed (the others are compiled either way).

    ``jobs`` > 1 splits the launches over that many worker processes forked from this one, each
    compiling its share into the same on-disk cache: Triton compiles one kernel on one core, and
    its cache writes are atomic. The workers inherit the launches' arguments instead of
    receiving copies. Fork before this process compiles anything itself: a process that has
    compiled may hold compiler thread pools that a fork does not carry over. ``timeout``
    (seconds, workers only) bounds the wait: workers still running then are killed and their
    launches reported as not compiled (the JIT compiles them when they first run).
    ``progress(done, total, name)`` after each kernel, or after each worker's share."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    launches = list(launches)
    if jobs == 1 or len(launches) < 2 or not hasattr(os, "fork"):
        failed = []
        for i, launch in enumerate(launches):
            failed += _compile_each([launch], arch)
            if progress is not None:
                progress(i + 1, len(launches), launch.name)
        return failed
    shares = [launches[i::jobs] for i in range(min(jobs, len(launches)))]
    sys.stdout.flush()
    sys.stderr.flush()  # a worker must not write the parent's buffered output a second time
    workers = {}  # read end of the worker's pipe -> (pid, share, report so far)
    for share in shares:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: compile its share, report failures through the pipe
            status = 1
            try:
                os.close(read_end)
                with os.fdopen(write_end, "w") as pipe:
                    pipe.write("\n".join(_compile_each(share, arch)))
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        workers[read_end] = (pid, share, [])
    deadline = None if timeout is None else time.monotonic() + timeout
    failed, done = [], 0
    try:
        while workers:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(list(workers), [], [], wait)
            if not ready:
                break  # the deadline passed
            for fd in ready:
                chunk = os.read(fd, 65536)
                pid, share, report = workers[fd]
                if chunk:
                    report.append(chunk)
                    continue
                os.close(fd)
                del workers[fd]
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                failed += [line for line in b"".join(report).decode().splitlines() if line]
                if code != 0:
                    failed.append(f"a compile worker ended with status {code}: {_names(share)}")
                done += len(share)
                if progress is not None:
                    progress(done, len(launches), f"{len(share)} kernels of one worker")
    finally:
        for fd, (pid, share, _) in workers.items():  # past the deadline, or interrupted
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
            late = deadline is not None and time.monotonic() >= deadline
            why = "its worker was stopped at the timeout" if late else "interrupted"
            failed.append(f"not compiled ({why}): {_names(share)}")
    return failed


def _names(share: Sequence[Launch]) -> str:
    kinds = Counter(launch.name for launch in share)
    return (
        f"{len(share)} launches (" + ", ".join(f"{n} x{c}" for n, c in sorted(kinds.items())) + ")"
    )


def _compile_each(launches: Sequence[Launch], arch: int) -> List[str]:
    failed = []
    for launch in launches:
        try:
            compile_launch(launch.fn, launch.args, launch.compile_kwargs(), arch)
        except Exception as err:  # noqa: BLE001 - reported; the other kernels still compile
            text = " ".join(str(err).split())[:300]
            failed.append(f"{launch.name}: {type(err).__name__}: {text}")
    return failed


def _current_arch() -> int:
    if not torch.cuda.is_available():
        raise ValueError(
            "warmup: no CUDA GPU here; pass arch (e.g. 'sm_90a') to compile for one without it"
        )
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def warmup(
    preset: str = "small",
    size: Tuple[int, int] = (256, 256),
    frames: int = 17,
    dtype="bf16",
    *,
    arch=None,
    compile: bool = True,
    encode: bool = True,
    decode: bool = True,
    progress=None,
    jobs: int = 1,
    **overrides,
) -> WarmupResult:
    """Compile every Triton kernel that an encode and a decode of ``frames`` frames of ``size``
    (H, W) in ``dtype`` ("bf16", "fp16", "fp32" or a torch dtype) will launch into Triton's
    cache. ``arch``: the target ("sm_90a", 90, ...; default: this machine's GPU, whose chunk plan
    (:func:`chunk_plan`) the capture then follows); with it no GPU is needed, and the capture
    follows the engine's CPU chunk plan, an 80 GB GPU's too at 256x256 (at 720x720 such a GPU
    takes longer chunks, and the kernels of its plan are compiled when they first run).
    ``compile=False`` only counts. ``jobs``: worker processes that compile
    (:func:`compile_launches`). ``progress(done, total, name)`` after each kernel. A kernel that
    fails to compile is listed in the result's ``failed``; the others are compiled."""
    import triton

    if preset not in ("base", "small"):
        raise ValueError(f"model must be 'base' or 'small', got {preset!r}")
    if isinstance(dtype, str):
        dtype = dtype_from_name(dtype)
    if dtype_name(dtype) not in DTYPE_NAMES:
        raise TypeError(f"dtype must be bf16, fp16 or fp32, got {dtype!r}")
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TypeError(f"size must be (height, width), got {size!r}") from None
    target = _current_arch() if arch is None else parse_arch(arch)
    # On this machine's GPU, the chunks its engine will take (they depend on its free memory);
    # for another machine's (arch given), the engine's CPU plan.
    chunks = None
    if arch is None:
        chunks = chunk_plan(preset, (height, width), dtype, "cuda", **overrides)
    started = time.perf_counter()
    launches = capture_model(
        preset,
        (height, width),
        frames,
        dtype,
        arch=target,
        encode=encode,
        decode=decode,
        chunks=chunks,
        **overrides,
    )
    captured = time.perf_counter()
    distinct = distinct_launches(launches, target)
    failed = []
    if compile:
        failed = compile_launches([launch for launch, _ in distinct], target, jobs, progress)
    return WarmupResult(
        kernels=len(distinct),
        seconds=time.perf_counter() - started,
        launches=len(launches),
        arch=target,
        preset=preset,
        size=(height, width),
        frames=frames,
        dtype=dtype_name(dtype),
        compiled=compile,
        per_kernel=dict(Counter(launch.name for launch, _ in distinct)),
        capture_seconds=captured - started,
        triton=triton.__version__,
        failed=failed,
        jobs=jobs,
    )
