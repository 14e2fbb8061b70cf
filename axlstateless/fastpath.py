"""Two speeds, one set of rules: finalize's native accelerator and its pure-Python fallback.

`axlstateless._fastcore` (C, built by ``pip install .``, ``axlstateless/_fastcore.c``) settles the common
case of a plain finalize (no dry run, no cleanup or status policy) a whole chunk of a directory at a
time with the GIL released: v1 file temporaries owned by the user running finalize, whose transfer the
backend and `verdict.decide` say to commit if the size verifies, whose expected metadata come from
the name alone (not an AXL state-file entry). It makes the engine's calls in the
engine's order and gives back, untouched or stopped at an error, everything else, which the Python
engine (`engine.settle_file`) then settles from the start. The rules stay in the engine; this module
decides only which names C may see, and reports C's outcomes as the engine would.

Where the extension cannot be loaded (not built, or a foreign platform) finalize runs the pure-Python
engine alone, with the same outcomes, and says so once on stderr; ``AXLSTATELESS_PURE=1`` forces that
path (the test suite runs once on each). ``axl-stateless --version`` says which path is in use.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Final

# The engine's own wording and repair for the rename's races: the rule stays written once, there.
from .engine import _REPLACED as REPLACED
from .engine import _put_back as put_back
from .nameformat import TempName, parse
from .policy import FINALIZE
from .report import Kind, Outcome, Record
from .verdict import Action, decide
from .walk import Entry, Listing

if TYPE_CHECKING:
    from .engine import Settings
    from .policy import Policy
    from .report import Sink

#: Set to 1 to force the pure-Python path (any value but empty or 0).
PURE_ENV: Final = "AXLSTATELESS_PURE"


def _load() -> tuple[ModuleType | None, str, bool]:
    forced = os.environ.get(PURE_ENV, "")
    if forced not in ("", "0"):
        return None, f"pure Python, forced by {PURE_ENV}={forced}", True
    try:
        core = importlib.import_module(f"{__package__}._fastcore")
    except ImportError as exc:
        return None, f"pure Python: the native core could not be loaded ({exc})", False
    return core, "native core", False


_core, PATH, _FORCED = _load()
#: True when finalize's common case runs in C.
NATIVE: Final = _core is not None
_warned = threading.Event()


def _say_pure_once() -> None:
    if _FORCED or _warned.is_set():
        return
    _warned.set()
    sys.stderr.write(f"axl-stateless: {PATH}; finalizing on the pure-Python path (same outcomes, slower)\n")


def acts(policy: Policy, *, dry_run: bool) -> bool:
    """Whether a run with this policy may settle files natively: an acting finalize only (cleanup's and
    status's policies hold, annotate and turn verdicts: policy.py)."""
    return policy is FINALIZE and not dry_run


def settler(settings: Settings, sink: Sink) -> NativeSettler | None:
    """The native path for a finalize with `settings`, or None where the engine settles everything: a
    dry run, a cleanup or status policy, or no extension (then said once on stderr). Names the walk hands
    over unparsed are v1 names only: legacy names and AXL state-file entries stay with the engine."""
    if not acts(settings.policy, dry_run=settings.dry_run):
        return None
    if _core is None:
        _say_pure_once()
        return None
    return NativeSettler(_core, settings, sink)


def counters() -> dict[str, int]:
    """For tests: system calls the native core made per kind, and how many temporaries it settled."""
    return {} if _core is None else _core.counters()


def inject(kind: str | None, at: int, err: int = errno.EIO) -> None:
    """For tests: the `at`-th call (from 0) of `kind` (a key of `counters`) the native core makes fails
    with `err`; None clears it. Resets the counts of calls."""
    if _core is not None:
        _core.inject(kind, at, err)


class NativeSettler:
    """Hands each listing's unparsed names (`Listing.raw`) to the native core; one per finalize run."""

    def __init__(self, core: ModuleType, settings: Settings, sink: Sink) -> None:
        self._settle = core.settle
        self._settings = settings
        self._sink = sink
        self._euid = settings.euid
        # Transfer handle -> "commit if the size verifies", shared by every chunk and worker: the backend
        # is asked once per handle (16k ranks: 16k handles for a million temporaries).
        self._fast: dict[int | None, bool] = {}
        counts = getattr(sink, "count", None)
        self._count = None if getattr(sink, "wants_records", True) else counts

    def _judge(self, handle: int | None) -> bool:
        transfer = self._settings.backend.status(handle)
        # Asked of the verdict itself, so that its rules stay in one place: C may act only where the
        # verdict is "commit when the sizes agree, abort when they do not".
        commit, _ = decide(transfer, expected_size=1, actual_size=1)
        abort, _ = decide(transfer, expected_size=1, actual_size=0)
        return commit is Action.COMMIT and abort is Action.ABORT

    def settle(self, listing: Listing) -> tuple[list[Entry], bool]:
        """Settle what C can of `listing.raw` and report it; return the entries the engine must settle
        (the listing's parsed entries, then those C deferred) and whether C committed any."""
        names = listing.raw
        outcomes, numbers = self._settle(listing.fd, names, self._fast, self._judge, self._euid, self._settings.fsync)
        committed = outcomes.count(b"c")
        entries = listing.entries
        if committed + len(numbers) < len(names):  # only a race or an error gives more than abort sizes
            entries = entries + [
                Entry(name, parsed, "file")
                for name, done in zip(names, outcomes, strict=True)
                if not done and (parsed := parse(name)) is not None
            ]
        if committed and self._count is not None:
            self._count(Outcome.COMMITTED, committed)
        elif committed:
            for name, done in zip(names, outcomes, strict=True):
                if done == _COMMITTED:
                    self._sink(self._record(listing, name, Outcome.COMMITTED))
        if committed + len(numbers) < len(names):
            for at, done in enumerate(outcomes):
                if done in _RACES:
                    self._sink(self._race(listing, names[at], done))
        for at, number in numbers.items():
            if outcomes[at] == _ABORTED:
                self._sink(self._record(listing, names[at], Outcome.ABORTED, actual_size=number))
            else:  # the final name could not be checked after the rename: as engine._commit reports it
                self._sink(self._record(listing, names[at], Outcome.LEFT, reason=os.strerror(number)))
        return entries, committed > 0

    def _race(self, listing: Listing, name: bytes, done: int) -> Record:
        # The temporary's name was swapped around the rename (a pre-stage rerun recreating it): the
        # engine's own outcome and, after the rename, its own repair (engine._commit).
        if done == _REPLACED_BEFORE:
            return self._record(
                listing, name, Outcome.LEFT, reason=f"{REPLACED}; not committed, rerun to judge the new one"
            )
        tn = parse(name)
        assert isinstance(tn, TempName)  # noqa: S101 - C settles only what parses as one
        return self._record(listing, name, Outcome.LEFT, reason=f"{REPLACED}; {put_back(listing.fd, name, tn.final)}")

    def _record(
        self,
        listing: Listing,
        name: bytes,
        outcome: Outcome,
        *,
        actual_size: int | None = None,
        reason: str | None = None,
    ) -> Record:
        # The record engine.settle_file makes for the same outcome (tests compare the two paths).
        tn = parse(name)
        if not isinstance(tn, TempName):  # C settles only what parses as one
            raise AssertionError(name)
        transfer = self._settings.backend.status(tn.handle)
        if reason is None:
            size = tn.size if actual_size is None else actual_size
            _, reason = decide(transfer, expected_size=tn.size, actual_size=size)
        return Record(
            path=os.path.join(listing.path, name),
            kind=Kind.FILE,
            outcome=outcome,
            reason=reason,
            final=os.path.join(listing.path, tn.final),
            mode=tn.mode,
            size=tn.size,
            mtime_ns=tn.mtime_ns,
            handle=tn.handle,
            transfer=transfer.detail,
        )


# The native core's outcome bytes (_fastcore.c, enum outcome).
_COMMITTED: Final = ord("c")
_ABORTED: Final = ord("a")
_REPLACED_BEFORE: Final = ord("r")
_RACES: Final = frozenset({_REPLACED_BEFORE, ord("m")})
