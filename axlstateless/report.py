"""Outcome records: every temporary ends in exactly one, and the exit code is derived from them.

Records stream to sinks as they are made (a post-stage has no terminal, and a million records must not be
held in memory): JSON lines for ``--json`` and ``--report FILE``, one human line otherwise.
"""

from __future__ import annotations

import enum
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .errors import EXIT_ABORTED, EXIT_LEFT, EXIT_OK, EXIT_TIMEOUT, AxlError, Interrupted


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

    def to_text(self, label: str | None = None) -> str:
        """One human line; `label` replaces the outcome's word (a dry run says "would commit")."""
        text = f"{label or self.outcome.value:<9} {os.fsdecode(self.path)!s}"
        if self.outcome is Outcome.COMMITTED and self.final is not None:
            text += f" -> {os.fsdecode(os.path.basename(self.final))}"
        if self.reason:
            text += f" ({self.reason})"
        return text.replace("\n", "\\n")


class TextOut(Protocol):
    """Where text goes: a file, standard output or a wrapper of it."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def plural(n: int, one: str, many: str) -> str:
    """``1 temporary``, ``2 temporaries``: the count and the right form of the noun."""
    return f"{n} {one if n == 1 else many}"


#: What a dry run (or `status`) says of each outcome: what the real run would do.
WOULD: Final[dict[Outcome, str]] = {
    Outcome.COMMITTED: "would commit",
    Outcome.ABORTED: "would delete",
    Outcome.LEFT: "would leave",
    Outcome.SKIPPED: "would skip",
}


@dataclass
class Summary:
    command: str
    dry_run: bool = False
    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    in_progress: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    error: str | None = None
    interrupted: str | None = None  # the signal's name when a signal stopped the run at a boundary
    exit_override: int | None = None  # the exit code of an error or interruption that ended the run

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        """Temporaries settled per second over the whole run."""
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """4 could not act on some > 3 gave up waiting > 1 some data did not arrive > 0 all committed;
        an error or a signal that ended the run gives its own."""
        if self.exit_override is not None:
            return self.exit_override
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
        out["per_second"] = round(self.rate, 1)
        if self.interrupted:
            out["interrupted"] = True
            out["signal"] = self.interrupted
        if self.error:
            out["error"] = self.error
        return out

    def to_text(self) -> str:
        if self.dry_run:
            parts = [f"{WOULD[o]} {n}" for o, n in self.counts.items() if n or o is Outcome.COMMITTED]
        else:
            parts = [f"{n} {o.value}" for o, n in self.counts.items() if n or o is Outcome.COMMITTED]
        if self.in_progress:
            parts.append(f"{self.in_progress} still in transfer")
        text = f"{self.command}: {plural(self.total, 'temporary', 'temporaries')}: " + ", ".join(parts)
        text += f" in {format_elapsed(self.elapsed)} ({self.rate:.0f}/s)"
        if self.interrupted:
            text += f", interrupted by {self.interrupted}"
        return text + f" (exit {self.exit_code})"


def format_elapsed(seconds: float) -> str:
    """``0.42s``, ``12.3s``, ``4m05s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Meter:
    """Progress a person can read: how many done so far, the rate and the time elapsed.

    On a terminal (`live`), one line redrawn in place a few times a second; otherwise (a batch job's
    log), one line every `every` seconds to `logs`. Not thread-safe: the caller holds its lock.
    """

    def __init__(
        self,
        command: str,
        *,
        live: TextOut | None = None,
        logs: list[TextOut] | None = None,
        every: float = 5.0,
        live_every: float = 0.2,
        noun: tuple[str, str] = ("temporary", "temporaries"),
        verb: str = "settled",
    ) -> None:
        self.command = command
        self.live = live
        self.logs = logs or []
        self.every = live_every if live is not None else every
        self.noun = noun
        self.verb = verb
        self.started = time.monotonic()
        # On a terminal the line shows at once, so even a short run shows how far it got.
        self.next = self.started + (0.0 if live is not None else self.every)
        self.shown = False  # the live line is on the terminal

    def due(self) -> bool:
        return time.monotonic() >= self.next

    def line(self, done: int, detail: str = "") -> str:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.command}: {plural(done, *self.noun)} {self.verb}"
        if detail:
            text += f" ({detail})"
        return text + f", {rate:.0f}/s, {format_elapsed(elapsed)} elapsed"

    def tick(self, done: int, detail: str = "") -> str | None:
        """Draw (or log) the progress if it is time; the line written to the logs, if any."""
        now = time.monotonic()
        if now < self.next:
            return None
        self.next = now + self.every
        line = self.line(done, detail)
        if self.live is not None:
            self.live.write("\r" + line + "\x1b[K")
            self.live.flush()
            self.shown = True
            return None
        for stream in self.logs:
            stream.write(line + "\n")
            stream.flush()
        return line

    def clear(self) -> None:
        """Erase the live line before anything else is written to the terminal."""
        if self.shown and self.live is not None:
            self.live.write("\r\x1b[K")
            self.live.flush()
            self.shown = False


