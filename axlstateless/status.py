"""Status: what finalize would do now to each temporary below the roots, changing nothing."""

from __future__ import annotations

from collections.abc import Sequence

from .backends.base import Backend
from .finalize import FinalizeOptions, finalize
from .report import Sink


def status(roots: Sequence[bytes | str], sink: Sink, *, backend: Backend | None = None, jobs: int = 1) -> None:
    """Report one `Record` per temporary (and legacy or unrecognised name) with the outcome finalize
    would give it now. The backend is asked once, without waiting. Raises like `finalize`."""
    finalize(roots, sink, FinalizeOptions(backend=backend, dry_run=True, jobs=jobs, wait_timeout=0.0))
