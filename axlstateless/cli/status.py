"""``axl-stateless status``."""

from __future__ import annotations

import os

import click

from axlstateless.backends import create_backend
from axlstateless.finalize import default_jobs
from axlstateless.report import Outcome, Record
from axlstateless.status import status

from .options import EXIT_CODES_HELP, backend_options, handles_errors, output_options, reporter


@click.command("status", epilog=EXIT_CODES_HELP)
@click.argument("roots", nargs=-1, required=True, type=click.Path(file_okay=False))
@backend_options
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=default_jobs(),
    show_default=True,
    help="Directories worked on at once.",
)
@output_options
@handles_errors
def command(
    roots: tuple[str, ...],
    backend: str,
    bbcmd: str | None,
    jobid: str | None,
    jobstepid: int,
    poll_interval: float,
    jobs: int,
    as_json: bool,
    report: str | None,
) -> None:
    """List the temporaries below ROOT... with their decoded fields and what finalize would do now.

    Legacy AXL temporaries and unrecognised names are listed too. Nothing is changed; the exit code is
    the one finalize would return now.
    """
    options = {"bbcmd": bbcmd, "jobid": jobid, "jobstepid": jobstepid, "poll_interval": poll_interval}
    the_backend = create_backend(backend, options)
    with reporter("status", as_json, report, True, True) as sink:
        sink.text_format = _status_line
        status(roots, sink, backend=the_backend, jobs=jobs)


def _status_line(record: Record) -> str:
    mode = f"{record.mode:04o}" if record.mode is not None else "-"
    size = str(record.size) if record.size is not None else "-"
    handle = str(record.handle) if record.handle is not None else "-"
    would = {Outcome.COMMITTED: "commit", Outcome.ABORTED: "abort", Outcome.LEFT: "leave", Outcome.SKIPPED: "skip"}
    line = f"{would[record.outcome]:<6} {record.kind.value:<12} {mode:>4} {size:>12} {handle:>8}"
    line += f"  {os.fsdecode(record.path)}"
    if record.reason:
        line += f"  ({record.reason})"
    return line.replace("\n", "\\n")
