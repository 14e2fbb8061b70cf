"""``--mpi``: run a command on every rank of an MPI job (``mpiexec -n P axl-stateless finalize --mpi ...``).

Rank 0 alone writes: standard output, standard error, ``--report`` and pre-stage's ``--filelist``; the
other ranks' output is discarded (their records reach rank 0). Every rank exits with rank 0's exit code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from axlstateless.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])

MPI_HELP = (
    "Run on every rank of an MPI job (mpiexec -n P ... --mpi, or srun): the work is spread over the ranks, "
    "rank 0 writes the output. Needs mpi4py (the axlstateless[mpi] extra)."
)


def mpi_option(func: F) -> F:
    """Adds ``--mpi``; the command then gets ``mpi``: a `Distributed`, or None without the flag."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.pop("use_mpi"):
            return func(*args, mpi=None, **kwargs)
        from axlstateless.mpi import connect, launcher_rank  # noqa: PLC0415 - only a run with --mpi pays for it

        try:
            dist = connect()
        except UsageError as exc:
            # No communicator yet: the launcher's rank variable keeps it to one message per job.
            if launcher_rank() in (None, 0):
                click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        if dist.rank != 0 and kwargs.get("report"):
            kwargs["report"] = None  # one writer: a second open would truncate rank 0's report
        code: int = 0
        try:
            with _muted(dist.rank != 0):
                func(*args, mpi=dist, **kwargs)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except click.ClickException as exc:  # found alike on every rank, before any collective step
            if dist.rank == 0:
                raise
            sys.exit(exc.exit_code)
        except BaseException as exc:  # a bug or an interrupt: take the job down rather than hang the others
            dist.crash(exc)
            raise
        sys.exit(dist.agree_exit(code))

    option = click.option("--mpi", "use_mpi", is_flag=True, is_eager=True, callback=_mute_early, help=MPI_HELP)
    return option(wrapper)  # type: ignore[return-value]


def _mute_early(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # Click reports a bad option value before the command runs, the same on every rank: rank 0's one
    # message is enough. (Eager, so this runs before the other options are checked.)
    if not value:
        return value
    from axlstateless.mpi import launcher_rank  # noqa: PLC0415 - only a run with --mpi pays for it

    if launcher_rank() not in (None, 0):
        devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
        sys.stdout = sys.stderr = devnull
    return value


@contextlib.contextmanager
def _muted(mute: bool) -> Iterator[None]:
    if not mute:
        yield
        return
    with (
        open(os.devnull, "w", encoding="utf-8") as sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        yield
