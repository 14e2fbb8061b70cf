"""Where a temporary's expected metadata comes from: the seam between "what should this file become" and
the engine that makes it so.

Two sources exist: our own name (format v1, `NAME_SOURCE`: the name carries mode, size, mtime and handle;
``user.axl.meta`` may add atime and owner hints), and an AXL state-file entry (`axlsource.AxlSource`:
mode, size, times, owner and the transfer's handle recorded by AXL). The engine settles both with the
same refusals and the same order of system calls; a source only says what is expected.
"""

from __future__ import annotations

import os
from typing import ClassVar, Protocol

from .metadata import Extras, read_extras
from .report import Kind
from .verdict import Action


class Expected(Protocol):
    """What a commit must produce: the final name (in the temporary's directory), the permission bits,
    the size that verifies the content, the mtime, and the transfer handle to ask the backend about."""

    @property
    def final(self) -> bytes: ...
    @property
    def mode(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int | None: ...
    @property
    def handle(self) -> int | None: ...


class Source(Protocol):
    """One origin of `Expected` records, consulted by the engine at two points."""

    @property
    def kind(self) -> Kind:
        """The kind of the records of its temporaries."""
        ...

    def extras(self, expected: Expected, fd: int, st: os.stat_result, *, readable: bool) -> Extras:
        """The atime and owner hints, read after the temporary was opened and found to be a regular file
        (`readable`: the descriptor may be read, it is not an O_PATH one of another user's file)."""
        ...

    def preverdict(self, expected: Expected) -> tuple[Action, str] | None:
        """A verdict the source itself imposes before the size is looked at (AXL marked the file failed),
        or None."""
        ...


class NameSource:
    """Our v1 name: everything but atime and the owner hints is in the name (`nameformat.TempName`)."""

    kind: ClassVar[Kind] = Kind.FILE

    def extras(self, expected: Expected, fd: int, st: os.stat_result, *, readable: bool) -> Extras:
        # Another user's unreadable temporary is held by an O_PATH descriptor, whose xattrs cannot be read
        # (EBADF): it is judged like one on a file system without xattrs, and the owner rules refuse it.
        return read_extras(fd) if readable else Extras()

    def preverdict(self, expected: Expected) -> tuple[Action, str] | None:
        return None


NAME_SOURCE = NameSource()

__all__ = ["NAME_SOURCE", "Expected", "NameSource", "Source"]
