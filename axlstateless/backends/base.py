"""The transfer-status backend interface: "what is the state of the transfer that wrote this temporary?"

A backend knows nothing of files. The finalizer gives it the set of transfer handles found in the
temporaries' names, lets it wait until those transfers are over (or a deadline passes), then asks it for
each handle's state. The verdict (commit, abort, leave) is decided in one place, `verdict.py`, for every
backend alike.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import ClassVar


class TransferState(enum.Enum):
    """What a backend can say of one transfer."""

    IN_PROGRESS = "in-progress"  # still moving data (or not started): do not touch the temporary
    SUCCEEDED = "succeeded"  # fully succeeded: commit if the size verifies
    FAILED = "failed"  # failed, canceled, stopped or partial: abort
    UNKNOWN = "unknown"  # no status for it (no handle, or the BB does not know it): verification alone, noted
    OVER = "over"  # the backend tracks no transfers (`none`): the copy is over, verification alone decides


@dataclass(frozen=True, slots=True)
class TransferStatus:
    state: TransferState
    detail: str  # what the backend saw, for the report: "BBFAILED", "no handle in the name", ...


Progress = Callable[[str], None]


class Backend(ABC):
    """One way of learning transfer states. Subclasses register themselves by `name`."""

    name: ClassVar[str]
    #: True when the backend answers per handle, so finalize must collect the handles first and `wait`.
    uses_handles: ClassVar[bool] = False

    def wait(self, handles: Set[int], timeout: float, progress: Progress) -> bool:
        """Block until none of `handles` is in progress or `timeout` seconds pass; True if all ended.

        Raises `BackendError` when the status source fails beyond its retries.
        """
        return True

    @abstractmethod
    def status(self, handle: int | None) -> TransferStatus:
        """The state of the transfer `handle` (None: the name carries no handle), as of the last wait."""