Sink = Callable[[Record], None]


class Reporter:
    """Fans records out to JSON-lines streams (``--json`` stdout, ``--report`` files) and a text stream,
    counts them, and shows progress (a live line on a terminal, else a line every few seconds to the log
    streams); safe to call from several workers at once."""

    def __init__(
        self,
        command: str,
        *,
        dry_run: bool = False,
        json_streams: list[TextOut] | None = None,
        report_streams: list[TextOut] | None = None,
        summary_streams: list[TextOut] | None = None,
        text_stream: TextOut | None = None,
        text_filter: Callable[[Record], bool] | None = None,
        log_streams: list[TextOut] | None = None,
        progress_every: float = 5.0,
        live: TextOut | None = None,
        text_header: str | None = None,
        wants_records: bool = True,
    ) -> None:
        self.summary = Summary(command, dry_run=dry_run)
        #: False when committed temporaries may be reported through `count` instead of one Record each
        #: (no --json, --report or -v): a million records built only to be counted are waste.
        self.wants_records = wants_records
        self.text_format: Callable[[Record], str] = self._default_text
        self.text_header = text_header  # written once, before the first text line
        # Records and the summary go to both; log lines only to the report files, never to --json stdout.
        self._reports = report_streams or []
        self._json = [*(json_streams or []), *self._reports]
        self._summary_only = summary_streams or []  # ``--json --quiet``: the summary object alone
        self._text = text_stream
        self._text_filter = text_filter
        self._logs = log_streams or []
        self._meter = Meter(command, live=live, logs=None, every=progress_every)
        self._report_every = progress_every
        self._next_report = time.monotonic() + progress_every
        self._lock = threading.Lock()

    def _default_text(self, record: Record) -> str:
        return record.to_text(WOULD[record.outcome] if self.summary.dry_run else None)

    def __call__(self, record: Record) -> None:
        with self._lock:
            summary = self.summary
            summary.counts[record.outcome] += 1  # once per temporary: no method call
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
                self._meter.clear()
                if self.text_header is not None:
                    self._text.write(self.text_header + "\n")
                    self.text_header = None
                self._text.write(self.text_format(record) + "\n")
                if self._meter.live is not None:
                    self._text.flush()  # the live line is redrawn after this line, not before it
            if self._meter.due():
                self._progress_locked()

    def count(self, outcome: Outcome, n: int) -> None:
        """Report `n` temporaries that ended in `outcome` without a Record each (see `wants_records`)."""
        with self._lock:
            self.summary.counts[outcome] += n
            if self._meter.due():
                self._progress_locked()

    def _progress_locked(self) -> None:
        counts = ", ".join(f"{n} {o.value}" for o, n in self.summary.counts.items() if n)
        line = self._meter.line(self.summary.total, counts)
        self._meter.tick(self.summary.total, counts)
        now = time.monotonic()
        if self._meter.live is None or now >= self._next_report:
            # Without a terminal the line goes to the logs; the report gets one every few seconds either way.
            self._next_report = now + self._report_every
            self._log_locked(line, to_logs=self._meter.live is None)

    def log(self, message: str) -> None:
        """A progress or diagnostic line: to the log streams (stderr) and, as {"log": ...}, to the report
        file; never to --json standard output, which holds records only."""
        with self._lock:
            self._log_locked(message)

    def _log_locked(self, message: str, *, to_logs: bool = True) -> None:
        if to_logs:
            self._meter.clear()
            for stream in self._logs:
                stream.write(message + "\n")
                stream.flush()
        entry = json.dumps({"log": message, "time": round(time.time(), 3)}) + "\n"
        for stream in self._reports:
            stream.write(entry)
            stream.flush()

    def finish(self, *, error: AxlError | None = None) -> Summary:
        """Write the summary (with `error`, the error or interruption that ended the run) and return it."""
        with self._lock:
            self._meter.clear()
            summary = self.summary
            summary.elapsed = time.monotonic() - summary.started
            if isinstance(error, Interrupted):
                summary.interrupted = error.signal_name
            if error is not None:
                summary.error = str(error)
                summary.exit_override = error.exit_code
            line = json.dumps(summary.to_json()) + "\n"
            for stream in [*self._json, *self._summary_only]:
                stream.write(line)
                stream.flush()
            # After an error the human "N committed (exit 0)" line would contradict it; an interruption
            # says what was done before it.
            if self._text is not None and (error is None or summary.interrupted):
                self._text.write(summary.to_text() + "\n")
                self._text.flush()
        return summary
