"""The simulator's mover: one detached process per ``copy``, copying its file list as bbServer does.

Forked by `launch.spawn_mover` (`run_detached`), or, from a caller with threads, run as
a fresh interpreter that calls `main` with ``[--detach] SPOOL JOBID HANDLE CONTRIB``.
Each destination is opened with ``O_CREAT | O_TRUNC | O_WRONLY`` and the source's mode (which only
matters when the file is created), so a pre-created destination keeps its inode, owner, mode and extended
attributes, and its mtime becomes the copy's time: exactly what the real BB does to a temporary.

The mover paces itself to the configured rate, sleeps the per-file delay, and between chunks looks at
its handle's record (canceled?) and at the injections (fail this handle, fail after N bytes). It writes
its progress file, which nobody else writes, at most a few times a second and once at the end.
"""

from __future__ import annotations

import gc
import os
import signal
import stat
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn

from .model import BB_RECURSIVE, Config, FileEntry
from .spool import Spool

_CHECK_EVERY: Final = 0.05  # seconds between looks at cancel/fail flags
_PROGRESS_EVERY: Final = 0.2  # seconds between progress file writes
_MAX_CHUNK: Final = 1 << 20


class _Stop(Exception):
    def __init__(self, state: str, reason: str) -> None:
        self.state = state
        self.reason = reason
        super().__init__(reason)


class Mover:
    """Copies one contributor's file list for one handle, reporting through its progress file."""

    def __init__(self, spool: Spool, jobid: str, handle: int, contrib: int) -> None:
        self.spool = spool
        self.jobid = jobid
        self.handle = handle
        self.contrib = contrib
        self.config: Config = spool.load_config()
        self.moved = 0
        self.total = 0
        self.state = "queued"
        self.current = ""
        self._last_check = 0.0
        self._last_progress = 0.0
        self._fail_after: int | None = None
        self._pace_start = 0.0
        self._pace_bytes = 0

    def run(self) -> int:
        files = self.spool.files(self.jobid, self.handle, self.contrib)
        self.total = sum(_size(f.source) for f in files)
        self._progress(force=True)
        try:
            self._sleep(self.config.start_delay)
            self.state = "running"
            self._progress(force=True)
            self._pace_start = time.monotonic()
            for entry in files:
                self._sleep(self.config.file_delay)
                self._copy(entry)
            self.state = "done"
            error = ""
        except _Stop as stop:
            self.state, error = stop.state, stop.reason
        except OSError as exc:
            self.state, error = "failed", f"{self.current}: {exc.strerror or exc}"
        self._progress(force=True, error=error)
        return 0 if self.state == "done" else 1

    def _progress(self, *, force: bool = False, error: str = "") -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_EVERY:
            return
        self._last_progress = now
        self.spool.write_progress(
            self.jobid,
            self.handle,
            self.contrib,
            {"state": self.state, "moved": self.moved, "total": self.total, "pid": os.getpid(), "error": error},
        )

    def _check(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_check < _CHECK_EVERY:
            return
        self._last_check = now
        record = self.spool.record(self.jobid, self.handle) or {}
        if record.get("canceled") or self.contrib in record.get("canceled_contribs", ()):
            raise _Stop("canceled", "canceled")
        fail = self.spool.load_injections().fail
        if self.handle in fail:
            limit = fail[self.handle]
            self._fail_after = self.total // 2 if limit is None else limit
        if self._fail_after is not None and self.moved >= self._fail_after:
            raise _Stop("failed", f"injected failure after {self.moved} bytes")

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self._check(force=True)
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, _CHECK_EVERY))
            self._check()
        self._pace_start += seconds  # time asleep is not time the rate could have used

    def _copy(self, entry: FileEntry) -> None:
        self.current = f"{entry.source} -> {entry.destination}"
        src = os.open(entry.source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            mode = stat.S_IMODE(os.fstat(src).st_mode)
            if entry.flags & BB_RECURSIVE:
                os.makedirs(os.path.dirname(entry.destination) or ".", exist_ok=True)
            dst = os.open(entry.destination, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC, mode)
            try:
                self._pump(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _pump(self, src: int, dst: int) -> None:
        chunk = int(min(_MAX_CHUNK, max(4096, self.config.rate * _CHECK_EVERY)))
        while True:
            self._check(force=self._fail_after is not None)
            want = chunk if self._fail_after is None else min(chunk, self._fail_after - self.moved)
            data = os.read(src, max(want, 1))
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]
            self.moved += len(data)
            self._pace_bytes += len(data)
            self._pace()
            self._progress()

    def _pace(self) -> None:
        if self.config.rate <= 0:
            return
        ahead = self._pace_start + self._pace_bytes / self.config.rate - time.monotonic()
        while ahead > 0:
            time.sleep(min(ahead, _CHECK_EVERY))
            self._check()
            ahead = self._pace_start + self._pace_bytes / self.config.rate - time.monotonic()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _detach() -> None:
    """Fork; the parent prints the child's pid and exits, so the child is nobody's child but init's."""
    pid = os.fork()
    if pid:
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # let go of the launcher's pipe
    os.close(devnull)
    os.chdir("/")  # keep no directory busy (an unmount at job end)


def run_detached(spool: Path, jobid: str, handle: int, contrib: int, *, report_fd: int, log_fd: int) -> NoReturn:
    """Be the mover, in a process forked (not exec'd) from a single-threaded caller; never returns.

    Says its pid on `report_fd`, keeps only the standard descriptors (stdin and stdout on /dev/null,
    stderr on `log_fd`), so that nothing of the caller's stays open (a pipe someone reads to its end,
    a lock), puts back the default signal handlers the caller may have replaced, and ends with
    ``os._exit``: the caller's atexit handlers, finalizers and buffered output are not the mover's.
    """
    # Objects inherited from the caller are never collected here: a finalizer of one (a buffered file
    # flushing on collection) would write to whatever descriptor now has its number.
    gc.freeze()
    code = 1
    try:
        os.write(report_fd, f"{os.getpid()}\n".encode())
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, _max_fd())
        os.chdir("/")  # keep no directory busy (an unmount at job end)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        mover = Mover(Spool(os.path.abspath(spool)), jobid, handle, contrib)
        try:
            code = mover.run()
        except BaseException as exc:
            mover.state = "failed"
            mover._progress(force=True, error=f"mover crashed: {exc!r}")
            raise
    except BaseException:
        # The caller's sys.stderr may be a capture object; write the traceback to the log itself.
        os.write(2, traceback.format_exc().encode("utf-8", "replace"))
    finally:
        os._exit(code)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 1024


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    detach = bool(args) and args[0] == "--detach"
    if detach:
        args.pop(0)
    if len(args) != 4:
        sys.stderr.write("usage: mover [--detach] SPOOL JOBID HANDLE CONTRIB\n")
        return 2
    spool_path, jobid, handle, contrib = args
    spool = Spool(os.path.abspath(spool_path))
    if detach:
        _detach()
    mover = Mover(spool, jobid, int(handle), int(contrib))
    try:
        return mover.run()
    except BaseException as exc:
        # Whatever killed the copy, say so, rather than leave a handle in progress for ever.
        mover.state = "failed"
        mover._progress(force=True, error=f"mover crashed: {exc!r}")
        raise


if __name__ == "__main__":
    sys.exit(main())
