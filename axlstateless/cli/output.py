"""Standard output that cannot stop the work: a reader that went away, a strict encoding.

A finalize settles temporaries while it prints them. If printing raised in the middle (``finalize | head
-1`` closes the pipe; a name that is not UTF-8 on a strict UTF-8 stdout), the temporary just acted on
would lose its record and the rest would stay unsettled. So standard output is wrapped: a closed pipe
stops the printing, not the work (the records still go to ``--report``, the exit code is the work's, and
one note on stderr says what happened); a character the stream cannot encode is written escaped
(``\\udcff`` for the undecodable byte 0xff), never dropped.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO


class SafeOutput:
    """A text stream for records and summaries that survives a closed pipe and a strict encoding."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.broken = False  # the reader went away: nothing more is written

    def write(self, text: str) -> int:
        if self.broken:
            return len(text)
        try:
            try:
                return self.stream.write(text)
            except UnicodeEncodeError:
                # TextIOWrapper encodes the whole string before writing any of it: nothing was written.
                encoding = getattr(self.stream, "encoding", None) or "utf-8"
                return self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        except BrokenPipeError:
            self._closed()
            return len(text)

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._closed()

    def isatty(self) -> bool:
        return not self.broken and self.stream.isatty()

    def _closed(self) -> None:
        self.broken = True
        # What is still buffered would raise again at exit ("Exception ignored ... BrokenPipeError"):
        # point the descriptor at /dev/null so that the last flush goes nowhere, quietly.
        with contextlib.suppress(OSError, AttributeError, ValueError):
            fd = self.stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
