"""A working stand-in for IBM's burst buffer (CAST bbapi), with a ``bbcmd``-compatible command line.

Shipped in the package so that users can rehearse their post-stage scripts and the project can test
the real ``ibmbb`` code path: ``axl-stateless finalize --backend ibmbb --bbcmd axl-bbsim`` runs exactly
what runs on the machine.

* `model`    settings, injected failures, file lists, and how a handle's BB status follows from its
             contributors' copies (pure: no I/O).
* `spool`    the store: one directory of small JSON files, flock'ed and renamed atomically, so that
             any number of ``axl-bbsim`` processes (one per rank) can run at once.
* `process`  whether a mover still runs (/proc, pid and start time).
* `mover`    one detached process per ``copy``; it writes into the existing destination as bbServer
             does (``O_CREAT | O_TRUNC | O_WRONLY``), at a configured rate, and honours cancel and
             injected failures.
* `launch`   ``start_copy``: records a copy in the spool and starts its mover (the only module that
             knows both, so neither imports the other).
* `commands` bbcmd's commands and reply shape (every value a string, replies nested under ranks with
             ``--target``, ``handles`` as one ``"(h1,h2)"`` string).
* `cli`      the ``axl-bbsim`` console script (click); ``axl-bbsim --help`` documents the spool, the
             settings (``config``) and the failure injections (``inject``), with their environment
             variables (``AXL_BBSIM_SPOOL``, ``AXL_BBSIM_RATE``, ``AXL_BBSIM_FILE_DELAY``,
             ``AXL_BBSIM_START_DELAY``, ``AXL_BBSIM_FAIL_HANDLES``, ``AXL_BBSIM_HANG``, ``AXL_BBSIM_GARBAGE``).

Where the simulator is simpler than the real BB: ``copy --handle H`` accepts a handle that ``gethandle``
never gave (and creates it with the calling contributor alone); a status is job-wide, so every rank
named by ``--target`` gives the same answer; file-list lines are split on white space (no quoting).
"""

from __future__ import annotations

from .launch import start_copy
from .model import Config, FileEntry, SimError
from .spool import Spool, default_spool

__all__ = ["Config", "FileEntry", "SimError", "Spool", "default_spool", "start_copy"]
