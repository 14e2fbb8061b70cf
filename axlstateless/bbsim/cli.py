"""``axl-bbsim``: a bbcmd-compatible command line over the simulated burst buffer.

Parses bbcmd's options the way Boost.Program_options does (``--opt=value`` or ``--opt value``, global
options before or after the command, any unambiguous prefix such as ``--match=``), calls one function of
`commands`, and prints the reply in bbcmd's JSON shape. Exit status: bbcmd's ``rc`` modulo 256 (0 on
success), 2 for a command line it cannot parse.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import click

from axlstateless.backends.bbcmd_reply import STATUS_VALUES, status_name

from . import commands
from .model import (
    ENV_FAIL_HANDLES,
    ENV_FILE_DELAY,
    ENV_GARBAGE,
    ENV_HANG,
    ENV_RATE,
    ENV_START_DELAY,
    SPOOL_ENV,
    SimError,
)
from .spool import Spool

F = TypeVar("F", bound=Callable[..., Any])

_EPILOG: Final = f"""\b
State lives in a spool directory: --spool DIR, else ${SPOOL_ENV}, else axl-bbsim-<uid> under $TMPDIR
(or /tmp). Handles belong to a job (--jobid, else $LSF_STAGE_JOBID, else $LSB_JOBID) and a job step
(--jobstepid; 0 means every step).

\b
Simulator settings (kept in the spool; an environment variable overrides each):
  axl-bbsim config --rate BYTES_PER_S    ${ENV_RATE}          default 200e6
  axl-bbsim config --file-delay S        ${ENV_FILE_DELAY}    sleep before each file
  axl-bbsim config --start-delay S       ${ENV_START_DELAY}   BBNOTSTARTED that long
  axl-bbsim config --hang S              ${ENV_HANG}          every bbcmd call sleeps S first
  axl-bbsim config --garbage             ${ENV_GARBAGE}=1     every bbcmd call prints garbage
