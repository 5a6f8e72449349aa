"""One tile configuration per shape class, chosen ahead of time; autotuning only on request.

Every launcher asks its kernel's table (a heuristic beside the kernel) for the one config of the
launch's *shape class*: the constexpr geometry (channels, kernel, stride, fused epilogue), the
dtype and the arch family (``sm_80``: Ampere/Ada, ``sm_90``: Hopper and newer). Nothing is timed
at run time, so the first call compiles exactly one kernel per shape class and two processes run
the same code. The tables were chosen by reading the sm_90 code of every launch of an engine
encode and decode (``tools/sass_audit.py``): no register spills, ``wgmma`` on the tensor-core
kernels, 16-byte loads on the channel axis.

Autotuning is opt-in: ``CDT_FAST_AUTOTUNE=1`` in the environment, or explicitly (which wins over
the variable) with ``with tile_options(autotune=True): ...``. A tuned launch times the kernel's
candidate configs once per shape class (never keyed on the row count) and merges the winner into
a JSON tile file (``tile_options(tiles=PATH)``, else ``CDT_FAST_TILES``, else
``~/.cache/cdt_fast/tiles.json``). The same file, given as ``tiles``/``CDT_FAST_TILES``, is read
back as overrides of the tables; its entries are what to copy into a table once measured.

Which table family a launch reads is its device's (:func:`tile_family`), unless a block asks for
another one explicitly: ``with tile_options(arch="sm_90"): ...`` plans every launch in it as on
that GPU, CPU tensors under the Triton interpreter included, so CI runs the tiles and launch code
a GPU runs (``tile_options(dtype=...)`` adds the storage dtype the plan is for: the interpreter has
no bf16 arithmetic). Beside the tables: what a tile costs in shared memory
(:func:`shared_memory`, one formula per kernel beside its table) against the per-block limit of
each family (:data:`SHARED_MEMORY_LIMIT`), and the fitting of a table's tile to the block of the
device at hand (:func:`shared_memory_limit`, :func:`fit_tile`): compute capability 8.6/8.9 and
consumer Blackwell give a block 99 KB, less than the family they share tables with.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
import triton

import cdt_fast.devices as devices
from cdt_fast.dtypes import dtype_name

from ._common import check_grid, interpreting, on_device

__all__ = [
    "AUTOTUNE_ENV",
    "TILES_ENV",
    "Tile",
    "tile_options",
    "autotune_enabled",
    "tiles_path",
    "tile_family",
    "launch_dtype",
    "emulates_gpu",
    "SHARED_MEMORY_LIMIT",
    "shared_memory",
    "shared_memory_limit",
    "fit_tile",
    "per_shape_class",
    "shape_key",
    "lookup",
    "record",
    "load_tiles",
    "launch",
]

AUTOTUNE_ENV = "CDT_FAST_AUTOTUNE"
TILES_ENV = "CDT_FAST_TILES"
SCHEMA = "cdt_fast-tiles/1"
ARCH_FAMILIES = ("sm_80", "sm_90")
# The storage dtypes a launch can be planned for.
PLAN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# The shared memory one block may use, per table family: the opt-in maximum per block of the
# CUDA C++ Programming Guide's "Technical Specifications per Compute Capability" table, 227 KB on
# compute capability 9.0 (H100, H200) and 163 KB on 8.0 (A100). A block asking for more does not
# launch. Devices of a family with less (8.6 and 8.9: 99 KB under sm_80; 12.x likewise under
# sm_90) get their tiles fitted to their own limit (:func:`shared_memory_limit`).
SHARED_MEMORY_LIMIT = MappingProxyType({"sm_80": 163 * 1024, "sm_90": 227 * 1024})
# Static shared memory beside Triton's own allocation: cuobjdump reads 1 KiB of it in the sm_90
# kernels of the audit (benchmarks/results/sass-sm90-*.json: Triton's figure + 1024 bytes).
SHARED_MEMORY_RESERVE = 1024


@dataclass(frozen=True)
class Tile:
    """One launch configuration: the tile constexprs plus warps and pipeline stages."""

    meta: Tuple[Tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def of(cls, num_warps: int = 4, num_stages: int = 2, **meta: int) -> "Tile":
        return cls(tuple(sorted(meta.items())), int(num_warps), int(num_stages))

    @classmethod
    def from_config(cls, config) -> "Tile":
        return cls.of(config.num_warps, config.num_stages, **config.kwargs)

    @classmethod
    def from_json(cls, entry: Mapping) -> "Tile":
        try:
            return cls.of(entry["num_warps"], entry["num_stages"], **entry["meta"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"tile entry {entry!r} lacks meta/num_warps/num_stages") from err

    @property
    def kwargs(self) -> Dict[str, int]:
        return dict(self.meta)

    def launch_kwargs(self) -> Dict[str, int]:
        return {**self.kwargs, "num_warps": self.num_warps, "num_stages": self.num_stages}

    def config(self):
        return triton.Config(self.kwargs, num_warps=self.num_warps, num_stages=self.num_stages)

    def to_json(self) -> dict:
        return {"meta": self.kwargs, "num_warps": self.num_warps, "num_stages": self.num_stages}

    def label(self) -> str:
        meta = ",".join(f"{k}={v}" for k, v in self.meta)
        return f"{meta},w={self.num_warps},s={self.num_stages}"


@dataclass(frozen=True)
class _Options:
    autotune: Optional[bool] = None
    tiles: Optional[str] = None
    arch: Optional[str] = None
    dtype: Optional[torch.dtype] = None
    shared_memory: Optional[int] = None


_OPTIONS: contextvars.ContextVar[Optional[_Options]] = contextvars.ContextVar(
    "cdt_fast_tile_options", default=None
)
_UNSET = _Options()


def _options() -> _Options:
    return _OPTIONS.get() or _UNSET


@contextlib.contextmanager
def tile_options(
    autotune: Optional[bool] = None,
    tiles: Union[str, os.PathLike, None] = None,
    *,
    arch: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    shared_memory: Optional[int] = None,
) -> Iterator[None]:
    """Within the block, launchers autotune (``autotune=True``) or never do (``False``) whatever
    ``CDT_FAST_AUTOTUNE`` says, and read/write the tile file ``tiles`` instead of
    ``CDT_FAST_TILES``.

    ``arch`` ("sm_80"/"sm_90"): every launch reads that family's tables, whatever its device. A
    CPU tensor is then planned as on such a GPU (its tables, and TF32 for fp32 where torch's
    cuDNN convs may use it, :func:`~._common.cudnn_conv_tf32`): under the Triton interpreter this runs the
    tiles and launch code of that GPU. A CUDA device must be of that family or newer.

    ``dtype`` (bf16/fp16/fp32): fp32 CPU tensors under the interpreter are planned as tensors of
    this dtype (tables, precision flags, tile-file keys). The interpreter has no bf16 arithmetic
    (it stores bf16 as 16-bit integers; its ``tl.dot`` of those is garbage), so a bf16 launch's
    tiles run on fp32 tensors holding bf16 values. A launch it does not apply to raises.

    ``shared_memory`` (bytes): the shared memory per block the tiles are fitted to
    (:func:`shared_memory_limit`), e.g. 99 KB to plan CPU tensors as on an RTX 4090 or an L4.
    On a CUDA device it may be at most the device's own.

    ``None`` leaves a setting as the enclosing block has it (outside any block: the environment,
    the device, the tensors' dtype)."""
    if autotune is not None and not isinstance(autotune, bool):
        raise TypeError(f"autotune must be a bool or None, got {autotune!r}")
    if tiles is not None and not isinstance(tiles, (str, os.PathLike)):
        raise TypeError(f"tiles must be a path or None, got {type(tiles).__name__}")
    if arch is not None and arch not in ARCH_FAMILIES:
        raise ValueError(f"arch must be one of {ARCH_FAMILIES} or None, got {arch!r}")
    if dtype is not None and dtype not in PLAN_DTYPES:
        raise ValueError(f"dtype must be one of {PLAN_DTYPES} or None, got {dtype!r}")
    if shared_memory is not None and (
        isinstance(shared_memory, bool) or not isinstance(shared_memory, int) or shared_memory < 1
    ):
        raise ValueError(
            f"shared_memory must be a positive int (bytes) or None, got {shared_memory!r}"
        )
    outer = _options()
    token = _OPTIONS.set(
        _Options(
            outer.autotune if autotune is None else autotune,
            outer.tiles if tiles is None else os.fspath(tiles),
            outer.arch if arch is None else arch,
            outer.dtype if dtype is None else dtype,
            outer.shared_memory if shared_memory is None else shared_memory,
        )
    )
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def autotune_enabled(autotune: Optional[bool] = None) -> bool:
    """Whether launchers time configs: ``autotune`` if given, else :func:`tile_options`'s, else
    ``CDT_FAST_AUTOTUNE`` ("1" on, "0"/unset off)."""
    if autotune is None:
        autotune = _options().autotune
    if autotune is not None:
        if not isinstance(autotune, bool):
            raise TypeError(f"autotune must be a bool or None, got {autotune!r}")
        return autotune
    value = os.environ.get(AUTOTUNE_ENV, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    raise ValueError(f"{AUTOTUNE_ENV} must be 0 or 1, got {value!r}")


def tiles_path(for_writing: bool = False) -> Optional[Path]:
    """The tile file: :func:`tile_options`'s, else ``CDT_FAST_TILES``; when writing winners and
    neither is set, ``~/.cache/cdt_fast/tiles.json``."""
    path = _options().tiles or os.environ.get(TILES_ENV) or None
    if path is None and for_writing:
        return Path.home() / ".cache" / "cdt_fast" / "tiles.json"
    return Path(path) if path else None


def tile_family(x: torch.Tensor) -> str:
    """The family of tile tables a launch on ``x`` reads (not the device's arch family,
    :func:`cdt_fast.devices.arch_family`, from which it derives): :func:`tile_options`'s ``arch``
    if set, else the device's family, ``sm_80``'s tables for CPU tensors under the interpreter. A
    CUDA device older than the asked family raises: its tiles may need more shared memory than the
    device has."""
    asked = _options().arch
    family = devices.arch_family(x.device)
    if family == "cpu":
        return asked or "sm_80"
    if asked is None:
        return family
    if ARCH_FAMILIES.index(asked) > ARCH_FAMILIES.index(family):
        raise ValueError(
            f"tile_options(arch={asked!r}) on {x.device}, a {family} device: that family's tiles "
            "need its shared memory; ask for this device's family or an older one"
        )
    return asked


def emulates_gpu(x: torch.Tensor) -> bool:
    """Whether a launch on ``x`` is planned as on a GPU: a CUDA tensor, or any tensor inside
    ``tile_options(arch=...)``."""
    return x.device.type == "cuda" or _options().arch is not None


def launch_dtype(x: torch.Tensor) -> torch.dtype:
    """The storage dtype a launch on ``x`` is planned for: ``x``'s own, or
    :func:`tile_options`'s ``dtype`` standing in for it (fp32 CPU tensors under the interpreter
    only: anywhere else the kernels would compute in a dtype the plan did not choose)."""
    asked = _options().dtype
    if asked is None or asked == x.dtype:
        return x.dtype
    if x.device.type == "cuda" or x.dtype != torch.float32 or not interpreting():
        raise ValueError(
            f"tile_options(dtype={asked}) stands in for fp32 CPU tensors under the Triton "
            f"interpreter only, got a {x.dtype} tensor on {x.device}; pass {asked} tensors instead"
        )
    return asked


def pipeline_buffers(arch: str, stages: int) -> int:
    """Copies of a loop's operand tiles Triton keeps in shared memory for ``num_stages`` =
    ``stages``: all of them on sm_90 (the async ``wgmma`` pipeline), one fewer on sm_80 (the
    ``cp.async`` one), at least one for a dot. Read off compiled code (Triton 3.6 and 3.9): the
    bf16 time upsample's 128 x 128 x 64 tile in 3 stages holds 144 KiB on sm_90, 96 on sm_80."""
    if arch not in ARCH_FAMILIES:
        raise ValueError(f"arch must be one of {ARCH_FAMILIES}, got {arch!r}")
    return stages if arch == "sm_90" or stages <= 1 else stages - 1


def shared_memory(
    arch: str,
    stages: int,
    operands: Sequence[int],
    size: int,
    *,
    once: int = 0,
    scratch: int = 0,
) -> int:
    """Bytes of shared memory a kernel's block holds on ``arch``, bounded from its code: the
    pipeline's copies (:func:`pipeline_buffers`) of the operand tiles one step of its main loop
    loads for ``tl.dot`` (``operands``: their element counts, of ``size`` bytes each) beside the
    ``once`` elements of an operand loaded before the loop, or the ``scratch`` bytes staged after
    it (an epilogue's layout change), whichever is larger (the loop's buffers are free by then),
    plus the static reserve."""
    buffers = pipeline_buffers(arch, stages)
    return max((buffers * sum(operands) + once) * size, scratch) + SHARED_MEMORY_RESERVE


def device_shared_memory(device: torch.device) -> int:
    """The opt-in maximum of shared memory per block of a CUDA device, in bytes (what Triton
    checks a kernel against before launching it)."""
    optin = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", None)
    if optin is None:  # a torch without the property: Triton's driver reads the same attribute
        from triton.runtime import driver

        index = device.index if device.index is not None else torch.cuda.current_device()
        optin = driver.active.utils.get_device_properties(index)["max_shared_mem"]
    return int(optin)


def shared_memory_limit(x: torch.Tensor, arch: str) -> int:
    """The shared memory a block of a launch on ``x`` planned for ``arch`` may use: the family's
    :data:`SHARED_MEMORY_LIMIT`, lowered to a CUDA device's own opt-in maximum (99 KB on compute
    capability 8.6, 8.9 and 12.x) or to :func:`tile_options`'s ``shared_memory``. Asking a CUDA
    device for more than it has raises."""
    if arch not in ARCH_FAMILIES:
        raise ValueError(f"arch must be one of {ARCH_FAMILIES}, got {arch!r}")
    limit = SHARED_MEMORY_LIMIT[arch]
    asked = _options().shared_memory
    if x.device.type == "cuda":
        device = device_shared_memory(x.device)
        if asked is not None and asked > device:
            raise ValueError(
                f"tile_options(shared_memory={asked}) on {x.device}, whose blocks get at most "
                f"{device} bytes; ask for {device} or less"
            )
        limit = min(limit, device)
    return limit if asked is None else min(limit, asked)


def _smaller(tile: Tile, shrink: Sequence[str]) -> Optional[Tile]:
    """The next tile :func:`fit_tile` tries after ``tile``, or None when there is none."""
    if tile.num_stages > 2:
        return Tile(tile.meta, tile.num_warps, tile.num_stages - 1)
    meta = tile.kwargs
    for key in shrink:
        if meta[key] > 16:
            return Tile.of(tile.num_warps, tile.num_stages, **{**meta, key: meta[key] // 2})
    if tile.num_stages > 1:
        return Tile(tile.meta, tile.num_warps, 1)
    return None


def fit_tile(
    tile: Tile,
    footprint: Callable[[Tile], int],
    limit: int,
    *,
    name: str,
    shrink: Sequence[str] = (),
    why: str = "",
) -> Tile:
    """``tile`` if its ``footprint`` (bytes of shared memory) is within ``limit``, else the first
    tile that is, each smaller than the one before: pipeline stages down to 2 (the loads of one
    step still overlap the dots of the previous one), then the block sizes named in ``shrink``
    halved in that order, each down to 16 (the smallest side of a ``tl.dot`` operand), then a
    single stage. A tile within the limit is returned as it is, so the tables' own tiles run
    wherever they fit. Raises ValueError naming ``name`` (and ``why``) when nothing fits."""
    candidate = tile
    while True:
        needed = footprint(candidate)
        if needed <= limit:
            return candidate
        smaller = _smaller(candidate, shrink)
        if smaller is None:
            raise ValueError(
                f"{name}: no tile fits the {limit} bytes of shared memory per block: the smallest, "
                f"{candidate.label()}, needs {needed}{'; ' + why if why else ''}"
            )
        candidate = smaller


def per_shape_class(table: Callable[..., Tile]) -> Callable[..., Tile]:
    """Memoises a kernel's tile table (``norm_tile``, ``conv_tile``, ...): its tile is a pure
    function of the shape class and shared-memory limit it is given (ints, strs, bools), and
    every launch asks for it, so the fitting (:func:`fit_tile`) runs once per shape class."""
    return functools.lru_cache(maxsize=256)(table)


def _short_dtype(value) -> str:
    return dtype_name(value) if isinstance(value, torch.dtype) else value


def shape_key(shape_class: Mapping[str, object]) -> str:
    """A stable text key for a shape class (names sorted; dtypes short)."""
    return ",".join(f"{k}={_short_dtype(v)}" for k, v in sorted(shape_class.items()))


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ValueError(f"tile file {path} is not readable JSON ({err})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"tile file {path} is not a {SCHEMA} file")
    return data


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> Dict[Tuple[str, str, str], Tile]:
    tiles = {}
    for arch, kernels in _read(Path(path)).get("tiles", {}).items():
        for kernel, entries in kernels.items():
            for key, entry in entries.items():
                tiles[(arch, kernel, key)] = Tile.from_json(entry)
    return tiles


def load_tiles(path: Union[str, os.PathLike]) -> Dict[Tuple[str, str, str], Tile]:
    """``{(arch family, kernel, shape key): Tile}`` of a tile file (empty if it is missing);
    re-read when the file changes."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    return _load(str(path.resolve()), st.st_mtime_ns, st.st_size)


def lookup(kernel: str, arch: str, shape_class: Mapping[str, object], default: Tile) -> Tile:
    """The tile of one launch: the tile file's entry for it if there is one, else ``default``
    (the kernel's table)."""
    path = tiles_path()
    if path is None:
        return default
    return load_tiles(path).get((arch, kernel, shape_key(shape_class)), default)


def record(kernel: str, arch: str, shape_class: Mapping[str, object], tile: Tile) -> Path:
    """Merge one autotuning winner into the tile file (written atomically)."""
    from cdt_fast.checkpoint import atomic_write

    path = tiles_path(for_writing=True)
    data = _read(path) or {"schema": SCHEMA, "tiles": {}}
    data["triton"] = triton.__version__
    entries = data.setdefault("tiles", {}).setdefault(arch, {}).setdefault(kernel, {})
    entries[shape_key(shape_class)] = tile.to_json()
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def launch(
    kernel,
    tuned,
    grid: Callable[[Mapping[str, int]], tuple],
    args: tuple,
    meta: Mapping[str, object],
    *,
    name: str,
    arch: str,
    shape_class: Mapping[str, object],
    tile: Tile,
    autotune: bool,
    derived: Optional[Callable[[Mapping[str, object]], Mapping[str, object]]] = None,
) -> Tile:
    """Launch ``kernel`` with ``tile`` (after the tile file's override), or with ``autotune``
    through ``tuned`` (a ``triton.autotune`` wrapper of ``kernel``), recording a new winner.
    ``derived(kwargs)``: launch arguments that follow from the tile (e.g. a loop bound rounded to
    its BLOCK_K), for the fixed tile. Returns the tile that ran (the tuned one when tuning).
    Every grid is checked against CUDA's limits first (:func:`~._common.check_grid`); the
    kernel runs on the device of its first tensor argument (:func:`~._common.on_device`)."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    with on_device(first) if first is not None else contextlib.nullcontext():
        return _launch(
            kernel, tuned, grid, args, meta, name, arch, shape_class, tile, autotune, derived
        )


def _launch(kernel, tuned, grid, args, meta, name, arch, shape_class, tile, autotune, derived):
    if autotune:
        if interpreting():
            # Tuning times each candidate with Triton's GPU benchmarker, which the interpreter
            # lacks (Triton then fails with "0 active drivers"); its timings would mean nothing.
            raise RuntimeError(
                f"{name}: autotuning times kernels on a GPU, and the Triton interpreter has none; "
                f"unset {AUTOTUNE_ENV} or leave tile_options(autotune=...) off under "
                "TRITON_INTERPRET=1"
            )
        seen = len(tuned.cache)
        tuned[lambda cfg: check_grid(grid(cfg), name)](*args, **meta)
        best = Tile.from_config(tuned.best_config)
        if len(tuned.cache) > seen:  # benchmarked just now: a new shape class
            record(name, arch, shape_class, best)
        return best
    tile = lookup(name, arch, shape_class, tile)
    # A constexpr the launcher fixes (e.g. the fused norm's full-row BLOCK_N) wins over the tile.
    kwargs = {**tile.launch_kwargs(), **meta}
    if derived is not None:
        kwargs.update(derived(kwargs))
    kernel[check_grid(grid(kwargs), name)](*args, **kwargs)
    return tile
