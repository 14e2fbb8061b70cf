"""Options, output and error handling shared by every command."""

from __future__ import annotations

import functools
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import IO, Any, Final, NoReturn, TypeVar

import click
from click.core import ParameterSource

from axlstateless import interrupt
from axlstateless.backends import BACKENDS, Backend, create_backend
from axlstateless.backends.ibmbb import DEFAULT_CALL_TIMEOUT, DEFAULT_POLL_INTERVAL, DEFAULT_RETRIES
from axlstateless.errors import EXIT_LEFT, AxlError, Interrupted, UsageError
from axlstateless.orphan import parse_duration
from axlstateless.report import Outcome, Record, Reporter, TextOut

from .output import SafeOutput

EXIT_CODES_HELP = """\b
Exit codes:
  0  every temporary committed (or nothing to do)
  1  some data did not arrive: temporaries aborted
  2  bad usage or input; nothing was changed
  3  gave up waiting on the burst buffer; temporaries in transfer left for a rerun
  4  could not act on some temporaries (left in place, reported)
  128+N  stopped by signal N between two temporaries (130 ^C, 143 SIGTERM, 129 SIGHUP);
     the summary says "interrupted"; a rerun finishes the work
When several apply, the highest of 4, 3, 1 is returned."""

#: The 128+N line of every command's exit codes, for the commands with their own table.
SIGNAL_EXIT_HELP = """  128+N  stopped by signal N between two temporaries (130 ^C, 143 SIGTERM, 129 SIGHUP);
     the summary says "interrupted"; a rerun finishes the work"""

F = TypeVar("F", bound=Callable[..., Any])

#: Creates the backend the options describe; called once the report is open, so that a backend that
#: cannot start (bbcmd not found) still leaves a report saying why.
BackendFactory = Callable[[], Backend]


def fail(exc: AxlError) -> NoReturn:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(exc.exit_code)


def handles_errors(func: F) -> F:
    """Every failure a user can meet becomes one ``Error: <what>: <why>`` line and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AxlError as exc:
            fail(exc)
        except KeyboardInterrupt:  # no handler installed (an embedding caller): ^C still ends in one line
            fail(Interrupted(signal.SIGINT))
        except OSError as exc:  # an unexpected system error still gets one line, not a traceback
            where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
            click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            sys.exit(EXIT_LEFT)

    return wrapper  # type: ignore[return-value]


def quiet_option(func: F) -> F:
    """-q/--quiet, on every command."""
    return click.option(
        "-q", "--quiet", is_flag=True, help="Print the summary only: no per-temporary lines, no progress."
    )(func)


def output_options(func: F) -> F:
    """--json, --report and --quiet, shared by every command that reports records."""
    func = quiet_option(func)
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
        help=(
            "Directories worked on at once [default: on a local file system one per core (at most 8) with "
            "finalize's native core, else 1; 16 on a parallel or network one]."
        ),
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
_IBMBB_PARAMS: Final = _BACKEND_PARAMS[1:]


def _backend_name(ctx: click.Context, chosen: str) -> str | UsageError:
    """An ibmbb option (--bbcmd, --jobid, ...) selects the ibmbb backend when --backend is not given, and
    is refused with another backend: silently ignored, a BBFAILED transfer would be committed. The
    refusal is returned, for the factory to raise once the report is open."""
    given = [
        f"--{name.replace('_', '-')}"
        for name in _IBMBB_PARAMS
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    ]
    if not given:
        return chosen
    if ctx.get_parameter_source("backend") in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
        return "ibmbb"
    if chosen != "ibmbb":
        return UsageError(", ".join(given), f"only for --backend ibmbb, not --backend {chosen}")
    return chosen


def _create(name: str | UsageError, options: dict[str, Any]) -> Backend:
    if isinstance(name, UsageError):
        raise name
    return create_backend(name, options)


def backend_options(func: F) -> F:
    """Choosing and configuring the transfer-status backend; the command gets a `BackendFactory`.

    An option of the ibmbb backend selects it (`_backend_name`). The command creates the backend once
    its report is open, so that a misconfiguration (bbcmd not found, no job id, bad intervals) ends in
    one ``Error:`` line, exit 2 and a report saying so, before any file is touched.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _BACKEND_PARAMS}
        name = _backend_name(click.get_current_context(), given["backend"])
        options = {
            "bbcmd": given["bbcmd"],
            "jobid": given["jobid"],
            "jobstepid": given["jobstepid"],
            "poll_interval": given["poll_interval"],
            "call_timeout": given["bbcmd_timeout"],
            "retries": given["bbcmd_retries"],
        }
        kwargs["backend"] = functools.partial(_create, name, options)
        return func(*args, **kwargs)

    decorated: Any = wrapper
    for decorator in reversed(
        [
            click.option(
                "--backend",
                type=click.Choice(sorted(BACKENDS)),
                default="none",
                show_default=True,
                help="Where transfer states come from: 'none' (the copy is over, any mover), 'ibmbb' (IBM CAST "
                "bbcmd). An [ibmbb] option below selects ibmbb; with --backend none it is refused.",
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
    point at /etc/shadow (tests/test_root_over_users.py). Raises OSError or UsageError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UsageError(path, "cannot write the report: not a regular file with one link (refused)")
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
    quiet: bool = False,
    routine: Callable[[Record], bool] | None = None,
    header: str | None = None,
) -> Iterator[Reporter]:
    """Records to --json, --report and a human stream; the human stream leaves out committed records and,
    if given, other `routine` ones (cleanup: temporaries not orphaned yet) unless `verbose`, and every
    record with `quiet`. Progress goes to stderr: a live line on a terminal, else a line every few seconds.

    The body runs with signals deferred (`interrupt`): a SIGINT, SIGTERM or SIGHUP stops it between two
    temporaries, and the summary, marked interrupted, still ends the output and the report. Exits with
    the summary's code (128 + N after signal N).
    """
    out = SafeOutput(sys.stdout)
    with ExitStack() as stack:
        reports: list[TextOut] = []
        if report:
            try:
                reports.append(stack.enter_context(open_report(report)))
            except OSError as exc:
                raise UsageError(report, f"cannot write the report: {exc.strerror}") from None

        def shown(record: Record) -> bool:
            if quiet:
                return False
            return verbose or (
                record.outcome is not Outcome.COMMITTED and not (routine is not None and routine(record))
            )

        reporter = Reporter(
            command,
            dry_run=dry_run,
            json_streams=[out] if as_json and not quiet else [],
            report_streams=reports,
            summary_streams=[out] if as_json and quiet else [],
            text_stream=None if as_json else out,
            text_filter=shown,
            log_streams=[] if quiet else [sys.stderr],
            live=sys.stderr if not quiet and sys.stderr.isatty() else None,
            text_header=header,
            wants_records=as_json or bool(report) or verbose,
        )
        try:
            with interrupt.deferred():
                yield reporter
        except AxlError as exc:
            # The summary still ends --json and the report (a post-stage script reads only that), with
            # the error's exit code.
            reporter.finish(error=exc)
            _note_broken(out)
            raise
        summary = reporter.finish()
    _note_broken(out)
    sys.exit(summary.exit_code)


def _note_broken(out: SafeOutput) -> None:
    if out.broken:
        click.echo(
            "axl-stateless: standard output was closed: the records after it were not printed "
            "(the work went on to the end; --report keeps them all)",
            err=True,
        )
