"""The cdt_fast engine: ``accelerate(model)`` turns a reference CDT into a drop-in accelerated one.

Pieces, one per module: ``dispatch`` (the op table, op name -> backend function, for the
tokenizer's ops and the generator's attention alike; ``auto`` follows the committed decision table
in ``decisions``, ``tune`` measures), ``registry`` (which backend implements which op, where),
``decision_table`` (auto's decisions as data, and their JSON), ``tuning`` (tune's timings),
``plan`` (the networks compiled into nodes with packed weights), ``state`` (preallocated double-buffered causal state),
``graphs`` (CUDA graph capture/replay of chunk steps, keyed by their launch sequence),
``record`` (which backend each op call actually ran on, and what the graphs did),
``memory`` (chunk size from free memory, halving on OOM), ``streams`` (rebuffering of frame
iterators), ``sessions`` (the preallocated state and chunk step of one stream shape), ``noise``
(the decoder's starting noise, chunk by chunk), ``layout`` (activation memory format and channel
alignment per backend), ``accelerated`` (the module class and ``accelerate``), ``convert`` (a CDT
from an upstream-format model or state dict).
"""

from .accelerated import AcceleratedCDT, accelerate
from .convert import infer_config
from .dispatch import ENV_VAR, OPS, DispatchTable, Measurements, OpTable
from .memory import MemoryModel

__all__ = [
    "AcceleratedCDT",
    "accelerate",
    "infer_config",
    "DispatchTable",
    "ENV_VAR",
    "OPS",
    "Measurements",
    "OpTable",
    "MemoryModel",
]
