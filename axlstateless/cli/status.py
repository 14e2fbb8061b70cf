"""``axl-stateless status``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from axlstateless.orphan import format_duration
from axlstateless.report import Outcome, Record
from axlstateless.status import status

from .mpi import mpi_option
from .options import (
    EXIT_CODES_HELP,
    BackendFactory,
    axl_state_option,
    backend_options,
    handles_errors,
    jobs_option,
    older_than_option,
    output_options,
    reporter,
)

if TYPE_CHECKING:
    from axlstateless.mpi import Distributed


@click.command("status", epilog=EXIT_CODES_HELP)
@click.argument("roots", nargs=-1, required=True, type=click.Path(file_okay=False))
@backend_options
@jobs_option
@axl_state_option
@older_than_option("Show what `cleanup --older-than DURATION` would do to each temporary now (90s, 30m, 24h, 7d).")
@output_options
@mpi_option
@handles_errors
def command(
    roots: tuple[str, ...],
    backend: BackendFactory,
    jobs: int | None,
    older_than: float,
    axl_state: tuple[str, ...],
    as_json: bool,
    report: str | None,
    mpi: Distributed | None,
    quiet: bool,
) -> None:
    """List the temporaries below ROOT... with their decoded fields and what finalize would do now.

    Legacy AXL temporaries and unrecognised names are listed too. Each line (and JSON record: "age_seconds",
    "cleanup") also shows the temporary's age (since the newer of its mtime and ctime) and what cleanup
    would do to it now: would commit, would delete, would apply, too young, in transfer, would leave or
    never touched. Nothing is changed; the exit code is the one finalize would return now.

    \b
    Columns: NOW (what finalize would do now: commit, delete, leave, skip), KIND, MODE, SIZE, HANDLE,
    AGE, CLEANUP (what cleanup --older-than would do now), PATH (as reached from the ROOT typed).
    """
    with reporter("status", as_json, report, True, True, quiet=quiet, header=STATUS_HEADER) as sink:
        sink.text_format = _status_line
        status(
            roots,
            sink,
            backend=backend(),
            jobs=jobs,
            older_than=older_than,
            mpi=mpi,
            axl_state=axl_state,
            progress=sink.log,
        )


#: The columns of `_status_line`: what finalize would do now, what cleanup would do now.
STATUS_HEADER = f"{'NOW':<6} {'KIND':<12} {'MODE':>4} {'SIZE':>12} {'HANDLE':>8} {'AGE':>7} {'CLEANUP':<13}  PATH"
_WOULD = {Outcome.COMMITTED: "commit", Outcome.ABORTED: "delete", Outcome.LEFT: "leave", Outcome.SKIPPED: "skip"}


def _status_line(record: Record) -> str:
    mode = f"{record.mode:04o}" if record.mode is not None else "-"
    size = str(record.size) if record.size is not None else "-"
    handle = str(record.handle) if record.handle is not None else "-"
    would = _WOULD
    extra = record.extra or {}
    age = "-" if extra.get("age_seconds") is None else format_duration(extra["age_seconds"])
    cleanup = str(extra.get("cleanup") or "-")
    line = f"{would[record.outcome]:<6} {record.kind.value:<12} {mode:>4} {size:>12} {handle:>8}"
    line += f" {age:>7} {cleanup:<13}"
    line += f"  {os.fsdecode(record.path)}"
    if record.reason:
        line += f"  ({record.reason})"
    return line.replace("\n", "\\n")
