"""Stopping at a temporary boundary when the process is asked to stop (SIGINT, SIGTERM, SIGHUP).

A signal must not stop the work inside one temporary's sequence of system calls: that would be safe
(a rerun repairs any instant) but the report would miss the temporary being settled. So the command
line installs `handlers`, which, while `deferred` is active, only note the signal; the loops that settle
temporaries (the finalize visitor, the walk, pre-stage) call `check` between two temporaries, which
raises `Interrupted` once a signal was noted. The command line then writes the summary, marked
interrupted, and exits 128 + the signal's number. A second signal, or one outside `deferred` (while
nothing can stop cleanly, or nothing was started), raises `Interrupted` at once.

The library itself never installs a handler: a caller with its own (an MPI application) keeps them,
and `check` costs one global look-up while nothing was noted.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Final

from .errors import Interrupted

#: The signals that ask a command to stop: ^C, a batch system's or a person's kill, a closed terminal.
SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_noted: int | None = None  # the signal noted while deferring, until `clear`
_deferring = 0


def noted() -> int | None:
    """The signal noted since the last `clear`, or None."""
    return _noted


def check() -> None:
    """Raise `Interrupted` if a signal was noted: call it between two temporaries."""
    if _noted is not None:
        raise Interrupted(_noted)


def clear() -> None:
    """Forget a noted signal (a new run in the same process)."""
    global _noted  # noqa: PLW0603 - one flag per process, set from a signal handler
    _noted = None


def note(signum: int) -> None:
    """What the handler does while deferring; a test or an embedding caller may call it directly."""
    global _noted  # noqa: PLW0603
    _noted = signum


def sleep(seconds: float) -> None:
    """`time.sleep`, cut short by a noted signal (raises `Interrupted`): a wait on the burst buffer may
    sleep many seconds between two polls."""
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While active, the `handlers` only note a first signal, for `check` to act on at a boundary."""
    global _deferring  # noqa: PLW0603
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def _handle(signum: int, frame: FrameType | None) -> None:
    if _deferring and _noted is None:
        note(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handlers() -> Iterator[None]:
    """Install the handler for `SIGNALS` (from the main thread), restoring the previous ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal ignored on purpose (SIGHUP under nohup) stays ignored.
    previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["SIGNALS", "check", "clear", "deferred", "handlers", "note", "noted", "sleep"]
