"""The ``none`` backend: the copy is over, whatever moved the data (cp, rsync, mpifileutils, Slurm)."""

from __future__ import annotations

from typing import ClassVar

from .base import Backend, TransferState, TransferStatus

_OVER = TransferStatus(TransferState.OVER, "no transfer status (backend none): judged by verification alone")


class NoneBackend(Backend):
    """Says every copy is over and leaves the verdict to verification alone."""

    name: ClassVar[str] = "none"

    def status(self, handle: int | None) -> TransferStatus:
        return _OVER
