"""What is done with a verdict: finalize, cleanup and status are policies the engine calls at a few named
points, so that no step of the engine asks which command it serves.

The engine (`engine.py`) opens and checks a temporary, and `verdict.py` decides commit or abort from the
transfer state and the size. A `Policy` is consulted:

- `in_transfer`: the backend says the temporary's transfer still runs (finalize leaves it for a rerun,
  exit 3; cleanup skips it as not an orphan);
- `hold`: after the ``fstat`` of the open temporary, a reason to leave it untouched for now (cleanup: too
  young), or None;
- `verdict`: may turn the shared verdict into another one (cleanup ``--delete-only``);
- `guard_unchanged`: whether a deletion must also find the file unchanged since it was judged;
- `unclaimed_legacy`: what is done with a legacy AXL temporary that no state file names;
- `marker_waits`: the reason a directory marker waits when something below it is not done;
- `annotate` and `holds_directory`: the fields a record carries, and whether it keeps its directory's
  marker waiting.

`Policy` itself is finalize's; cleanup's (`cleanup.CleanupPolicy`) and status's (`status.StatusPolicy`)
override the points where they differ.
"""

from __future__ import annotations

import enum
import os
from typing import Any, ClassVar

from .report import Kind, Outcome, Record
from .verdict import Action


class Legacy(enum.Enum):
    """What a policy does with a legacy AXL temporary that no state file names."""

    LEAVE = "leave"  # report it left (not exit 0), never open it: it may be the only copy of complete data
    DELETE = "delete"  # delete it once it is an orphan (cleanup --delete-legacy, an explicit opt-in)


class Seen:
    """What a policy saw of one temporary (its age, why it is not an orphan), for its record."""

    __slots__ = ("age_ns", "waiting")

    def __init__(self) -> None:
        self.age_ns: int | None = None
        self.waiting: str | None = None


class Policy:
    """Finalize's policy: commit what verifies, abort what does not, leave what is still in transfer."""

    command: ClassVar[str] = "finalize"
    #: False for a policy that never changes a file (status): the engine then acts as in a dry run.
    acts: ClassVar[bool] = True
    #: Whether the handles of legacy AXL temporaries are asked too (cleanup must not take a running one).
    legacy_handles: ClassVar[bool] = False
    #: Whether a deletion must find the file unchanged (size, ctime) since it was judged.
    guard_unchanged: ClassVar[bool] = False
    #: Whether the engine measures ages (cleanup, status) at all: a stat that finalize never needs.
    measures_age: ClassVar[bool] = False

    def in_transfer(self, seen: Seen) -> tuple[Outcome, str, bool]:
        """Outcome, reason and in-progress flag of a temporary whose transfer still runs."""
        return Outcome.LEFT, "transfer still in progress", True

    def age_ns(self, st: os.stat_result) -> int | None:
        return None

    def hold(self, seen: Seen, st: os.stat_result) -> str | None:
        """A reason to leave the open temporary untouched for now, or None to go on to the verdict."""
        return None

    def verdict(self, action: Action, why: str) -> tuple[Action, str]:
        return action, why

    def unclaimed_legacy(self) -> Legacy:
        return Legacy.LEAVE

    def marker_waits(self, seen: Seen) -> tuple[Outcome, str]:
        """Outcome and reason of a directory marker whose directory still holds unfinished work."""
        return Outcome.LEFT, "the directory still holds unfinished temporaries"

    def annotate(self, kind: Kind, outcome: Outcome, seen: Seen) -> dict[str, Any] | None:
        return None

    def holds_directory(self, record: Record) -> bool:
        """True when `record` leaves work in its directory, so the directory's marker must wait."""
        return record.outcome is Outcome.LEFT


#: The one finalize policy (it holds no state).
FINALIZE = Policy()

__all__ = ["FINALIZE", "Legacy", "Policy", "Seen"]
