"""The ``ibmbb`` backend: transfer states from IBM CAST's ``bbcmd``, run as a subprocess.

In post-stage the C API cannot reach bbproxy; ``bbcmd`` can (docs/ibm-bb.md). The job
may have 16k ranks, so the backend never asks per handle: waiting is one ``gettransfers`` call per poll
(the handles still BBNOTSTARTED or BBINPROGRESS), and the verdicts afterwards come from a fixed number
of ``gettransfers`` calls, one per final status. The number of calls grows with the waiting time only.

Only BBFULLSUCCESS is success. A handle the BB does not list in any state gets at most a few
``getstatus`` probes (a status outside the known names, such as ``UNDEFINED (n)``, is reported as seen)
and is otherwise judged by verification alone.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence, Set
from typing import ClassVar, Final, TypeVar

from axlstateless import interrupt
from axlstateless.errors import BackendError, BackendSetupError, UsageError

from .base import Backend, Progress, TransferState, TransferStatus
from .bbcmd_reply import (
    ACTIVE_STATUSES,
    FAILED_STATUSES,
    STATUS_VALUES,
    ReplyError,
    excerpt,
    parse_handle_info,
    parse_reply,
    parse_transfer_list,
)
from .bbcmd_reply import Reply as BBReply

DEFAULT_BBCMD: Final = "/opt/ibm/bb/bin/bbcmd"
DEFAULT_NUMHANDLES: Final = 1024  # bbcmd's own default
MAX_NUMHANDLES: Final = 2**31 - 1  # bbcmd reads --numhandles as a C int
DEFAULT_POLL_INTERVAL: Final = 2.0  # seconds; the first poll, growing 1.5x per poll up to max_poll_interval
DEFAULT_RETRIES: Final = 3  # more calls after a failed one, before giving up with BackendError
DEFAULT_CALL_TIMEOUT: Final = 30.0  # seconds one bbcmd call may take before it is killed (a hang)
# Seconds bbcmd may still take after the wait's timeout, to learn the final states, retries included:
# LSF kills a stage-out script at 600 s (stageout2timeout) and finalize's default wait is 540 s, so
# without a bound a bbcmd that hangs near the end would let LSF kill finalize before any commit.
DEFAULT_SETTLE_BUDGET: Final = 30.0
MAX_PROBES: Final = 8  # getstatus calls for handles no list mentions; a constant, whatever the count
_SHOWN_HANDLES: Final = 10  # handles named in one progress line
_KILL_GRACE: Final = 5.0

T = TypeVar("T")

_ACTIVE: Final = frozenset(STATUS_VALUES[n] for n in ACTIVE_STATUSES)
_FAILED: Final = frozenset(STATUS_VALUES[n] for n in FAILED_STATUSES)


def _no_progress(line: str) -> None:
    pass


class _CallFailed(Exception):
    """One bbcmd call gave no usable reply; `reason` says how, for the log and the final error."""

    def __init__(self, reason: str, *, retry: bool = True) -> None:
        self.reason = reason
        self.retry = retry
        super().__init__(reason)


def find_bbcmd(bbcmd: str | None) -> list[str]:
    """The command line prefix for `bbcmd` (default: /opt/ibm/bb/bin/bbcmd, else bbcmd on PATH).

    `bbcmd` may be a path, a name on PATH, or a command with arguments (``"axl-bbsim --spool D"``).
    Raises `BackendSetupError` naming what was looked for when nothing runnable is found.
    """
    if bbcmd is None:
        if os.access(DEFAULT_BBCMD, os.X_OK):
            return [DEFAULT_BBCMD]
        found = shutil.which("bbcmd")
        if found is None:
            raise BackendSetupError(None, f"bbcmd not found: neither {DEFAULT_BBCMD} nor bbcmd on PATH (give --bbcmd)")
        return [found]
    try:
        words = [bbcmd] if os.path.exists(bbcmd) else shlex.split(bbcmd)
    except ValueError as exc:  # an unbalanced quote: shlex says "No closing quotation"
        raise BackendSetupError(bbcmd, f"the bbcmd command cannot be split into words: {exc}") from None
    if not words:
        raise BackendSetupError(None, "the bbcmd command is empty")
    program = words[0]
    if os.sep in program:
        if not os.access(program, os.X_OK):
            raise BackendSetupError(program, "bbcmd command not found or not executable")
        return words
    found = shutil.which(program)
    if found is None:
        raise BackendSetupError(program, "bbcmd command not found on PATH")
    return [found, *words[1:]]


class IbmBBBackend(Backend):
    """Learns transfer states from ``bbcmd gettransfers``, a constant number of calls per poll."""

    name: ClassVar[str] = "ibmbb"
    uses_handles: ClassVar[bool] = True

    def __init__(
        self,
        *,
        bbcmd: str | None = None,
        jobid: str | None = None,
        jobstepid: int = 0,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = 15.0,
        report_interval: float = 5.0,
        retries: int = DEFAULT_RETRIES,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        settle_budget: float = DEFAULT_SETTLE_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = interrupt.sleep,
    ) -> None:
        """Find bbcmd and the job now, so that a misconfiguration fails before any file is touched.

        Raises `BackendSetupError` when bbcmd or the job id cannot be found, `UsageError` for bad numbers.
        """
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise UsageError(None, "the poll interval must be positive and at most the maximum poll interval")
        if retries < 0 or call_timeout <= 0 or jobstepid < 0 or report_interval < 0:
            raise UsageError(None, "retries and jobstepid must not be negative; the bbcmd timeout must be positive")
        self.command = find_bbcmd(bbcmd)
        resolved = jobid or os.environ.get("LSF_STAGE_JOBID") or os.environ.get("LSB_JOBID")
        if not resolved:
            raise BackendSetupError(None, "no job id for bbcmd: give --jobid or set LSF_STAGE_JOBID or LSB_JOBID")
        self.jobid = resolved
        self.jobstepid = jobstepid
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.report_interval = report_interval
        self.retries = retries
        self.call_timeout = call_timeout
        self.settle_budget = settle_budget
        self._deadline: float | None = None  # no bbcmd call runs past it (set by `wait`)
        self._clock = clock
        self._sleep = sleep
        self._progress: Progress = _no_progress
        self._numhandles = DEFAULT_NUMHANDLES
        self._lists: dict[str, frozenset[int]] | None = None  # status name (or "active") -> handles
        self._probed: dict[int, TransferStatus] = {}

    # -- the Backend interface ------------------------------------------------------------------------

    def wait(self, handles: Set[int], timeout: float, progress: Progress) -> bool:
        """Poll until none of `handles` is BBNOTSTARTED/BBINPROGRESS or `timeout` passes; then learn states.

        One ``gettransfers`` per poll, the poll interval growing to `max_poll_interval`; a progress line
        every `report_interval` seconds. Returns False on timeout (the states are learned all the same,
        so the transfers already over can be acted on). Raises `BackendError` when bbcmd keeps failing.
        """
        self._progress = progress
        wanted = frozenset(handles)
        if not wanted:
            # No temporary names a handle: each is judged by verification alone, so the BB has nothing to
            # say, and a bbcmd that cannot reach bbproxy must not stop those commits.
            self._lists = {name: frozenset() for name in ("active", "BBFULLSUCCESS", *FAILED_STATUSES)}
            self._probed = {}
            return True
        self._numhandles = max(self._numhandles, min(2 * len(wanted), MAX_NUMHANDLES))
        start = self._clock()
        self._deadline = start + timeout + self.settle_budget
        interval = self.poll_interval
        last_report: float | None = None
        while True:
            active = self._list(ACTIVE_STATUSES) if wanted else frozenset()
            pending = wanted & active
            now = self._clock()
            if not pending:
                break
            elapsed = now - start
            if elapsed >= timeout:
                if timeout > 0:
                    progress(f"gave up waiting after {elapsed:.0f}s: {_count(pending)} still in progress")
                else:  # one look, no waiting (status, cleanup): nothing was given up
                    progress(f"{_count(pending)} in progress, not waited for: {_names(pending)}")
                self._learn(wanted, active)
                return False
            if last_report is None or now - last_report >= self.report_interval:
                progress(f"waiting on {_count(pending)}: {_names(pending)} ({elapsed:.0f}s elapsed)")
                last_report = now
            self._sleep(max(0.0, min(interval, start + timeout - now)))
            interval = min(interval * 1.5, self.max_poll_interval)
        self._learn(wanted, active)
        return True

    def status(self, handle: int | None) -> TransferStatus:
        """The state of `handle` as of the last `wait` (learned then, with a constant number of calls)."""
        if handle is None:
            return TransferStatus(TransferState.UNKNOWN, "no handle in the name: judged by verification alone")
        if self._lists is None:
            self._learn(frozenset({handle}), None)
        assert self._lists is not None  # noqa: S101 - _learn sets it
        if handle in self._lists["BBFULLSUCCESS"]:
            return TransferStatus(TransferState.SUCCEEDED, "BBFULLSUCCESS")
        for name in FAILED_STATUSES:
            if handle in self._lists[name]:
                return TransferStatus(TransferState.FAILED, name)
        if handle in self._lists["active"]:
            return TransferStatus(TransferState.IN_PROGRESS, "BBNOTSTARTED or BBINPROGRESS")
        if handle in self._probed:
            return self._probed[handle]
        return TransferStatus(
            TransferState.UNKNOWN, f"the BB does not list handle {handle}: judged by verification alone"
        )

    # -- learning states ------------------------------------------------------------------------------

    def _learn(self, wanted: frozenset[int], active: frozenset[int] | None) -> None:
        # Order matters: the active list is taken before the final ones, and a transfer only moves
        # from active to final, so a handle that ends between two calls is still found in a final list.
        if active is None:
            active = self._list(ACTIVE_STATUSES)
        lists = {"active": active, "BBFULLSUCCESS": self._list(("BBFULLSUCCESS",))}
        for name in FAILED_STATUSES:
            lists[name] = self._list((name,))
        self._lists = lists
        listed = frozenset().union(*lists.values())
        self._probed = {}
        for handle in sorted(wanted - listed)[:MAX_PROBES]:
            probe = self._probe(handle)
            if probe is None:
                break
            self._probed[handle] = probe

    def _probe(self, handle: int) -> TransferStatus | None:
        """``getstatus`` of a handle no list mentions; None when bbcmd gave no reply at all (stop probing)."""
        try:
            reply = self._call(["getstatus", f"--handle={handle}"])
        except _CallFailed as exc:
            self._progress(f"bbcmd getstatus --handle={handle} gave no answer ({exc.reason}); not probing further")
            return None
        if not reply.ok:
            return TransferStatus(
                TransferState.UNKNOWN,
                f"the BB does not know handle {handle} ({reply.describe()}): judged by verification alone",
            )
        try:
            info = parse_handle_info(reply)
        except ReplyError as exc:
            return TransferStatus(
                TransferState.UNKNOWN, f"unreadable status of handle {handle} ({exc}): judged by verification alone"
            )
        value = info.status.value
        if value == STATUS_VALUES["BBFULLSUCCESS"]:
            return TransferStatus(TransferState.SUCCEEDED, info.status.name)
        if value in _FAILED:
            return TransferStatus(TransferState.FAILED, info.status.name)
        if value in _ACTIVE:
            return TransferStatus(TransferState.IN_PROGRESS, info.status.name)
        return TransferStatus(
            TransferState.UNKNOWN,
            f"the BB reports status {info.status.name} for handle {handle}, not one the backend understands: "
            "judged by verification alone",
        )

    def _list(self, statuses: Sequence[str]) -> frozenset[int]:
        """The job's handles in `statuses`, asking once more with room for all when the list was cut."""
        args = ["gettransfers", f"--matchstatus={','.join(statuses)}"]
        listing = self._run([*args, f"--numhandles={self._numhandles}"], parse_transfer_list)
        if listing.cut:
            self._numhandles = min(MAX_NUMHANDLES, max(2 * self._numhandles, 2 * listing.numavailhandles))
            listing = self._run([*args, f"--numhandles={self._numhandles}"], parse_transfer_list)
            if listing.cut:
                raise BackendError(
                    None,
                    f"bbcmd listed {listing.numhandles} of {listing.numavailhandles} handles "
                    f"even with --numhandles={self._numhandles}: {self._show([*args])}",
                )
        return listing.handles

    # -- running bbcmd --------------------------------------------------------------------------------

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [
            *self.command,
            f"--jobid={self.jobid}",
            f"--jobstepid={self.jobstepid}",
            "--target=0-",
            *args,
        ]

    def _show(self, args: Sequence[str]) -> str:
        return shlex.join(self._argv(args))

    def _run(self, args: Sequence[str], parse: Callable[[BBReply], T]) -> T:
        """`parse` of a successful reply to `args`, retrying failures; `BackendError` naming the command."""
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                reply = self._call(args)
                if reply.ok:
                    return parse(reply)
                problem = f"it failed with {reply.describe()}"
            except _CallFailed as exc:
                problem = exc.reason
            except ReplyError as exc:
                problem = f"unusable reply: {exc}"
            delay = min(self.poll_interval * attempt, self.max_poll_interval)
            if self._deadline is not None and self._clock() + delay >= self._deadline:
                raise BackendError(
                    None, f"bbcmd failed and the time to wait on it is over: {self._show(args)}: {problem}"
                )
            if attempt < attempts:
                self._progress(
                    f"bbcmd failed (attempt {attempt} of {attempts}), retrying in {delay:.1f}s: "
                    f"{self._show(args)}: {problem}"
                )
                self._sleep(delay)
        raise BackendError(None, f"bbcmd failed {attempts} times: {self._show(args)}: {problem}")

    def _call(self, args: Sequence[str]) -> BBReply:
        """Run bbcmd once; its parsed reply (maybe rc != 0), or `_CallFailed` for no usable reply."""
        argv = self._argv(args)
        try:
            # Own session: a timeout kills bbcmd and anything it started, not us.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise _CallFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        limit = self.call_timeout
        if self._deadline is not None:
            limit = min(limit, max(0.5, self._deadline - self._clock()))
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise _CallFailed(f"no answer within {limit:g}s; killed") from None
        stdout = out.decode("utf-8", "replace")
        stderr = excerpt(err.decode("utf-8", "replace"))
        if proc.returncode < 0:
            raise _CallFailed(f"killed by signal {-proc.returncode}; output {excerpt(stdout)!r}, stderr {stderr!r}")
        try:
            reply = parse_reply(stdout)
        except ReplyError as exc:
            raise _CallFailed(f"exit status {proc.returncode}, {exc}; stderr {stderr!r}") from None
        if reply.ok and proc.returncode != 0:
            raise _CallFailed(f"exit status {proc.returncode} with rc 0 in {excerpt(stdout)!r}; stderr {stderr!r}")
        return reply


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=_KILL_GRACE)
    except subprocess.TimeoutExpired:
        # Something outside the group still holds the pipes; stop reading and just reap bbcmd.
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()


def _count(handles: Set[int]) -> str:
    return f"{len(handles)} transfer" + ("" if len(handles) == 1 else "s")


def _names(handles: Set[int]) -> str:
    shown = sorted(handles)[:_SHOWN_HANDLES]
    text = ",".join(map(str, shown))
    return text + (f",... (+{len(handles) - len(shown)} more)" if len(handles) > len(shown) else "")
