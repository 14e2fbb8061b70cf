"""Status: what finalize would do now to each temporary below the roots, changing nothing; and, for each,
its age and what cleanup would do to it now."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .backends.base import Backend
from .finalize import FinalizeOptions, finalize
from .orphan import DEFAULT_OLDER_THAN, IN_TRANSFER, OrphanPolicy, cleanup_view
from .policy import Policy, Seen
from .report import Kind, Outcome, Record, Sink
from .walk import AnyPath

if TYPE_CHECKING:
    from .mpi import Distributed


class StatusPolicy(Policy):
    """Status's policy: finalize's verdicts, nothing changed, each record annotated with the temporary's
    age and what cleanup (`orphans`) would do to it now."""

    command: ClassVar[str] = "status"
    acts: ClassVar[bool] = False
    legacy_handles: ClassVar[bool] = True
    measures_age: ClassVar[bool] = True

    def __init__(self, orphans: OrphanPolicy) -> None:
        self.orphans = orphans

    def in_transfer(self, seen: Seen) -> tuple[Outcome, str, bool]:
        seen.waiting = IN_TRANSFER
        return Outcome.LEFT, "transfer still in progress", True

    def age_ns(self, st: os.stat_result) -> int | None:
        return self.orphans.age_ns(st)

    def hold(self, seen: Seen, st: os.stat_result) -> str | None:
        seen.age_ns = self.orphans.age_ns(st)
        seen.waiting = self.orphans.waiting(in_transfer=False, age_ns=seen.age_ns)
        return None

    def annotate(self, kind: Kind, outcome: Outcome, seen: Seen) -> dict[str, Any] | None:
        return self.orphans.annotate(kind, outcome, seen.age_ns, seen.waiting)


def status(
    roots: Sequence[AnyPath],
    sink: Sink,
    *,
    backend: Backend | None = None,
    jobs: int | None = 1,
    older_than: float = DEFAULT_OLDER_THAN,
    now: float | None = None,
    mpi: Distributed | None = None,
    axl_state: Sequence[AnyPath] = (),
    progress: Callable[[str], None] | None = None,
) -> None:
    """Report one `Record` per temporary (and legacy or unrecognised name) with the outcome finalize
    would give it now, and in its ``extra`` the temporary's ``age_seconds`` and ``cleanup``: what
    ``cleanup --older-than`` `older_than` would do to it now (would commit, would delete, would apply,
    too young, in transfer, would leave, never touched). The backend is asked once, without waiting.
    With `mpi`, the work is spread over the ranks of an MPI job, as `finalize` does. Raises like
    `finalize`."""

    def annotated(record: Record) -> None:
        sink(cleanup_view(record, status=True))

    policy = OrphanPolicy(older_than=older_than, now=now, act=False)
    options = FinalizeOptions(
        backend=backend,
        dry_run=True,
        jobs=jobs,
        wait_timeout=0.0,
        axl_state=axl_state,
        policy=StatusPolicy(policy),
        mpi=mpi,
    )
    finalize(roots, annotated, options, progress=progress)