\b
Failure injection:
  axl-bbsim inject --fail-handle H [--fail-after-bytes N]   BBFAILED after N bytes (default:
                                        half the handle's bytes; the file being written stays truncated)
                                        (also ${ENV_FAIL_HANDLES}=H1,H2)
  axl-bbsim inject --set-status H=BBSTOPPED   report any status (a number prints UNDEFINED (n))
  axl-bbsim inject --hang-calls N --hang-seconds S | --garbage-calls N | --error-calls N
                                        the next N bbcmd calls hang, print garbage, or fail
                                        with the field reply rc=-2 (BB_InitLibrary)
  axl-bbsim inject --clear
\b
Inspection: axl-bbsim show [--jobid J]; axl-bbsim wait [--jobid J] [--timeout S].
"""


@dataclass(frozen=True, slots=True)
class Globals:
    """bbcmd's global options, merged from before and after the command name."""

    spool: str | None = None
    jobid: str | None = None
    jobstepid: str | None = None
    contribid: str | None = None
    target: str | None = None
    hostlist: str | None = None
    pretty: bool = False
    xml: bool = False


_GLOBAL_OPTIONS: Final = (
    click.option("--spool", metavar="DIR", help=f"Spool directory of the simulated BB (default ${SPOOL_ENV})."),
    click.option("--jobid", metavar="N", help="Job id (default $LSF_STAGE_JOBID, else $LSB_JOBID)."),
    click.option("--jobstepid", metavar="N", help="Job step id; 0 (the default) means every step."),
    click.option("--contribid", metavar="N", help="Contributor id (default 0)."),
    click.option("--target", metavar="RANKS", help="Ranks that answer, e.g. 0- or 0,1,4-7; nests the reply."),
    click.option("--hostlist", metavar="HOSTS", help="Comma-separated node list (default localhost)."),
    click.option("--config", "bbconfig", metavar="FILE", hidden=True, help="Accepted and ignored, as bb.cfg."),
    click.option("--pretty", is_flag=True, default=False, help="Print flattened 'key value' lines."),
    click.option("--xml", is_flag=True, default=False, help="Refused: the simulator only speaks JSON."),
)


def _global_options(f: F) -> F:
    for option in reversed(_GLOBAL_OPTIONS):
        f = option(f)
    return f


def _boost_prefixes(names: Iterable[str]) -> Callable[[str], str]:
    """Expand an unambiguous prefix of a long option name to the name, as Boost does."""
    known = tuple(names)

    def normalize(token: str) -> str:
        if token in known:
            return token
        matches = [n for n in known if n.startswith(token)]
        return matches[0] if len(matches) == 1 else token

    return normalize


def _long_names(cmd: click.Command) -> list[str]:
    return [opt[2:] for p in cmd.params for opt in p.opts if opt.startswith("--")]


def _with_prefixes(cmd: click.Command) -> click.Command:
    cmd.context_settings["token_normalize_func"] = _boost_prefixes(_long_names(cmd))
    return cmd


def _merge(ctx: click.Context, /, local: Mapping[str, Any]) -> Globals:
    parent: Globals = ctx.find_object(Globals) or Globals()
    values = {}
    for name in Globals.__dataclass_fields__:
        mine = local.get(name)
        values[name] = mine if mine not in (None, False) else getattr(parent, name)
    return Globals(**values)


def _jobid(g: Globals) -> str:
    jobid = g.jobid or os.environ.get("LSF_STAGE_JOBID") or os.environ.get("LSB_JOBID")
    if not jobid:
        raise SimError("No job id: give --jobid or set LSF_STAGE_JOBID or LSB_JOBID", "BB_InitLibrary")
    return jobid


def _number(text: str | None, what: str, default: int = 0) -> int:
    if text is None:
        return default
    try:
        return int(text, 10)
    except ValueError:
        raise SimError(f"the argument ('{text}') for option '--{what}' is invalid", "bbcmd") from None


Action = Callable[[Spool, str, int, int], Mapping[str, str] | None]


def _run_bbcmd(ctx: click.Context, /, local: Mapping[str, Any], action: Action) -> None:
    """Play one bbcmd call: injected faults first, then the action, then the reply in bbcmd's shape."""
    g = _merge(ctx, local)
    spool = Spool(g.spool)
    fault = spool.take_call_fault() if spool.path.is_dir() else None
    if fault is not None:
        kind, seconds = fault
        if kind == "hang":
            time.sleep(seconds)
        elif kind == "garbage":
            click.echo(commands.GARBAGE)
            ctx.exit(0)
        else:
            click.echo(json.dumps(commands.FIELD_FAILURE, separators=(",", ":")))
            ctx.exit(254)
    out: Mapping[str, str] | None = None
    error: SimError | None = None
    try:
        if g.xml:
            raise SimError("XML output is not supported by axl-bbsim; use JSON or --pretty", "bbcmd")
        out = action(spool, _jobid(g), _number(g.jobstepid, "jobstepid"), _number(g.contribid, "contribid"))
    except SimError as exc:
        error = exc
    reply = commands.single_reply(out, error)
    # Failures before the request reaches any node (a bad command line, no job) are not nested.
    if g.target is not None and (error is None or error.func not in ("bbcmd", "BB_InitLibrary")):
        try:
            hosts = (g.hostlist or "localhost").split(",")
            ranks = commands.expand_ranges(g.target or "", 0, len(hosts) - 1)
            reply = commands.nest(ranks, dict.fromkeys(ranks, reply))
        except SimError as exc:
            reply = commands.single_reply(None, exc)
    if g.pretty:
        click.echo("\n".join(commands.flatten(reply)))
    else:
        click.echo(json.dumps(reply, separators=(",", ":")))
    ctx.exit(int(reply["rc"]) & 0xFF)


@click.group(
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@_global_options
@click.pass_context
def main(ctx: click.Context, /, **options: Any) -> None:
    """A working stand-in for IBM's burst buffer with bbcmd's command line (copy, gettransfers,
    getstatus, cancel, gethandle, gettransferkeys) and JSON replies.

    `copy` returns at once; a detached mover copies each '<source> <destination> [<flags>]' line of the
    file list into the existing destination (O_CREAT|O_TRUNC|O_WRONLY, as bbServer does) at the
    configured rate, and goes on after the caller exits. Use it as --bbcmd for axl-stateless.
    """
    options.pop("bbconfig", None)
    ctx.obj = Globals(**options)


main.context_settings["token_normalize_func"] = _boost_prefixes(_long_names(main))


@main.command()
@click.option("--filelist", metavar="FILE", help="Lines of '<source> <destination> [<flags>]'.")
@click.option("--handle", metavar="H", help="Transfer handle (from gethandle, or any number).")
@click.option("--tag", metavar="T", type=int, help="With --contrib instead of --handle: get the handle first.")
@click.option("--contrib", metavar="LIST", help="Contributors of the tag, e.g. 0-63.")
@_global_options
@click.pass_context
def copy(
    ctx: click.Context, /, filelist: str | None, handle: str | None, tag: int | None, contrib: str | None, **g: Any
) -> None:
    """Start a transfer of the files in --filelist; returns at once."""

    def action(spool: Spool, jobid: str, step: int, contribid: int) -> Mapping[str, str]:
        if filelist is None:
            raise SimError("Missing parameter 'filelist'", "bbcmd_copy")
        number = None if handle is None else _number(handle, "handle")
        return commands.copy(spool, jobid, step, contribid, filelist, number, tag, contrib)

    _run_bbcmd(ctx, g, action)


@main.command()
@click.option("--matchstatus", metavar="LIST", default="BBALL", show_default=True, help="Comma list of statuses.")
@click.option("--numhandles", metavar="N", type=int, default=commands.DEFAULT_NUMHANDLES, show_default=True)
@_global_options
@click.pass_context
def gettransfers(ctx: click.Context, /, matchstatus: str, numhandles: int, **g: Any) -> None:
    """List the job's handles whose status is in --matchstatus."""
    _run_bbcmd(ctx, g, lambda s, j, step, c: commands.gettransfers(s, j, step, matchstatus, numhandles))


@main.command()
@click.option("--handle", metavar="H", help="Transfer handle.")
@_global_options
@click.pass_context
def getstatus(ctx: click.Context, /, handle: str | None, **g: Any) -> None:
    """Show one handle's status."""

    def action(spool: Spool, jobid: str, step: int, contribid: int) -> Mapping[str, str]:
        if handle is None:
            raise SimError("Missing parameter 'handle'", "bbcmd_getstatus")
        return commands.getstatus(spool, jobid, step, contribid, _number(handle, "handle"))

    _run_bbcmd(ctx, g, action)


@main.command()
@click.option("--handle", metavar="H", help="Transfer handle.")
@click.option("--scope", metavar="SCOPE", default="BBSCOPETAG", show_default=True, help="BBSCOPETAG|BBSCOPETRANSFER")
@_global_options
@click.pass_context
def cancel(ctx: click.Context, /, handle: str | None, scope: str, **g: Any) -> None:
    """Cancel a transfer: its movers stop and its status becomes BBCANCELED."""

    def action(spool: Spool, jobid: str, step: int, contribid: int) -> None:
        if handle is None:
            raise SimError("Missing parameter 'handle'", "bbcmd_cancel")
        commands.cancel(spool, jobid, step, contribid, _number(handle, "handle"), scope)

    _run_bbcmd(ctx, g, action)


@main.command()
@click.option("--tag", metavar="T", help="Transfer tag.")
@click.option("--contrib", metavar="LIST", help="Contributors, e.g. 0,1,4-7 (default: --contribid).")
@_global_options
@click.pass_context
def gethandle(ctx: click.Context, /, tag: str | None, contrib: str | None, **g: Any) -> None:
    """Get the handle of (job, step, tag, contributors); the same one every time."""

    def action(spool: Spool, jobid: str, step: int, contribid: int) -> Mapping[str, str]:
        if tag is None:
            raise SimError("Missing parameter 'tag'", "bbcmd_gethandle")
        handle = commands.gethandle(spool, jobid, step, contribid, _number(tag, "tag"), contrib)
        return {"transferHandle": str(handle)}

    _run_bbcmd(ctx, g, action)


@main.command()
@click.option("--handle", metavar="H", help="Transfer handle.")
@click.option("--buffersize", metavar="N", type=int, default=4096)
@_global_options
@click.pass_context
def gettransferkeys(ctx: click.Context, /, handle: str | None, buffersize: int, **g: Any) -> None:
    """Show a handle's transfer keys (the simulator keeps none)."""

    def action(spool: Spool, jobid: str, step: int, contribid: int) -> Mapping[str, str]:
        if handle is None:
            raise SimError("Missing parameter 'handle'", "bbcmd_gettransferkeys")
        spool.view(jobid, step, _number(handle, "handle"))
        return {"buffersize": str(buffersize), "buffer": "{}"}

    _run_bbcmd(ctx, g, action)


@main.command()
@click.option("--rate", type=float, metavar="BYTES_PER_S", help=f"Copy rate of each mover (${ENV_RATE}).")
@click.option("--file-delay", type=float, metavar="S", help=f"Sleep before each file (${ENV_FILE_DELAY}).")
@click.option("--start-delay", type=float, metavar="S", help=f"Stay BBNOTSTARTED this long (${ENV_START_DELAY}).")
@click.option("--hang", type=float, metavar="S", help=f"Every bbcmd call sleeps S seconds first (${ENV_HANG}).")
@click.option("--garbage/--no-garbage", default=None, help=f"Every bbcmd call prints garbage (${ENV_GARBAGE}).")
@click.option("--reset", is_flag=True, help="Forget every setting first.")
@_global_options
@click.pass_context
def config(
    ctx: click.Context,
    /,
    rate: float | None,
    file_delay: float | None,
    start_delay: float | None,
    hang: float | None,
    garbage: bool | None,
    reset: bool,
    **g: Any,
) -> None:
    """Set (or, with no option, show) how the simulated BB moves data."""
    spool = _spool(ctx, g)
    settings = spool.update_config(
        reset=reset, rate=rate, file_delay=file_delay, start_delay=start_delay, hang=hang, garbage=garbage
    )
    click.echo(json.dumps({k: getattr(settings, k) for k in settings.__dataclass_fields__}, sort_keys=True))


def _status_value(text: str) -> int:
    if text in STATUS_VALUES:
        return STATUS_VALUES[text]
    try:
        return int(text, 0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a status name nor a number") from None


@main.command()
@click.option("--fail-handle", "fail_handles", type=int, multiple=True, metavar="H", help="Make H end BBFAILED.")
@click.option("--fail-after-bytes", type=int, metavar="N", help="With --fail-handle: fail after N bytes.")
@click.option("--set-status", "statuses", multiple=True, metavar="H=STATUS", help="Report STATUS for H.")
@click.option("--hang-calls", type=int, metavar="N", help="The next N bbcmd calls hang.")
@click.option("--hang-seconds", type=float, metavar="S", help="How long a hanging call sleeps (default 3600).")
@click.option("--garbage-calls", type=int, metavar="N", help="The next N bbcmd calls print garbage.")
@click.option("--error-calls", type=int, metavar="N", help="The next N bbcmd calls fail with rc=-2.")
@click.option("--clear", is_flag=True, help="Forget every injection first.")
@_global_options
@click.pass_context
def inject(
    ctx: click.Context,
    /,
    fail_handles: tuple[int, ...],
    fail_after_bytes: int | None,
    statuses: tuple[str, ...],
    hang_calls: int | None,
    hang_seconds: float | None,
    garbage_calls: int | None,
    error_calls: int | None,
    clear: bool,
    **g: Any,
) -> None:
    """Inject failures: per handle, or into the next bbcmd calls. Prints what is now injected."""
    forced = {}
    for item in statuses:
        handle, sep, name = item.partition("=")
        if not sep or not handle.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not H=STATUS", param_hint="--set-status")
        forced[int(handle)] = _status_value(name.strip())
    spool = _spool(ctx, g)
    injections = spool.update_injections(
        clear=clear,
        fail=dict.fromkeys(fail_handles, fail_after_bytes),
        status=forced,
        hang_calls=hang_calls,
        hang_seconds=hang_seconds,
        garbage_calls=garbage_calls,
        error_calls=error_calls,
    )
    click.echo(json.dumps(injections.to_json(), sort_keys=True))


@main.command()
@_global_options
@click.pass_context
def show(ctx: click.Context, /, **g: Any) -> None:
    """List handles (of --jobid, or of every job), one JSON object per line."""
    spool = _spool(ctx, g)
    for jobid, handle in _all_handles(spool, _merge(ctx, g).jobid):
        view = spool.view(jobid, 0, handle)
        click.echo(
            json.dumps(
                {
                    "jobid": jobid,
                    "jobstepid": view.jobstepid,
                    "handle": handle,
                    "tag": view.tag,
                    "contribs": list(view.contribs),
                    "status": status_name(view.status),
                    "moved": view.moved,
                }
            )
        )


@main.command()
@click.option("--timeout", type=float, default=600.0, show_default=True, metavar="S")
@_global_options
@click.pass_context
def wait(ctx: click.Context, /, timeout: float, **g: Any) -> None:
    """Wait until no handle (of --jobid, or of any job) is BBNOTSTARTED or BBINPROGRESS; 3 on timeout."""
    spool = _spool(ctx, g)
    jobid = _merge(ctx, g).jobid
    active = STATUS_VALUES["BBNOTSTARTED"] | STATUS_VALUES["BBINPROGRESS"]
    deadline = time.monotonic() + timeout
    while any(spool.view(j, 0, h).status & active for j, h in _all_handles(spool, jobid)):
        if time.monotonic() >= deadline:
            click.echo("axl-bbsim: transfers still in progress", err=True)
            ctx.exit(3)
        time.sleep(0.05)


def _spool(ctx: click.Context, /, local: Mapping[str, Any]) -> Spool:
    spool = Spool(_merge(ctx, local).spool)
    try:
        spool.ensure()
    except SimError as exc:
        raise click.ClickException(exc.text) from None
    return spool


def _all_handles(spool: Spool, jobid: str | None) -> list[tuple[str, int]]:
    jobs = [jobid] if jobid else sorted(os.listdir(spool.path / "jobs"))
    return [(j, h) for j in jobs for h in spool.handles(j, 0)]


for _command in main.commands.values():
    _with_prefixes(_command)


if __name__ == "__main__":  # pragma: no cover - the console script calls main()
    sys.exit(main())
