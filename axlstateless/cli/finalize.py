"""``axl-stateless finalize``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from axlstateless.finalize import DEFAULT_WAIT_TIMEOUT, FinalizeOptions, finalize

from .mpi import mpi_option
from .options import (
    EXIT_CODES_HELP,
    BackendFactory,
    axl_state_option,
    backend_options,
    handles_errors,
    jobs_option,
    output_options,
    reporter,
)

if TYPE_CHECKING:
    from axlstateless.mpi import Distributed


@click.command("finalize", epilog=EXIT_CODES_HELP)
@click.argument("roots", nargs=-1, required=True, type=click.Path(file_okay=False))
@backend_options
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_WAIT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for transfers to end before leaving the rest for a rerun (exit 3).",
)
@click.option("--dry-run", is_flag=True, help="Decide and report, change nothing.")
@click.option("--fsync", is_flag=True, help="Make each commit durable (file, then directory).")
@jobs_option
@click.option("--one-file-system", is_flag=True, help="Do not descend into other file systems below the roots.")
@axl_state_option
@click.option("-v", "--verbose", is_flag=True, help="Also list committed temporaries (others are always listed).")
@output_options
@mpi_option
@handles_errors
def command(
    roots: tuple[str, ...],
    backend: BackendFactory,
    wait_timeout: float,
    dry_run: bool,
    fsync: bool,
    jobs: int | None,
    one_file_system: bool,
    axl_state: tuple[str, ...],
    verbose: bool,
    as_json: bool,
    report: str | None,
    mpi: Distributed | None,
    quiet: bool,
) -> None:
    """Commit every temporary below ROOT... whose data arrived; delete the others.

    Walks the roots through directory descriptors, never following a symlink. Each temporary ends in one
    reported outcome: committed (renamed to its final name with its mode and times), aborted (deleted:
    its data did not arrive; an old final file stays), left (untouched, with the reason), or skipped
    (unrecognised names, never touched).

    AXL's own temporaries (<final>._AXL, <final>._AXL<handle>) are committed or deleted only from the AXL
    state file that names them (--axl-state); without one they are left untouched and reported (exit 4):
    they may be the only copy of complete data.
    """
    with reporter("finalize", as_json, report, dry_run, verbose, quiet=quiet) as sink:
        opts = FinalizeOptions(
            backend=backend(),
            dry_run=dry_run,
            fsync=fsync,
            jobs=jobs,
            one_file_system=one_file_system,
            wait_timeout=wait_timeout,
            mpi=mpi,
            axl_state=axl_state,
        )
        finalize(roots, sink, opts, progress=sink.log)
