"""Cleanup: sweep the orphaned temporaries that no post-stage finished.

An orphan is a temporary whose age (now minus the newer of its mtime and ctime, `orphan`) passed the
threshold and whose transfer no backend reports as in progress. Orphans go through the same engine as
finalize, with the same refusals (symlinks, hard links, non-regular and foreign-owned files, special
bits) and the same order of system calls on open descriptors:

- a complete orphan (its size verifies) is committed: the data arrived, only the finalize was missed;
- an incomplete one is deleted; with ``delete_only`` a complete one is deleted too;
- an AXL temporary that a given state file names (``axl_state``) is settled from its entry, as finalize
  would, once it is an orphan;
- a legacy AXL temporary that no state file names is reported and left (it may be the only copy of
  complete data); with ``delete_legacy``, the explicit opt-in, an orphaned one is deleted, never
  committed (nothing in its name verifies it);
- a directory marker is applied once it is old and nothing below it is still waiting;
- an unrecognised name is reported and never touched;
- a temporary that is not an orphan (too young, in transfer) is skipped: exit code 0, since nothing is
  wrong with it; a later run takes it when it is old enough.

Exit codes are finalize's: 0 every orphan committed (the rest skipped as not orphans yet), 1 some orphans
were deleted (their data did not arrive, or ``delete_only``, or ``delete_legacy``), 4 some could not be
acted on (legacy temporaries left included);
never 3, since cleanup does not wait.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .backends.base import Backend
from .errors import UsageError
from .finalize import FinalizeOptions, finalize
from .orphan import CONTENTS_PENDING, DEFAULT_OLDER_THAN, IN_TRANSFER, OrphanPolicy, cleanup_view, holds_directory
from .policy import Legacy, Policy, Seen
from .report import Kind, Outcome, Record, Sink
from .verdict import Action
from .walk import AnyPath

if TYPE_CHECKING:
    from .mpi import Distributed


class CleanupPolicy(Policy):
    """Cleanup's policy: act only on orphans (`OrphanPolicy`), never delete a file written to since it was
    judged, and with ``delete_only`` delete complete orphans instead of committing them."""

    command: ClassVar[str] = "cleanup"
    legacy_handles: ClassVar[bool] = True
    guard_unchanged: ClassVar[bool] = True
    measures_age: ClassVar[bool] = True

    def __init__(self, orphans: OrphanPolicy, *, delete_legacy: bool = False) -> None:
        self.orphans = orphans
        self.delete_legacy = delete_legacy

    def in_transfer(self, seen: Seen) -> tuple[Outcome, str, bool]:
        seen.waiting = IN_TRANSFER
        return Outcome.SKIPPED, self.orphans.why_not(IN_TRANSFER, seen.age_ns), False

    def age_ns(self, st: os.stat_result) -> int | None:
        return self.orphans.age_ns(st)

    def hold(self, seen: Seen, st: os.stat_result) -> str | None:
        seen.age_ns = self.orphans.age_ns(st)
        seen.waiting = self.orphans.waiting(in_transfer=False, age_ns=seen.age_ns)
        return None if seen.waiting is None else self.orphans.why_not(seen.waiting, seen.age_ns)

    def verdict(self, action: Action, why: str) -> tuple[Action, str]:
        if action is Action.COMMIT and self.orphans.delete_only:
            return Action.ABORT, "complete, but deleted without commit (--delete-only)"
        return action, why

    def unclaimed_legacy(self) -> Legacy:
        return Legacy.DELETE if self.delete_legacy else Legacy.LEAVE

    def marker_waits(self, seen: Seen) -> tuple[Outcome, str]:
        # What is below is not an orphan yet (or was reported left); the marker waits with it.
        seen.waiting = CONTENTS_PENDING
        return Outcome.SKIPPED, self.orphans.why_not(CONTENTS_PENDING, None)

    def annotate(self, kind: Kind, outcome: Outcome, seen: Seen) -> dict[str, Any] | None:
        return self.orphans.annotate(kind, outcome, seen.age_ns, seen.waiting)

    def holds_directory(self, record: Record) -> bool:
        return holds_directory(record, self.orphans)


@dataclass
class CleanupOptions:
    """One field per ``axl-stateless cleanup`` flag."""

    older_than: float = DEFAULT_OLDER_THAN  # seconds: --older-than
    backend: Backend | None = None  # --backend (None: `none`, ages alone decide)
    dry_run: bool = False
    delete_only: bool = False
    one_file_system: bool = True  # never cross into another file system below a root
    jobs: int | None = 1  # --jobs (None: by file system, as finalize)
    mpi: Distributed | None = None  # --mpi: spread over the ranks of an MPI job (records reach rank 0's sink)
    axl_state: Sequence[AnyPath] = ()  # --axl-state: AXL state files (or directories of them)
    delete_legacy: bool = False  # --delete-legacy: delete orphaned AXL temporaries no state file names


def cleanup(
    roots: Sequence[AnyPath],
    sink: Sink,
    options: CleanupOptions | None = None,
    *,
    now: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Commit or delete every orphaned temporary below `roots`, reporting exactly one `Record` per
    temporary (and legacy or unrecognised name) to `sink`; what is not an orphan is reported skipped.

    `now` is the reference time ages are measured from (seconds since the epoch; default: the clock at
    each check), for tests and reproducible reports. The backend is asked once, without waiting. Raises
    `UsageError` for a missing root or a negative threshold (before anything changes) and `BackendError`
    when the backend fails.
    """
    opts = options or CleanupOptions()
    if not opts.older_than > 0:  # also refuses NaN, which no age would be "younger than"
        # 0 would take a temporary a copy is writing at this very moment: every one counts as "still being
        # written" for at least a moment after its last write.
        raise UsageError(None, f"--older-than must be a positive duration (got {opts.older_than:g}s)")
    policy = OrphanPolicy(older_than=opts.older_than, now=now, delete_only=opts.delete_only, act=True)

    def shaped(record: Record) -> None:
        sink(cleanup_view(record, status=False))

    finalize(
        roots,
        shaped,
        FinalizeOptions(
            backend=opts.backend,
            dry_run=opts.dry_run,
            jobs=opts.jobs,
            one_file_system=opts.one_file_system,
            wait_timeout=0.0,  # an orphan's transfer is over or forgotten; one look, no waiting
            mpi=opts.mpi,
            axl_state=opts.axl_state,
            policy=CleanupPolicy(policy, delete_legacy=opts.delete_legacy),
        ),
        progress=progress,
    )
