"""``axl-stateless cleanup``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from axlstateless.cleanup import CleanupOptions, cleanup
from axlstateless.report import Outcome, Record

from .mpi import mpi_option
from .options import (
    SIGNAL_EXIT_HELP,
    BackendFactory,
    axl_state_option,
    backend_options,
    handles_errors,
    jobs_option,
    older_than_option,
    output_options,
    reporter,
)

CLEANUP_EXIT_CODES_HELP = (
    """\b
Exit codes:
  0  every orphan committed; the rest skipped as not orphans yet (or nothing to do)
  1  some orphans were deleted: their data did not arrive (or --delete-only, or --delete-legacy)
  2  bad usage or input (a bad or zero DURATION, a missing root); nothing was changed
  3  not used by cleanup: a temporary whose transfer is in progress is skipped, never waited for
  4  could not act on some temporaries (refused or failed, or AXL temporaries no state file names:
     left in place, reported)
"""
    + SIGNAL_EXIT_HELP
    + """
When several apply, the highest of 4, 1 is returned."""
)

if TYPE_CHECKING:
    from axlstateless.mpi import Distributed


@click.command("cleanup", epilog=CLEANUP_EXIT_CODES_HELP)
@click.argument("roots", nargs=-1, required=True, type=click.Path(file_okay=False))
@older_than_option(
    "Age from which a temporary is an orphan: a positive number and a unit s, m, h, d or w (90s, 30m, 24h, 7d, "
    "1h30m). A temporary written to (mtime or ctime) more recently counts as still being written."
)
@backend_options
@click.option("--dry-run", is_flag=True, help="Decide and report, change nothing.")
@click.option("--delete-only", is_flag=True, help="Delete orphans even when complete, instead of committing them.")
@axl_state_option
@click.option(
    "--delete-legacy",
    is_flag=True,
    help="Also delete orphaned AXL temporaries (<final>._AXL[handle]) that no --axl-state file names. "
    "DANGEROUS: such a temporary may be the only copy of complete data, and a finished file whose own name "
    "ends in ._AXL or ._AXL<digits> looks the same; without this flag they are only reported.",
)
@click.option(
    "--one-file-system/--no-one-file-system",
    default=True,
    show_default=True,
    help="Do not descend into other file systems below the roots.",
)
@jobs_option
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also list committed orphans and temporaries that are not orphans (counted as skipped either way).",
)
@output_options
@mpi_option
@handles_errors
def command(
    roots: tuple[str, ...],
    older_than: float,
    backend: BackendFactory,
    dry_run: bool,
    delete_only: bool,
    axl_state: tuple[str, ...],
    delete_legacy: bool,
    one_file_system: bool,
    jobs: int | None,
    verbose: bool,
    as_json: bool,
    report: str | None,
    mpi: Distributed | None,
    quiet: bool,
) -> None:
    """Sweep orphaned temporaries below ROOT...: those no post-stage finished.

    \b
    A temporary is an orphan when both hold:
      - its age, now minus the NEWER of its mtime and ctime, is at least --older-than
        (every write moves both: a temporary written to within --older-than counts as still
        being written, whoever writes it, a BB copy or a live AXL process);
      - the backend does not report its transfer as in progress.
    \b
    Orphans:
      - complete (the size in the name verifies): committed, as finalize would (nothing lost);
        with --delete-only, deleted instead;
      - incomplete, or its transfer failed: deleted;
      - AXL temporaries a --axl-state file names: committed or deleted from its records;
      - other AXL temporaries (<final>._AXL[handle]): reported and left (exit 4), since they may be
        the only copy of complete data; with --delete-legacy, deleted, never committed;
      - directory markers: applied once nothing below them is still waiting.
    Temporaries that are not orphans are untouched and counted as skipped (listed with -v);
    unrecognised names are reported and never touched. The same refusals as finalize apply (symbolic links, hard links,
    non-regular and foreign-owned files, set-uid/set-gid from a name), so it is safe as root over
    users' trees, from cron.
    """
    with reporter("cleanup", as_json, report, dry_run, verbose, quiet=quiet, routine=_not_orphan) as sink:
        opts = CleanupOptions(
            older_than=older_than,
            backend=backend(),
            dry_run=dry_run,
            delete_only=delete_only,
            one_file_system=one_file_system,
            jobs=jobs,
            mpi=mpi,
            axl_state=axl_state,
            delete_legacy=delete_legacy,
        )
        cleanup(roots, sink, opts, progress=sink.log)


def _not_orphan(record: Record) -> bool:
    # A cron sweep over busy trees would otherwise print every temporary of every running job.
    return record.outcome is Outcome.SKIPPED and record.extra is not None and record.extra.get("orphan") is False
