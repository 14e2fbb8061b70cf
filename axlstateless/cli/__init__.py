"""The ``axl-stateless`` command line: a thin layer that parses options, calls one library function and
renders its records. Library errors become one ``Error: ...`` line and their exit code in `options`, and
only there."""

from __future__ import annotations

import importlib
import signal
from typing import Final

import click

from axlstateless import __version__, fastpath, interrupt
from axlstateless.errors import AxlError, Interrupted

from .options import fail

#: Each command lives in its own module and exports `command`, in help order. A module is imported only
#: when its command runs (or help lists them all): a finalize does not pay the start-up of pre-stage,
#: status, cleanup or the demo's simulator (docs/performance.md).
COMMANDS: Final = ("prestage", "finalize", "status", "cleanup", "demo")


class _Commands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command: click.Command = importlib.import_module(f"{__name__}.{cmd_name}").command
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="axl-stateless", message=f"%(prog)s %(version)s, {fastpath.PATH}")
def cli() -> None:
    """Finish burst-buffer file transfers without a state file.

    \b
    prestage  create destination temporaries, named with their final mode, size and mtime
    finalize  commit the temporaries whose data arrived, delete the others
    status    show the temporaries and what finalize would do now
    cleanup   sweep orphaned temporaries no post-stage finished (commit complete ones, delete the rest)
    demo      rehearse a whole job against the simulated IBM burst buffer
    """


def main() -> None:
    """Entry point of the ``axl-stateless`` console script.

    SIGINT, SIGTERM and SIGHUP stop a command between two temporaries (`interrupt`): exit 128 + N, with
    the summary written, never click's "Aborted!" and exit 1 (which would claim data did not arrive).
    """
    with interrupt.handlers():
        try:
            cli.main(prog_name="axl-stateless", standalone_mode=True)
        except AxlError as exc:  # a signal while click parsed the command line, before any command ran
            fail(exc)
        except KeyboardInterrupt:  # a signal the handlers did not catch: still one line, no traceback
            fail(Interrupted(signal.SIGINT))
