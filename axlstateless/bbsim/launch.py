"""Starting a copy: record it in the spool, then start its detached mover (`mover.run_detached`).

The mover outlives the caller, as BB transfers outlive the job that started them. This module sits
above both the spool and the mover, so neither imports the other's starter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .model import FileEntry
from .mover import run_detached
from .process import process_start
from .spool import Spool


def start_copy(
    spool: Spool, jobid: str, jobstepid: int, contribid: int, handle: int, files: Sequence[FileEntry]
) -> None:
    """Record contributor `contribid`'s file list on `handle` and start its detached mover.

    A handle that ``gethandle`` never gave is accepted and created with this one contributor, so a
    rehearsal script need not call gethandle; the real BB would refuse it. Raises `SimError` as
    ``BB_StartTransfer`` would.
    """
    spool.add_transfer(jobid, jobstepid, contribid, handle, files)
    try:
        pid = spawn_mover(spool.path, jobid, handle, contribid)
    except OSError as exc:
        spool.write_progress(jobid, handle, contribid, {"state": "failed", "moved": 0, "error": str(exc)})
        return
    spool.set_mover(jobid, handle, contribid, pid, process_start(pid))


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent.parent)


def spawn_mover(spool: Path, jobid: str, handle: int, contrib: int) -> int:
    """Start the mover of one copy, detached from the caller; its pid.

    The mover is a grandchild that its parent abandons at once, so it is never a child of the caller:
    a long-lived caller (a test, the demo) keeps no zombie, and the mover survives the caller's exit,
    as BB transfers outlive the job that started them. A single-threaded caller forks without exec
    (about a millisecond; a fresh interpreter costs ~100 ms, which made a 64-rank demo spend 9 of its
    10 s starting movers); forking a process with other threads could copy a lock held by one of them,
    so such a caller runs the mover's `main` in a fresh interpreter instead (``--detach``).
    """
    log = os.open(spool / "mover.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        if threading.active_count() == 1 and hasattr(os, "fork"):
            return _fork_mover(spool, jobid, handle, contrib, log)
        return _exec_mover(spool, jobid, handle, contrib, log)
    finally:
        os.close(log)


def _fork_mover(spool: Path, jobid: str, handle: int, contrib: int, log: int) -> int:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the intermediate child, then the mover; neither returns
        code = 1
        try:
            os.close(rfd)
            os.setsid()  # a signal to the caller's process group (^C, a job kill) is not the mover's
            if os.fork() == 0:
                run_detached(spool, jobid, handle, contrib, report_fd=wfd, log_fd=log)  # calls os._exit
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as reader:
            line = reader.readline()
    finally:
        _, status = os.waitpid(pid, 0)  # the intermediate exits at once: reap it, leave no zombie
    try:
        return int(line)
    except ValueError:
        raise OSError(
            f"the mover did not start (exit status {os.waitstatus_to_exitcode(status)}, see {spool / 'mover.log'})"
        ) from None


def _exec_mover(spool: Path, jobid: str, handle: int, contrib: int, log: int) -> int:
    env = dict(os.environ)
    # Run the same code as this process, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [
            sys.executable,
            # -c, not -m: the package imports this module, which imports the mover, and runpy warns
            # when the module it is asked to run is already imported.
            "-c",
            "import sys; from axlstateless.bbsim.mover import main; sys.exit(main())",
            "--detach",
            str(spool),
            jobid,
            str(handle),
            str(contrib),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None  # noqa: S101 - stdout=PIPE above
    with proc.stdout:
        line = proc.stdout.readline()
    rc = proc.wait()
    try:
        return int(line)
    except ValueError:
        raise OSError(f"the mover did not start (exit status {rc}, see {spool / 'mover.log'})") from None
