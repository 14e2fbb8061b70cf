"""Status: what finalize would do now to each temporary below the roots, changing nothing; and, for each,
its age and what cleanup would do to it now (issue 4)."""

from __future__ import annotations

from collections.abc import Sequence

from .backends.base import Backend
from .finalize import FinalizeOptions, finalize
from .orphan import DEFAULT_OLDER_THAN, OrphanPolicy, cleanup_view
from .report import Record, Sink
from .walk import AnyPath


def status(
    roots: Sequence[AnyPath],
    sink: Sink,
    *,
    backend: Backend | None = None,
    jobs: int | None = 1,
    older_than: float = DEFAULT_OLDER_THAN,
    now: float | None = None,
) -> None:
    """Report one `Record` per temporary (and legacy or unrecognised name) with the outcome finalize
    would give it now, and in its ``extra`` the temporary's ``age_seconds`` and ``cleanup``: what
    ``cleanup --older-than`` `older_than` would do to it now (would commit, would delete, would apply,
    too young, in transfer, would leave, never touched). The backend is asked once, without waiting.
    Raises like `finalize`."""

    def annotated(record: Record) -> None:
        sink(cleanup_view(record, status=True))

    policy = OrphanPolicy(older_than=older_than, now=now, act=False)
    options = FinalizeOptions(backend=backend, dry_run=True, jobs=jobs, wait_timeout=0.0, orphans=policy)
    finalize(roots, annotated, options)
