"""A SIGTERM (e.g. from ``timeout`` or the GPU check's phase limit) ends the model benchmark's
measuring, not the process: the rows measured so far are still written, and the exit status says
the results are partial (:data:`EXIT_INTERRUPTED`)."""

from __future__ import annotations

import contextlib
import signal

__all__ = ["EXIT_INTERRUPTED", "Interrupted", "sigterm_interrupts"]

EXIT_INTERRUPTED = 3  # SIGTERM during the run: the rows measured so far were still written


class Interrupted(BaseException):
    """SIGTERM arrived. A BaseException, so that the per-implementation ``except Exception``
    guards do not mistake it for one implementation failing."""


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block SIGTERM raises :class:`Interrupted`, so that a time guard around the
    whole run still gets the rows measured so far written instead of losing them all."""

    def stop(signum, frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (main() called from a worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
