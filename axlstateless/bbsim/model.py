"""The simulator's model: its settings, its injected failures, a copy's file list, and how a handle's
BB status follows from its contributors' copies (``BBFULLSUCCESS`` only when every contributor's copy
is done; see docs/ibm-bb.md for the status values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from axlstateless.backends.bbcmd_reply import STATUS_VALUES

SPOOL_ENV: Final = "AXL_BBSIM_SPOOL"
FIRST_HANDLE: Final = 2**32 + 1  # real handles are large uint64s; small ones would hide formatting bugs
DEFAULT_RATE: Final = 200e6  # bytes per second
#: A transfer entry with no mover pid after this long belongs to a ``copy`` that died while starting one.
SPAWN_GRACE: Final = 30.0
BB_RECURSIVE: Final = 0x1  # BBFILEFLAGS: create missing parent directories of the destination

# Environment overrides of config.json, read by every bbsim process (the mover inherits copy's env).
ENV_RATE: Final = "AXL_BBSIM_RATE"
ENV_FILE_DELAY: Final = "AXL_BBSIM_FILE_DELAY"
ENV_START_DELAY: Final = "AXL_BBSIM_START_DELAY"
ENV_FAIL_HANDLES: Final = "AXL_BBSIM_FAIL_HANDLES"
ENV_HANG: Final = "AXL_BBSIM_HANG"
ENV_GARBAGE: Final = "AXL_BBSIM_GARBAGE"


class SimError(Exception):
    """A bbcmd-level failure: becomes a reply with a non-zero ``rc`` and an ``error`` object."""

    def __init__(self, text: str, func: str, rc: int = -1) -> None:
        self.text = text
        self.func = func
        self.rc = rc
        super().__init__(f"{func}: {text}")


@dataclass(frozen=True, slots=True)
class Config:
    """How the simulated BB moves data; `load_config` merges config.json with the environment."""

    rate: float = DEFAULT_RATE  # bytes per second, per copy
    file_delay: float = 0.0  # seconds before each file
    start_delay: float = 0.0  # seconds a copy stays BBNOTSTARTED
    hang: float = 0.0  # seconds every bbcmd call sleeps before answering
    garbage: bool = False  # every bbcmd call prints garbage instead of JSON


@dataclass(slots=True)
class Injections:
    """Failures to play; per handle (keys are handle numbers) and for the next bbcmd calls."""

    fail: dict[int, int | None] = field(default_factory=dict)  # handle -> fail after N bytes (None: half)
    status: dict[int, int] = field(default_factory=dict)  # handle -> forced status value
    hang_calls: int = 0
    hang_seconds: float = 0.0
    garbage_calls: int = 0
    error_calls: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "fail": {str(h): n for h, n in sorted(self.fail.items())},
            "status": {str(h): v for h, v in sorted(self.status.items())},
            "hang_calls": self.hang_calls,
            "hang_seconds": self.hang_seconds,
            "garbage_calls": self.garbage_calls,
            "error_calls": self.error_calls,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Injections:
        return cls(
            fail={int(h): (None if n is None else int(n)) for h, n in obj.get("fail", {}).items()},
            status={int(h): int(v) for h, v in obj.get("status", {}).items()},
            hang_calls=int(obj.get("hang_calls", 0)),
            hang_seconds=float(obj.get("hang_seconds", 0.0)),
            garbage_calls=int(obj.get("garbage_calls", 0)),
            error_calls=int(obj.get("error_calls", 0)),
        )


@dataclass(frozen=True, slots=True)
class HandleView:
    """What ``getstatus`` reports of one handle, derived from its record and its movers."""

    handle: int
    jobid: str
    jobstepid: int
    tag: int
    contribs: tuple[int, ...]
    status: int
    reporting: int
    moved: int
    local: Mapping[int, tuple[int, int]]  # contrib -> (local status, bytes moved)

    def local_status(self, contribid: int) -> tuple[int, int]:
        if contribid not in self.contribs:
            return STATUS_VALUES["BBNOTACONTRIB"], 0
        return self.local.get(contribid, (STATUS_VALUES["BBNOTREPORTED"], 0))


@dataclass(frozen=True, slots=True)
class FileEntry:
    source: str
    destination: str
    flags: int


def parse_filelist(text: str, filelist: str) -> list[FileEntry]:
    """``<source> <destination> [<flags>]`` per line, white-space separated, as bbcmd reads it."""
    entries = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) not in (2, 3):
            raise SimError(f"Invalid number of parameters for filelist {filelist}: {line!r}", "bbcmd_copy")
        try:
            flags = int(words[2], 0) if len(words) == 3 else 0
        except ValueError:
            raise SimError(f"Invalid file flags in filelist {filelist}: {line!r}", "BB_AddFiles") from None
        entries.append(FileEntry(words[0], words[1], flags))
    return entries


#: The BB status of one contributor's copy, by the state its mover reports.
STATE_STATUS: Final[Mapping[str, int]] = {
    "queued": STATUS_VALUES["BBNOTSTARTED"],
    "running": STATUS_VALUES["BBINPROGRESS"],
    "canceling": STATUS_VALUES["BBINPROGRESS"],
    "done": STATUS_VALUES["BBFULLSUCCESS"],
    "failed": STATUS_VALUES["BBFAILED"],
    "canceled": STATUS_VALUES["BBCANCELED"],
}


def handle_status(states: Sequence[str], contribs: int, *, canceled: bool, injected: int | None = None) -> int:
    """The status of a handle whose contributors' copies are in `states` (one per copy started), out of
    `contribs` contributors; an injected status wins."""
    if injected is not None:
        return injected
    if any(s in ("running", "canceling") for s in states):
        return STATUS_VALUES["BBINPROGRESS"]
    if any(s == "queued" for s in states):
        return STATUS_VALUES["BBNOTSTARTED"]
    if canceled or "canceled" in states:
        return STATUS_VALUES["BBCANCELED"]
    if "failed" in states:
        return STATUS_VALUES["BBFAILED"]
    if not states:
        return STATUS_VALUES["BBNOTSTARTED"]
    if len(states) < contribs:
        return STATUS_VALUES["BBINPROGRESS"]  # waiting for the other contributors to report
    return STATUS_VALUES["BBFULLSUCCESS"]
