"""``axl-stateless prestage``."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, TYPE_CHECKING

import click

from axlstateless import interrupt
from axlstateless.errors import Interrupted
from axlstateless.prestage import PrestageResult, StagePair, expand_sources, prestage, read_pair_list
from axlstateless.report import Meter, format_elapsed, plural

from .mpi import mpi_option
from .options import SIGNAL_EXIT_HELP, handles_errors, quiet_option
from .output import SafeOutput

PRESTAGE_EXIT_CODES_HELP = (
    """\b
Exit codes:
  0  every temporary created (with --dry-run: every check passed)
  2  bad usage or input (a missing source, a final path that is a directory, a name too long for
     the format, a pairs file with CRLF line ends); nothing was changed
  4  could not create a temporary or directory (reported; a rerun replaces what was made)
"""
    + SIGNAL_EXIT_HELP
)

if TYPE_CHECKING:
    from axlstateless.mpi import Distributed


@click.command("prestage", epilog=PRESTAGE_EXIT_CODES_HELP)
@click.argument("paths", nargs=-1, type=click.Path(readable=False), metavar="[SRC... DEST]")
@click.option("-r", "--recursive", is_flag=True, help="Pre-stage directories and everything below them.")
@click.option(
    "--from-list", "from_list", type=click.File("rb"), help="Read SRC<TAB>DST pairs, one a line ('-': stdin)."
)
@click.option("-0", "--null", "nul", is_flag=True, help="With --from-list: pairs are NUL-separated SRC, DST fields.")
@click.option(
    "--handle", type=click.IntRange(min=0, max=2**64 - 1), help="Encode this BB transfer handle in every name."
)
@click.option("--filelist", type=click.Path(dir_okay=False), help="Write the file list `bbcmd copy --filelist` takes.")
@click.option("-L", "--follow-symlinks", is_flag=True, help="Follow a source that is a symbolic link.")
@click.option("--dry-run", is_flag=True, help="Check everything and show what would be created; create nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per temporary, then a summary object.")
@mpi_option
@quiet_option
@handles_errors
def command(
    paths: tuple[str, ...],
    recursive: bool,
    from_list: IO[bytes] | None,
    nul: bool,
    handle: int | None,
    filelist: str | None,
    follow_symlinks: bool,
    dry_run: bool,
    as_json: bool,
    mpi: Distributed | None,
    quiet: bool,
) -> None:
    """Create a temporary beside each final path: SRC... DEST, as cp does, or --from-list.

    Each temporary is empty, owned like its source (when permitted), has the source's times, and carries
    the source's permission bits, size and mtime in its name (docs/format.md), so finalize needs nothing
    else. Missing directories are created owner-writable and get their source's mode and mtime back when
    finalize is done with them. Everything is checked before the first change.
    """
    if mpi is not None:
        if from_list is None or paths:
            raise click.UsageError("--mpi takes --from-list FILE (its pairs are split across the ranks)")
        listed: list[StagePair] = []
        # Only rank 0 reads the list (under mpiexec only it has standard input), and checks it for all.
        mpi.on_root(lambda: listed.extend(read_pair_list(from_list.read(), nul=nul, origin=from_list.name)))
        started = time.monotonic()
        result = mpi.prestage_list(
            listed, handle=handle, follow_symlinks=follow_symlinks, filelist=filelist, dry_run=dry_run
        )
        _print_prestage(SafeOutput(sys.stdout), result, as_json, quiet, time.monotonic() - started, filelist)
        return
    dir_sources: dict[bytes, bytes] = {}
    if from_list is not None:
        if paths:
            raise click.UsageError("give either SRC... DEST or --from-list, not both")
        pairs: list[StagePair] = read_pair_list(from_list.read(), nul=nul, origin=from_list.name)
    else:
        if len(paths) < 2:
            raise click.UsageError("expected SRC... DEST (or --from-list FILE)")
        pairs, dir_sources = expand_sources(paths[:-1], paths[-1], recursive=recursive, follow_symlinks=follow_symlinks)
    out = SafeOutput(sys.stdout)
    meter = Meter(
        "prestage",
        live=sys.stderr if not quiet and sys.stderr.isatty() else None,
        logs=[] if quiet else [sys.stderr],
        verb="created",
    )

    def progress(done: int) -> None:
        if meter.due():
            meter.tick(done)

    started = time.monotonic()
    try:
        with interrupt.deferred():
            result = prestage(
                pairs,
                handle=handle,
                follow_symlinks=follow_symlinks,
                filelist=filelist,
                dir_sources=dir_sources,
                dry_run=dry_run,
                progress=progress,
            )
    except Interrupted as exc:
        meter.clear()
        if as_json:
            summary = {"summary": True, "command": "prestage", "dry_run": dry_run, "interrupted": True}
            summary |= {"signal": exc.signal_name, "exit_code": exc.exit_code, "error": str(exc)}
            out.write(json.dumps(summary) + "\n")
            out.flush()
        raise
    finally:
        meter.clear()
    _print_prestage(out, result, as_json, quiet, time.monotonic() - started, filelist)


def _print_prestage(
    out: SafeOutput, result: PrestageResult, as_json: bool, quiet: bool, elapsed: float, filelist: str | None
) -> None:
    if as_json:
        if not quiet:
            for f in result.files:
                record = {"source": os.fsdecode(f.source), "temporary": os.fsdecode(f.temporary)}
                record["final"] = os.fsdecode(f.final)
                out.write(json.dumps(record) + "\n")
        summary = {
            "summary": True,
            "command": "prestage",
            "dry_run": result.dry_run,
            "temporaries": len(result.files),
            "created_directories": [os.fsdecode(d) for d in result.created_directories],
            "replaced": result.replaced,
            "xattrs": result.xattrs,
            "filelist": filelist,
            "exit_code": 0,
            "elapsed_seconds": round(elapsed, 3),
            "per_second": round(len(result.files) / elapsed, 1) if elapsed > 0 else 0.0,
        }
        out.write(json.dumps(summary) + "\n")
        out.flush()
        return
    what = "would pre-stage" if result.dry_run else "pre-staged"
    line = f"prestage: {what} {plural(len(result.files), 'temporary', 'temporaries')}"
    if result.created_directories:
        made = "would create" if result.dry_run else "created"
        line += f", {made} {plural(len(result.created_directories), 'directory', 'directories')}"
    if result.replaced:
        line += f", {plural(result.replaced, 'earlier temporary', 'earlier temporaries')} replaced"
    if filelist and not result.dry_run:
        line += f"; file list in {filelist}"
    if not result.xattrs:
        line += " (no user xattrs on the destination: atime and owner hints not kept)"
    rate = len(result.files) / elapsed if elapsed > 0 else 0.0
    out.write(line + f" in {format_elapsed(elapsed)} ({rate:.0f}/s)\n")
    out.flush()
