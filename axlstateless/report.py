"""Outcome records: every temporary ends in exactly one, and the exit code is derived from them.

Records stream to sinks as they are made (a post-stage has no terminal, and a million records must not be
held in memory): JSON lines for ``--json`` and ``--report FILE``, one human line otherwise.
"""

from __future__ import annotations

import enum
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import EXIT_ABORTED, EXIT_LEFT, EXIT_OK, EXIT_TIMEOUT


class Outcome(enum.Enum):
    COMMITTED = "committed"  # renamed to its final name with its mode and times
    ABORTED = "aborted"  # deleted: the data did not arrive (the old final file, if any, stays)
    LEFT = "left"  # untouched, with the reason: a rerun or a person must look
    SKIPPED = "skipped"  # not ours to act on (legacy, unrecognised) or already done by another process


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    LEGACY = "legacy"  # an AXL temporary that no state file names
    AXL = "axl"  # an entry of an AXL state file (its temporary, or its final written without one)
    STATE_FILE = "state-file"  # an AXL state file that could not be read or removed
    UNRECOGNISED = "unrecognised"


@dataclass(slots=True, kw_only=True)
class Record:
    """What happened (or, in a dry run or `status`, would happen) to one temporary.

    Built by keyword only: several fields share a type, and a reordered positional call would mislabel
    records silently. Treat it as read-only once made (`dataclasses.replace` makes a changed copy). It is
    not frozen: a frozen dataclass sets each of its 12 fields through ``object.__setattr__``, 2.3 us a
    record against 0.6 us, one record per temporary (docs/performance.md).
    """

    path: bytes
    kind: Kind
    outcome: Outcome
    reason: str = ""
    final: bytes | None = None
    mode: int | None = None
    size: int | None = None
    mtime_ns: int | None = None
    handle: int | None = None
    transfer: str | None = None  # what the backend said of the transfer
    in_progress: bool = False  # left because its transfer is still running (exit 3, not 4)
    extra: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        # Undecodable bytes come out as \udcXX escapes (surrogateescape); os.fsencode reverses them.
        out: dict[str, Any] = {
            "path": os.fsdecode(self.path),
            "kind": self.kind.value,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "final": None if self.final is None else os.fsdecode(self.final),
            "mode": None if self.mode is None else f"{self.mode:04o}",
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "handle": self.handle,
            "transfer": self.transfer,
        }
        if self.extra:
            out.update(self.extra)
        return out

    def to_text(self) -> str:
        text = f"{self.outcome.value:<9} {os.fsdecode(self.path)!s}"
        if self.outcome is Outcome.COMMITTED and self.final is not None:
            text += f" -> {os.fsdecode(os.path.basename(self.final))}"
        if self.reason:
            text += f" ({self.reason})"
        return text.replace("\n", "\\n")


@dataclass
class Summary:
    command: str
    dry_run: bool = False
    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    in_progress: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    error: str | None = None

    def add(self, record: Record) -> None:
        self.counts[record.outcome] += 1
        if record.in_progress:
            self.in_progress += 1

    @property
    def exit_code(self) -> int:
        """4 could not act on some > 3 gave up waiting > 1 some data did not arrive > 0 all committed."""
        if self.counts[Outcome.LEFT] > self.in_progress:
            return EXIT_LEFT
        if self.in_progress:
            return EXIT_TIMEOUT
        if self.counts[Outcome.ABORTED]:
            return EXIT_ABORTED
        return EXIT_OK

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"summary": True, "command": self.command, "dry_run": self.dry_run}
        out.update({o.value: n for o, n in self.counts.items()})
        out["in_progress"] = self.in_progress
        out["exit_code"] = self.exit_code
        out["elapsed_seconds"] = round(self.elapsed, 3)
        if self.error:
            out["error"] = self.error
        return out

    def to_text(self) -> str:
        what = "would be " if self.dry_run else ""
        parts = [f"{n} {what}{o.value}" for o, n in self.counts.items() if n or o is Outcome.COMMITTED]
        if self.in_progress:
            parts.append(f"{self.in_progress} still in transfer")
        return f"{self.command}: " + ", ".join(parts) + f" in {self.elapsed:.2f}s (exit {self.exit_code})"


Sink = Callable[[Record], None]


class Reporter:
    """Fans records out to JSON-lines streams and a text stream, counts them, and writes a progress line
    every few seconds to the log streams; safe to call from several workers at once."""

    def __init__(
        self,
        command: str,
        *,
        dry_run: bool = False,
        json_streams: list[IO[str]] | None = None,
        text_stream: IO[str] | None = None,
        text_filter: Callable[[Record], bool] | None = None,
        log_streams: list[IO[str]] | None = None,
        progress_every: float = 5.0,
        wants_records: bool = True,
    ) -> None:
        self.summary = Summary(command, dry_run=dry_run)
        #: False when committed temporaries may be reported through `count` instead of one Record each
        #: (no --json, --report or -v): a million records built only to be counted are waste.
        self.wants_records = wants_records
        self.text_format: Callable[[Record], str] = Record.to_text
        self._json = json_streams or []
        self._text = text_stream
        self._text_filter = text_filter
        self._logs = log_streams or []
        self._every = progress_every
        self._next_progress = time.monotonic() + progress_every
        self._lock = threading.Lock()

    def __call__(self, record: Record) -> None:
        with self._lock:
            summary = self.summary
            summary.counts[record.outcome] += 1  # Summary.add, inlined: once per temporary (issue 6)
            if record.in_progress:
                summary.in_progress += 1
            if self._json:
                data = record.to_json()
                if summary.dry_run:
                    data["dry_run"] = True
                line = json.dumps(data) + "\n"
                for stream in self._json:
                    stream.write(line)
            if self._text is not None and (self._text_filter is None or self._text_filter(record)):
                self._text.write(self.text_format(record) + "\n")
            self._progress_locked()

    def count(self, outcome: Outcome, n: int) -> None:
        """Report `n` temporaries that ended in `outcome` without a Record each (see `wants_records`)."""
        with self._lock:
            self.summary.counts[outcome] += n
            self._progress_locked()

    def _progress_locked(self) -> None:
        if time.monotonic() >= self._next_progress:
            self._next_progress = time.monotonic() + self._every
            counts = ", ".join(f"{n} {o.value}" for o, n in self.summary.counts.items() if n)
            self._log_locked(f"{self.summary.command}: {sum(self.summary.counts.values())} settled so far ({counts})")

    def log(self, message: str) -> None:
        """A progress or diagnostic line: to the log streams (stderr) and, as {"log": ...}, to the report
        file; never to --json standard output, which holds records only."""
        with self._lock:
            self._log_locked(message)

    def _log_locked(self, message: str) -> None:
        for stream in self._logs:
            stream.write(message + "\n")
            stream.flush()
        entry = json.dumps({"log": message, "time": round(time.time(), 3)}) + "\n"
        for stream in self._json:
            if stream is not sys.stdout:
                stream.write(entry)
                stream.flush()

    def finish(self) -> Summary:
        with self._lock:
            self.summary.elapsed = time.monotonic() - self.summary.started
            line = json.dumps(self.summary.to_json()) + "\n"
            for stream in self._json:
                stream.write(line)
                stream.flush()
            if self._text is not None:
                self._text.write(self.summary.to_text() + "\n")
                self._text.flush()
        return self.summary
