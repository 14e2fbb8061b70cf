"""Options, output and error handling shared by every command."""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import IO, Any, Final, TypeVar

import click

from axlstateless.backends import BACKENDS, create_backend
from axlstateless.backends.ibmbb import DEFAULT_CALL_TIMEOUT, DEFAULT_POLL_INTERVAL, DEFAULT_RETRIES
from axlstateless.errors import AxlError, UsageError
from axlstateless.orphan import parse_duration
from axlstateless.report import Outcome, Record, Reporter

EXIT_CODES_HELP = """\b
Exit codes:
  0  every temporary committed (or nothing to do)
  1  some data did not arrive: temporaries aborted
  2  bad usage or input; nothing was changed
  3  gave up waiting on the burst buffer; temporaries in transfer left for a rerun
  4  could not act on some temporaries (left in place, reported)
When several apply, the highest of 4, 3, 1 is returned."""

F = TypeVar("F", bound=Callable[..., Any])


def fail(exc: AxlError) -> None:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(exc.exit_code)


def handles_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AxlError as exc:
            fail(exc)
        except OSError as exc:  # an unexpected system error still gets one line, not a traceback
            click.echo(f"Error: {exc.filename or ''}: {exc.strerror or exc}", err=True)
            sys.exit(4)

    return wrapper  # type: ignore[return-value]


def output_options(func: F) -> F:
    """--json and --report, shared by every command that reports records."""
    func = click.option(
        "--report",
        "report",
        type=click.Path(dir_okay=False, writable=True),
        help="Also write every record (JSON lines, then the summary) to FILE: post-stage scripts have no terminal.",
    )(func)
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object per record, then a summary object."
    )(func)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    # ``90s``, ``30m``, ``24h``, ``7d``, ``1h30m`` as seconds; anything else is a usage error (exit 2).
    # A callback rather than a ParamType: ParamType is generic only from click 8.2 on.
    try:
        return parse_duration(value)
    except UsageError as exc:
        raise click.BadParameter(exc.reason, ctx, param) from None


def axl_state_option(func: F) -> F:
    """--axl-state PATH (repeatable), shared by finalize, cleanup and status."""
    return click.option(
        "--axl-state",
        "axl_state",
        multiple=True,
        metavar="PATH",
        type=click.Path(),
        help="An AXL state file, or a directory searched for them (by content, not name); repeatable. "
        "AXL temporaries it names are committed or deleted from its records; one whose entries are all settled "
        "is removed, as AXL_Free does.",
    )(func)


def jobs_option(func: F) -> F:
    """-j/--jobs, shared by finalize, cleanup and status; None lets the library choose by file system."""
    return click.option(
        "-j",
        "--jobs",
        type=click.IntRange(min=1),
        default=None,
        help="Directories worked on at once [default: 1 on a local file system, 16 on a parallel or network one].",
    )(func)


def older_than_option(help_text: str) -> Callable[[F], F]:
    """--older-than DURATION, shared by cleanup (which acts on it) and status (which reports it)."""
    return click.option(
        "--older-than",
        "older_than",
        callback=_duration,
        default="24h",  # DEFAULT_OLDER_THAN, as a person writes it
        show_default=True,
        metavar="DURATION",
        help=help_text,
    )


#: The backend options, as click names them; `backend_options` turns them into one ready `Backend`.
_BACKEND_PARAMS: Final = ("backend", "bbcmd", "jobid", "jobstepid", "poll_interval", "bbcmd_timeout", "bbcmd_retries")


