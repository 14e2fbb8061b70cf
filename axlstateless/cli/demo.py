"""``axl-stateless demo``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from axlstateless.bbsim import SimError
from axlstateless.demo import DemoResult, remove_workdir, run_demo
from axlstateless.errors import AxlError

from .options import SIGNAL_EXIT_HELP, handles_errors
from .output import SafeOutput

DEMO_EXIT_CODES_HELP = (
    """\b
Exit codes:
  0  the outcome is exactly the expected one
  1  it is not (the mismatches are listed)
  2  bad usage (a --dir that is not empty); nothing was changed
"""
    + SIGNAL_EXIT_HELP
)


@click.command("demo", epilog=DEMO_EXIT_CODES_HELP)
@click.option("--ranks", type=click.IntRange(1, 4096), default=64, show_default=True, help="MPI ranks to play.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the sizes and of which transfers fail.")
@click.option("--failures", type=click.IntRange(min=0), default=3, show_default=True, help="Transfers made to fail.")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Scratch directory (default: a new one under $TMPDIR).",
)
@click.option("--keep", is_flag=True, help="Keep the scratch directory to look at (bb/, pfs/, spool/, the report).")
@click.option("-q", "--quiet", is_flag=True, help="Only the table.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object instead of a table.")
@handles_errors
def command(ranks: int, seed: int, failures: int, workdir: Path | None, keep: bool, quiet: bool, as_json: bool) -> None:
    """Rehearse a whole job against the simulated IBM burst buffer, and check the result.

    Ranks write a checkpoint (timestep.0.root, timestep.0/data.RANK; some read-only, some empty),
    pre-stage it with one BB handle per rank, start the simulated copies with a few injected failures,
    end the job, and run the post-stage finalize through bbcmd's command line. Every final file is
    then compared with its source. Exit 0 when the outcome is exactly the expected one.
    """

    def log(message: str) -> None:
        if not quiet and not as_json:
            click.echo(f"demo: {message}", err=True)

    try:
        result = run_demo(ranks=ranks, seed=seed, failures=failures, workdir=workdir, log=log)
    except SimError as exc:  # the simulator's own failure (a spool that is not ours): one line
        raise AxlError(None, f"the simulated burst buffer failed: {exc}") from None
    out = SafeOutput(sys.stdout)  # `demo | head -3`: a closed pipe ends the printing, not the check
    if as_json:
        out.write(json.dumps(_as_json(result, keep)) + "\n")
    else:
        _print_table(out, result, keep)
    out.flush()
    if not keep and workdir is None:
        remove_workdir(result.workdir)
    sys.exit(0 if result.as_expected else 1)


def _as_json(result: DemoResult, keep: bool) -> dict[str, object]:
    return {
        "summary": True,
        "command": "demo",
        "ranks": result.ranks,
        "files": result.files,
        "failed_handles": result.failed_handles,
        "committed": result.committed,
        "expected_committed": result.expected_committed,
        "aborted": result.aborted,
        "expected_aborted": result.expected_aborted,
        "left": result.left,
        "verified": result.verified,
        "mismatches": result.mismatches,
        "finalize_exit_code": result.exit_code,
        "finalize_seconds": round(result.finalize_elapsed, 3),
        "elapsed_seconds": round(result.elapsed, 3),
        "as_expected": result.as_expected,
        "exit_code": 0 if result.as_expected else 1,
        "workdir": str(result.workdir) if keep else None,
    }


def _print_table(out: SafeOutput, result: DemoResult, keep: bool) -> None:
    rows = [
        ("ranks", str(result.ranks)),
        ("files written", str(result.files)),
        (
            "transfers failed (injected)",
            f"{len(result.failed_handles)} (handles {', '.join(map(str, result.failed_handles)) or '-'})",
        ),
        ("committed (files + directories)", f"{result.committed} (expected {result.expected_committed})"),
        ("aborted", f"{result.aborted} (expected {result.expected_aborted})"),
        ("left", str(result.left)),
        ("verified identical to source", f"{result.verified} (content, mode, mtime)"),
        ("post-stage finalize", f"{result.finalize_elapsed:.2f}s (exit {result.exit_code})"),
        ("elapsed", f"{result.elapsed:.2f}s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.write(f"{key:<{width}}  {value}\n")
    for problem in result.mismatches[:20]:
        click.echo(f"MISMATCH {problem}", err=True)
    out.write(f"result: {'as expected' if result.as_expected else 'NOT as expected'}\n")
    if keep:
        out.write(f"kept: {result.workdir}\n")
