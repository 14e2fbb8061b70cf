"""What makes a temporary an orphan: the policy `cleanup` acts on and `status` reports.

A temporary is an orphan when its age passed the threshold and no backend reports its transfer as still
in progress. Its age is measured from the *newer* of its mtime and ctime: every write moves both, and
ctime cannot be set back by anyone but the clock, so a copy still writing (even one that preserves an
old mtime, as pre-stage does) keeps its temporary young. An mtime in the future keeps it young too: the
conservative side, since cleanup deletes.

Durations are written ``<number><unit>`` with units ``s``, ``m``, ``h``, ``d``, ``w``, and may be
chained: ``90s``, ``30m``, ``24h``, ``7d``, ``1h30m``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Final

from .errors import UsageError
from .report import Kind, Outcome, Record

DEFAULT_OLDER_THAN: Final = 24 * 3600.0  # Syncthing's KeepTemporariesH default

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART: Final = r"(\d{1,12}(?:\.\d{1,9})?)([smhdw])"
_DURATION_RE: Final = re.compile(rf"(?:{_PART})+")
_PART_RE: Final = re.compile(_PART)

# Why a temporary is not an orphan (yet): cleanup skips it, and its directory's marker waits.
TOO_YOUNG: Final = "too young"
IN_TRANSFER: Final = "in transfer"
BEING_WRITTEN: Final = "being written"
CONTENTS_PENDING: Final = "contents pending"  # a directory marker: something below is not done


def parse_duration(text: str) -> float:
    """Seconds in `text` (``90s``, ``30m``, ``24h``, ``7d``, ``1h30m``); raises `UsageError` otherwise."""
    spec = text.strip().lower()
    if not _DURATION_RE.fullmatch(spec):
        raise UsageError(None, f"bad duration {text!r}: expected a number and a unit s, m, h, d or w (90s, 24h, 7d)")
    return sum(float(n) * _UNITS[u] for n, u in _PART_RE.findall(spec))


def format_duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``3m20s``, ``24h``, ``7d3h``; negative ages read ``-5s``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f}s"
    for big, small, bu, su in ((86400, 3600, "d", "h"), (3600, 60, "h", "m"), (60, 1, "m", "s")):
        if s >= big and (big != 86400 or s >= 2 * 86400):  # "24h" and "36h" read better than "1d12h"
            rest = (s % big) // small
            return f"{s // big}{bu}{rest}{su}" if rest else f"{s // big}{bu}"
    raise AssertionError(s)  # pragma: no cover - s >= 60 matched above


@dataclass(frozen=True)
class OrphanPolicy:
    """Cleanup's policy, carried by the engine's `Settings` (finalize has none).

    With `act`, the engine follows it: a temporary that is not an orphan is skipped, an old complete one
    committed (deleted with `delete_only`), an old incomplete or legacy one deleted. Without `act`
    (``status``), the engine gives finalize's verdict and only annotates each record with the temporary's
    age and what cleanup would do to it now.
    """

    older_than: float = DEFAULT_OLDER_THAN  # seconds
    now: float | None = None  # the reference time (seconds since the epoch); None: the clock at each check
    delete_only: bool = False
    act: bool = True

    def age_ns(self, st: os.stat_result) -> int:
        now = time.time_ns() if self.now is None else round(self.now * 1e9)
        return now - max(st.st_mtime_ns, st.st_ctime_ns)

    def waiting(self, *, in_transfer: bool, age_ns: int | None) -> str | None:
        """Why a temporary is not an orphan now, or None when it is (or its age is unknown)."""
        if in_transfer:
            return IN_TRANSFER
        if age_ns is not None and age_ns < self.older_than * 1e9:
            return TOO_YOUNG
        return None

    def why_not(self, waiting: str, age_ns: int | None) -> str:
        """The reason of a record that cleanup skips because the temporary is not an orphan."""
        if waiting == IN_TRANSFER:
            return "not an orphan: its transfer is still in progress"
        if waiting == BEING_WRITTEN:
            return "not an orphan: written to while being judged"
        if waiting == CONTENTS_PENDING:
            return "the directory still holds temporaries that are not done; its marker waits"
        age = "" if age_ns is None else f" (age {format_duration(age_ns / 1e9)})"
        return f"younger than {format_duration(self.older_than)}{age}: not an orphan"

    def annotate(self, kind: Kind, outcome: Outcome, age_ns: int | None, waiting: str | None) -> dict[str, Any]:
        """The fields added to a record: ``age_seconds``, ``orphan`` and, for status, ``cleanup`` (what
        cleanup would do now: would commit, would delete, would apply, would leave, too young, ...)."""
        out: dict[str, Any] = {
            "age_seconds": None if age_ns is None else round(age_ns / 1e9, 3),
            "orphan": waiting is None,
        }
        if not self.act:
            out["cleanup"] = waiting or self._would(kind, outcome)
        return out

    def _would(self, kind: Kind, outcome: Outcome) -> str:
        if outcome is Outcome.COMMITTED:
            if kind is Kind.DIR:
                return "would apply"
            return "would delete" if self.delete_only else "would commit"
        if outcome is Outcome.ABORTED:
            return "would delete"
        if outcome is Outcome.LEFT:
            return "would leave"
        return "nothing to do"


def holds_directory(record: Record, policy: OrphanPolicy | None) -> bool:
    """True when `record` leaves work in its directory, so the directory's marker must wait: a temporary
    left in place, or (for cleanup) one that is not an orphan yet."""
    if record.outcome is Outcome.LEFT:
        return True
    return policy is not None and policy.act and record.extra is not None and record.extra.get("orphan") is False


def cleanup_view(record: Record, *, status: bool) -> Record:
    """`record` with the orphan fields every record of cleanup (``age_seconds``, ``orphan``) and of status
    (also ``cleanup``) carries, filled in where the engine never looked at the file (refused by its listed
    type, clashing, unrecognised, an unreadable directory): a stable JSON shape."""
    if record.extra is not None and "orphan" in record.extra and (not status or "cleanup" in record.extra):
        return record
    extra: dict[str, Any] = {"age_seconds": None, "orphan": None}
    if status:
        if record.kind is Kind.UNRECOGNISED:
            extra["cleanup"] = "never touched"
        else:
            extra["cleanup"] = "would leave" if record.outcome is Outcome.LEFT else "nothing to do"
    return replace(record, extra={**extra, **(record.extra or {})})