def backend_options(func: F) -> F:
    """Choosing and configuring the transfer-status backend; the command gets a ready ``backend: Backend``.

    The backend is created before the command runs, so a misconfiguration (bbcmd not found, no job id,
    bad intervals) ends in one ``Error:`` line and exit 2 or 4 before any file is touched.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _BACKEND_PARAMS}
        options = {
            "bbcmd": given["bbcmd"],
            "jobid": given["jobid"],
            "jobstepid": given["jobstepid"],
            "poll_interval": given["poll_interval"],
            "call_timeout": given["bbcmd_timeout"],
            "retries": given["bbcmd_retries"],
        }
        try:
            kwargs["backend"] = create_backend(given["backend"], options)
        except AxlError as exc:
            fail(exc)
        return func(*args, **kwargs)

    decorated: Any = wrapper
    for decorator in reversed(
        [
            click.option(
                "--backend",
                type=click.Choice(sorted(BACKENDS)),
                default="none",
                show_default=True,
                help="Where transfer states come from: 'none' (the copy is over, any mover), 'ibmbb' (IBM CAST bbcmd).",
            ),
            click.option(
                "--bbcmd", metavar="PATH", help="[ibmbb] bbcmd to run (default /opt/ibm/bb/bin/bbcmd, else on PATH)."
            ),
            click.option(
                "--jobid", metavar="ID", help="[ibmbb] LSF job id (default $LSF_STAGE_JOBID, else $LSB_JOBID)."
            ),
            click.option(
                "--jobstepid", type=int, default=0, show_default=True, help="[ibmbb] job step, 0 for all steps."
            ),
            click.option(
                "--poll-interval",
                type=click.FloatRange(min=0.01),
                default=DEFAULT_POLL_INTERVAL,
                show_default=True,
                help="[ibmbb] first poll interval, seconds (backs off).",
            ),
            click.option(
                "--bbcmd-timeout",
                type=click.FloatRange(min=0, min_open=True),
                default=DEFAULT_CALL_TIMEOUT,
                show_default=True,
                metavar="SECONDS",
                help="[ibmbb] a bbcmd call that takes longer is killed (and retried).",
            ),
            click.option(
                "--bbcmd-retries",
                type=click.IntRange(min=0),
                default=DEFAULT_RETRIES,
                show_default=True,
                metavar="N",
                help="[ibmbb] calls after a failed one (logged) before giving up with an error.",
            ),
        ]
    ):
        decorated = decorator(decorated)
    return decorated  # type: ignore[no-any-return]


def open_report(path: str) -> IO[str]:
    """Open --report FILE for writing, refusing a symlink, a hard link or a non-regular file: root may be
    told to write the report in a directory a user can write, where the name may have been planted to
    point at /etc/shadow (tests/test_root_over_users.py). Raises OSError or AxlError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise AxlError(path, "cannot write the report: not a regular file with one link (refused)")
        os.ftruncate(fd, 0)  # only now: truncating at open would have emptied whatever was linked
        return open(fd, "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def reporter(
    command: str,
    as_json: bool,
    report: str | None,
    dry_run: bool,
    verbose: bool,
    *,
    routine: Callable[[Record], bool] | None = None,
) -> Iterator[Reporter]:
    """Records to --json, --report and a human stream; the human stream leaves out committed records and,
    if given, other `routine` ones (cleanup: temporaries not orphaned yet) unless `verbose`."""
    with ExitStack() as stack:
        json_streams: list[IO[str]] = []
        if as_json:
            json_streams.append(sys.stdout)
        if report:
            try:
                json_streams.append(stack.enter_context(open_report(report)))
            except OSError as exc:
                raise AxlError(report, f"cannot write the report: {exc.strerror}") from None
        log_streams: list[IO[str]] = [sys.stderr]
        reporter = Reporter(
            command,
            dry_run=dry_run,
            json_streams=json_streams,
            text_stream=None if as_json else sys.stdout,
            text_filter=None
            if verbose
            else (lambda r: r.outcome is not Outcome.COMMITTED and not (routine is not None and routine(r))),
            log_streams=log_streams,
            wants_records=as_json or bool(report) or verbose,
        )
        try:
            yield reporter
        except AxlError as exc:
            # The summary still ends --json and the report (a post-stage script reads only that), with
            # the error's exit code; the human "N committed (exit 0)" line would contradict the error.
            summary_json = reporter.summary.to_json() | {"error": str(exc), "exit_code": exc.exit_code}
            for stream in json_streams:
                stream.write(json.dumps(summary_json) + "\n")
                stream.flush()
            raise
        summary = reporter.finish()
    sys.exit(summary.exit_code)
