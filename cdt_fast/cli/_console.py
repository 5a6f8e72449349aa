"""What the commands print while they work: progress bars, messages that stay out of them, and
wall times."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def progress(total: int, desc: str, quiet: bool, unit: str = "frame"):
    """A tqdm bar on stderr, silent with --quiet or when stderr is not a terminal. Print messages
    while it runs with :func:`say`, which keeps them out of the bar."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        disable=quiet or not sys.stderr.isatty(),
    )


def say(message: str) -> None:
    """One line on stderr that does not land inside a running progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


@contextlib.contextmanager
def timed(times: dict, name: str, device: "torch.device"):
    """Add the wall time of the block to ``times[name]``; waits for CUDA so the time is real."""
    import torch

    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times[name] = times.get(name, 0.0) + time.perf_counter() - start
