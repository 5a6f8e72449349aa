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
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch
import triton

__all__ = [
    "AUTOTUNE_ENV",
    "TILES_ENV",
    "Tile",
    "tile_options",
    "autotune_enabled",
    "tiles_path",
    "arch_family",
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


_OPTIONS: contextvars.ContextVar[Optional[_Options]] = contextvars.ContextVar(
    "cdt_fast_tile_options", default=None
)
_UNSET = _Options()


def _options() -> _Options:
    return _OPTIONS.get() or _UNSET


@contextlib.contextmanager
def tile_options(
    autotune: Optional[bool] = None, tiles: Union[str, os.PathLike, None] = None
) -> Iterator[None]:
    """Within the block, launchers autotune (``autotune=True``) or never do (``False``) whatever
    ``CDT_FAST_AUTOTUNE`` says, and read/write the tile file ``tiles`` instead of
    ``CDT_FAST_TILES``. ``None`` leaves a setting to the environment."""
    if autotune is not None and not isinstance(autotune, bool):
        raise TypeError(f"autotune must be a bool or None, got {autotune!r}")
    if tiles is not None and not isinstance(tiles, (str, os.PathLike)):
        raise TypeError(f"tiles must be a path or None, got {type(tiles).__name__}")
    token = _OPTIONS.set(_Options(autotune, None if tiles is None else os.fspath(tiles)))
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


def arch_family(x: torch.Tensor) -> str:
    """The table family of ``x``'s device: ``sm_90`` from compute capability 9 on, else
    ``sm_80`` (also for CPU tensors under the interpreter)."""
    if x.device.type != "cuda":
        return "sm_80"
    major, _ = torch.cuda.get_device_capability(x.device)
    return "sm_90" if major >= 9 else "sm_80"


def _short_dtype(value) -> str:
    if isinstance(value, torch.dtype):
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(
            value, str(value).replace("torch.", "")
        )
    return value


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
    its BLOCK_K), for the fixed tile. Returns the tile that ran (the tuned one when tuning)."""
    if autotune:
        seen = len(tuned.cache)
        tuned[grid](*args, **meta)
        best = Tile.from_config(tuned.best_config)
        if len(tuned.cache) > seen:  # benchmarked just now: a new shape class
            record(name, arch, shape_class, best)
        return best
    tile = lookup(name, arch, shape_class, tile)
    # A constexpr the launcher fixes (e.g. the fused norm's full-row BLOCK_N) wins over the tile.
    kwargs = {**tile.launch_kwargs(), **meta}
    if derived is not None:
        kwargs.update(derived(kwargs))
    kernel[grid(kwargs)](*args, **kwargs)
    return tile
