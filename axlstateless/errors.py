"""The one exception hierarchy of axlstateless; every failure a user can meet is one of these.

    AxlError                      exit_code 4 unless a subclass says otherwise
    ├── UsageError(ValueError)    2: bad arguments or input; nothing was changed
    │   ├── NameFormatError       a final name or field the name format cannot express
    │   ├── SourceError(OSError)  a pre-stage source that is missing, unreadable or not a regular file
    │   └── BackendSetupError     the backend cannot start (bbcmd not found, no job id); also a BackendError
    ├── PrestageError(OSError)    4: pre-stage could not create a destination temporary or directory
    ├── WalkError(OSError)        2: a root could not be opened (before anything changed)
    ├── StateFileError            4: an AXL state file that cannot be read whole (left as it is)
    │   └── NotAxlStateError      a whole kvtree file that is not an AXL state file (SCR keeps others)
    ├── KVTreeError(ValueError)   4: bytes that are not one whole, well-formed kvtree file
    ├── BackendError              4: the transfer-status backend failed (no usable reply from bbcmd)
    └── Interrupted               128+N: stopped by signal N at a temporary boundary; a rerun finishes

The CLI turns each into one ``Error: <path>: <reason>`` line and its exit code; the library never
prints.
"""

from __future__ import annotations

import os
import signal

EXIT_OK = 0
EXIT_ABORTED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_LEFT = 4
EXIT_SIGNAL_BASE = 128  # stopped by signal N: 128 + N, as a shell reports a process killed by it


class AxlError(Exception):
    """Base of every error axlstateless raises on purpose; carries the path and the reason."""

    exit_code: int = EXIT_LEFT

    def __init__(self, path: bytes | str | None, reason: str) -> None:
        self.path = os.fsdecode(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class UsageError(AxlError, ValueError):
    """Bad usage or input, found before anything was changed."""

    exit_code = EXIT_USAGE


class NameFormatError(UsageError):
    """A final name or field that version 1 of the name format cannot express."""


class SourceError(UsageError, OSError):
    """A pre-stage source that is missing, unreadable or not a regular file."""


class PrestageError(AxlError, OSError):
    """Pre-stage could not create a destination temporary or directory."""


class WalkError(AxlError, OSError):
    """A root given to finalize, cleanup or status could not be opened (permission denied, an I/O
    error). Every root is opened before anything is done, so nothing was changed: exit 2. A directory
    below a root that cannot be read is a record (left, exit 4), not this error."""

    exit_code = EXIT_USAGE


class StateFileError(AxlError):
    """An AXL state file that cannot be read whole: unreadable, truncated, corrupt, or not AXL's.

    Nothing it names is committed or deleted on a guess; the rest of the run goes on."""


class NotAxlStateError(StateFileError):
    """A whole, valid kvtree file that is not an AXL state file: it has no TYPE or STATE, which AXL
    writes from its first write on. Other programs keep kvtree files too (SCR, AXL's caller, keeps
    many beside AXL's), so a directory search may meet them; a caller may skip them."""


class KVTreeError(AxlError, ValueError):
    """Bytes that are not one whole, well-formed KVTree file (``axlstateless.kvtree.loads``).

    Carries no path (the decoder sees bytes only); the state-file reader re-raises it as a
    `StateFileError` naming the file."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)


class BackendError(AxlError):
    """The transfer-status backend failed; nothing is committed on a guess."""


class BackendSetupError(UsageError, BackendError):
    """The backend cannot start (its command is not found or cannot be parsed, no job id): found before
    any file is touched, so nothing was changed."""


class Interrupted(AxlError):
    """Stopped by a signal (SIGINT, SIGTERM, SIGHUP) between two temporaries: each temporary was either
    settled or left untouched, and a rerun finishes the work. Exit code 128 + the signal's number."""

    def __init__(self, signum: int, what: str | None = None) -> None:
        self.signum = signum
        self.exit_code = EXIT_SIGNAL_BASE + signum
        try:
            self.signal_name = signal.Signals(signum).name
        except ValueError:
            self.signal_name = f"signal {signum}"
        super().__init__(
            what, f"interrupted by {self.signal_name}: stopped between two temporaries; a rerun finishes the work"
        )
