"""Running finalize, cleanup, status and pre-stage across the ranks of an MPI job (docs/mpi.md).

Every rank calls the same library function with the same arguments and a `Distributed` built by
`connect()`; MPI (through mpi4py, the ``axlstateless[mpi]`` extra) is the only channel between ranks,
as in mpifileutils: no sockets, no files for coordination.

What is decided once is decided by rank 0 and broadcast: the roots are opened and checked there first
(a usage error is raised on every rank, nothing changed), and the burst-buffer wait is made there once,
its answers sent to the others as a snapshot, so the number of ``bbcmd`` calls does not grow with the
number of ranks. The tree is walked by `mpiwalk`, which rank 0 coordinates. Records reach the caller's
sink on rank 0 only, each with the ``"rank"`` that settled it in its ``extra``.

mpi4py is imported by `connect()` and never before: nothing run without ``--mpi`` needs it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence, Set
from typing import Any, Final, TypeVar

from .backends.base import Backend, Progress
from .backends.snapshot import SnapshotBackend
from .errors import AxlError, UsageError
from .mpiwalk import DistributedWalker
from .prestage import PrestageResult, StagedFile, StagePair, prestage, write_filelist
from .report import Outcome, Record, Sink
from .walk import AnyPath, Visitor, open_roots

T = TypeVar("T")

#: Environment variables in which launchers give a process its rank before MPI is initialised (MPICH and
#: Intel MPI, Open MPI, PMIx, Slurm): an error met before there is a communicator is printed by rank 0 only.
_RANK_VARIABLES: Final = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
#: How long an idle rank sleeps between looks at its messages: a rank waiting on another's long call
#: (rank 0 waiting on the burst buffer for minutes) must not spin a core of a shared launch node.
_IDLE_POLL: Final = 0.002

MISSING_MPI4PY: Final = "--mpi needs mpi4py (pip install 'axlstateless[mpi]', built against the site's MPI)"


def launcher_rank() -> int | None:
    """This process's rank as the launcher announced it in the environment, or None when not told."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def connect(comm: Any = None) -> Distributed:
    """A `Distributed` over `comm` (an mpi4py communicator; default: every process of the job,
    ``MPI_COMM_WORLD``), initialising MPI if the caller has not.

    Raises `UsageError` when mpi4py is not installed (or MPI cannot start).
    """
    try:
        from mpi4py import MPI  # noqa: PLC0415 - imported only when --mpi is asked for
    except ImportError:
        raise UsageError(None, MISSING_MPI4PY) from None
    except RuntimeError as exc:  # mpi4py installed, but its MPI library could not be loaded or started
        raise UsageError(None, f"--mpi: MPI could not start: {exc}") from None
    return Distributed(MPI.COMM_WORLD if comm is None else comm, MPI)


class Distributed:
    """One MPI communicator, with the collective steps the commands share. Every method is collective:
    every rank must call it, in the same order."""

    #: Message tags: work and stop orders from rank 0, results and records to rank 0, collectives.
    TAG_DOWN: Final = 11
    TAG_UP: Final = 12
    TAG_BCAST: Final = 13

    def __init__(self, comm: Any, mpi: Any) -> None:
        self.comm = comm
        self.MPI = mpi  # the mpi4py.MPI module, for its constants
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        self._gather: _GatherSink | None = None

    # -- collectives that never spin ------------------------------------------------------------------

    def bcast(self, value: T | None) -> T:
        """Rank 0's `value` on every rank. Ranks other than 0 wait by polling with sleeps, not inside
        MPI: MPICH's blocking calls spin a core, and rank 0 may take minutes (the BB wait)."""
        if self.rank == 0:
            requests = [self.comm.isend(value, dest=r, tag=self.TAG_BCAST) for r in range(1, self.size)]
            for request in requests:
                request.wait()
            return value  # type: ignore[return-value]
        while not self.comm.iprobe(source=0, tag=self.TAG_BCAST):
            time.sleep(_IDLE_POLL)
        received: T = self.comm.recv(source=0, tag=self.TAG_BCAST)
        return received

    def gather(self, value: T) -> list[T] | None:
        """Every rank's `value`, in rank order, on rank 0 (None elsewhere)."""
        if self.rank != 0:
            self.comm.isend(value, dest=0, tag=self.TAG_BCAST).wait()
            return None
        values = [value]
        for source in range(1, self.size):
            while not self.comm.iprobe(source=source, tag=self.TAG_BCAST):
                time.sleep(_IDLE_POLL)
            values.append(self.comm.recv(source=source, tag=self.TAG_BCAST))
        return values

    def on_root(self, step: Callable[[], T]) -> T:
        """Run `step` on rank 0 and give its result to every rank; if it raised an `AxlError`, raise the
        same error on every rank."""
        outcome: tuple[bool, Any] = (True, None)
        if self.rank == 0:
            try:
                outcome = (True, step())
            except AxlError as exc:
                outcome = (False, _portable(exc))
        ok, value = self.bcast(outcome)
        if not ok:
            raise _rebuild(value)
        return value  # type: ignore[no-any-return]

    def on_every(self, step: Callable[[], T]) -> T:
        """Run `step` on every rank; if it raised an `AxlError` on any, raise the lowest such rank's error
        on every rank."""
        try:
            mine: tuple[bool, Any] = (True, step())
        except AxlError as exc:
            mine = (False, _portable(exc))
        verdicts = self.gather(None if mine[0] else mine[1])
        first = None if verdicts is None else next((v for v in verdicts if v is not None), None)
        failure = self.bcast(first)
        if failure is not None:
            raise _rebuild(failure)
        return mine[1]  # type: ignore[no-any-return]

    def agree_exit(self, code: int) -> int:
        """Rank 0's exit code, on every rank: every rank of the job exits with the same overall code."""
        return self.bcast(code)

    def abort(self, code: int) -> None:
        """Take the whole job down (a bug, or an interrupt on one rank): MPI ends every rank."""
        self.comm.Abort(code)

    def crash(self, exc: BaseException) -> None:
        """Take the job down from this rank: a rank that stops must not leave the others waiting on it.

        A signal noted between two temporaries (`Interrupted`: mpiexec passes ^C on to every rank) or
        another `AxlError` is one ``Error:`` line and its exit code (128 + the signal); the commits made
        so far stand and a rerun finishes. A bug prints its traceback, with the rank, and 70."""
        if isinstance(exc, AxlError):
            os.write(2, f"Error: rank {self.rank}: {exc}\n".encode(errors="replace"))
            self.abort(exc.exit_code)
            return
        if isinstance(exc, KeyboardInterrupt):
            os.write(2, f"Error: rank {self.rank}: interrupted\n".encode())
            self.abort(128 + signal.SIGINT)
            return
        text = "".join(traceback.format_exception(exc))
        os.write(2, f"axl-stateless: rank {self.rank} failed:\n{text}".encode(errors="replace"))
        self.abort(70)

    # -- the steps of finalize, cleanup and status ----------------------------------------------------

    def open_roots(self, roots: Sequence[AnyPath]) -> list[tuple[bytes, int]]:
        """Open the roots on every rank, rank 0 first: a missing root is one `UsageError` (raised on every
        rank) before anything is done anywhere. Raises like `walk.open_roots`."""
        opened: list[tuple[bytes, int]] = []
        self.on_root(lambda: opened.extend(open_roots(roots)))
        try:
            if self.rank != 0:
                self.on_every(lambda: opened.extend(open_roots(roots)))
            else:
                self.on_every(lambda: None)
        except AxlError:
            for _, fd in opened:
                os.close(fd)
            raise
        return opened

    def wait_once(
        self,
        backend: Backend,
        handles: Set[int],
        timeout: float,
        progress: Progress,
    ) -> Backend:
        """Wait on the burst buffer once for the `handles` every rank found (their union), on rank 0;
        return, on every rank, a backend that answers from rank 0's view of them."""
        found = self.gather(set(handles))

        def wait() -> dict[int | None, Any]:
            assert found is not None  # noqa: S101 - rank 0 gathered
            wanted: set[int] = set().union(*found)
            backend.wait(wanted, timeout, progress)
            answers: dict[int | None, Any] = {h: backend.status(h) for h in wanted}
            answers[None] = backend.status(None)
            return answers

        return SnapshotBackend(self.on_root(wait), name=backend.name)

    def sink(self, sink: Sink) -> Sink:
        """The sink a visitor on this rank reports to: on rank 0, `sink` itself (with the rank added); on
        the others, one that sends the records to rank 0 in batches during `walk`."""
        # Rank 0's sink decides for every rank whether committed temporaries need a record each.
        wants = self.bcast(bool(getattr(sink, "wants_records", True)) or not hasattr(sink, "count"))
        self._gather = _GatherSink(self.rank, sink if self.rank == 0 else None, wants)
        return self._gather

    def walk(
        self,
        roots: list[tuple[bytes, int]],
        visitor: Visitor,
        *,
        jobs: int = 1,
        one_file_system: bool = False,
    ) -> None:
        """`walk.walk` across the ranks: the same `Visitor` calls, each directory's once, on some rank;
        the opened `roots` (the same on every rank) are closed. Collective."""
        # The sink made by `sink` belongs to the walk that follows it, not to a later one.
        gather, self._gather = self._gather, None
        DistributedWalker(self, visitor, jobs, one_file_system, gather).run(roots)

    # -- pre-stage ------------------------------------------------------------------------------------

    def scatter(self, parts: Sequence[T] | None) -> T:
        """Rank 0's `parts[r]` on each rank r (`parts` has one item per rank, on rank 0 only)."""
        if self.rank == 0:
            if parts is None or len(parts) != self.size:
                raise AssertionError("scatter needs one part per rank on rank 0")
            requests = [self.comm.isend(parts[r], dest=r, tag=self.TAG_BCAST) for r in range(1, self.size)]
            for request in requests:
                request.wait()
            return parts[0]
        while not self.comm.iprobe(source=0, tag=self.TAG_BCAST):
            time.sleep(_IDLE_POLL)
        received: T = self.comm.recv(source=0, tag=self.TAG_BCAST)
        return received

    def prestage(
        self,
        pairs: Sequence[StagePair],
        *,
        handle: int | None = None,
        follow_symlinks: bool = False,
        filelist: bytes | str | None = None,
        dry_run: bool = False,
    ) -> PrestageResult:
        """Pre-stage this rank's `pairs` (`prestage.prestage`), with the whole job's checks first: a final
        path named twice, on any ranks, or a bad pair on any rank, is one error raised on every rank
        before any rank creates anything. Collective: every rank calls it, with its own pairs (maybe
        none). Returns this rank's result: its ``files`` are the (source, temporary) pairs to give the
        burst buffer (``BB_AddFiles``, or the lines of `filelist`, written per rank when given).

        Raises like `prestage.prestage`, on every rank.
        """
        return self._prestage(pairs, handle, follow_symlinks, filelist, dry_run, write=True)

    def _prestage(
        self,
        pairs: Sequence[StagePair],
        handle: int | None,
        follow_symlinks: bool,
        filelist: bytes | str | None,
        dry_run: bool,
        *,
        write: bool,
    ) -> PrestageResult:
        finals = [os.path.normpath(os.path.abspath(p.final)) for p in pairs]
        everyone = self.gather(finals)

        def no_duplicates() -> None:
            assert everyone is not None  # noqa: S101 - rank 0 gathered
            seen: set[bytes] = set()
            for rank_finals in everyone:
                for final in rank_finals:
                    if final in seen:
                        raise UsageError(final, "named twice as a destination")
                    seen.add(final)

        self.on_root(no_duplicates)

        def stage(dry: bool) -> PrestageResult:
            if not pairs:
                return PrestageResult(dry_run=dry)
            # The dry run is given the file list too: its lines are checked then (white space).
            listed = filelist if dry or write else None
            return prestage(pairs, handle=handle, follow_symlinks=follow_symlinks, filelist=listed, dry_run=dry)

        # A dry run first checks every pair (sources, names, the file list's white space) on every rank.
        checked = self.on_every(lambda: stage(True))
        return checked if dry_run else self.on_every(lambda: stage(False))

    def prestage_list(
        self,
        pairs: Sequence[StagePair] | None,
        *,
        handle: int | None = None,
        follow_symlinks: bool = False,
        filelist: bytes | str | None = None,
        dry_run: bool = False,
    ) -> PrestageResult:
        """Pre-stage the whole `pairs` list (given on rank 0), split across the ranks in contiguous
        blocks, with one `filelist` written by rank 0. Returns the whole job's result on rank 0 (files
        in list order), this rank's elsewhere. Collective; raises like `prestage`, on every rank."""
        blocks: list[list[StagePair]] | None = None
        if self.rank == 0:
            everything = list(pairs or [])
            bounds = [len(everything) * r // self.size for r in range(self.size + 1)]
            blocks = [everything[bounds[r] : bounds[r + 1]] for r in range(self.size)]
        mine = self.scatter(blocks)
        result = self._prestage(mine, handle, follow_symlinks, filelist, dry_run, write=False)
        results = self.gather(result)
        merged = result
        if results is not None:
            merged = PrestageResult(dry_run=dry_run)
            for part in results:
                merged.files.extend(part.files)
                merged.created_directories.extend(
                    d for d in part.created_directories if d not in merged.created_directories
                )
                merged.replaced += part.replaced
                merged.xattrs &= part.xattrs
        if filelist is not None and not dry_run:
            files: list[StagedFile] = merged.files
            self.on_root(lambda: write_filelist(filelist, files))
        return merged


class _GatherSink:
    """Adds ``"rank"`` to each record; on rank 0 passes it on, elsewhere holds it for the walk to send.

    Like a `Reporter`, it may take committed temporaries as counts instead of records (`count`), when
    rank 0's sink says it does not want them (no --json, no --report): the native core then builds no
    record for them on any rank.
    """

    BATCH: Final = 512

    def __init__(self, rank: int, sink: Sink | None, wants_records: bool) -> None:
        self.rank = rank
        self.sink = sink
        self.wants_records = wants_records
        self.lock = threading.Lock()
        self.held: list[Record] = []
        self.counted: dict[Outcome, int] = {}
        #: Set by the walk: where batches go (the rank's queue of messages to rank 0).
        self.ship: Callable[[list[Record], dict[Outcome, int]], None] | None = None

    def __call__(self, record: Record) -> None:
        tagged = dataclasses.replace(record, extra={**(record.extra or {}), "rank": self.rank})
        if self.sink is not None:
            self.sink(tagged)
            return
        with self.lock:
            self.held.append(tagged)
            if len(self.held) < self.BATCH:
                return
            batch, self.held = self.held, []
        self._send(batch, {})

    def count(self, outcome: Outcome, n: int) -> None:
        if self.sink is not None:
            self.sink.count(outcome, n)  # type: ignore[attr-defined]  # only when it said wants_records
            return
        with self.lock:
            self.counted[outcome] = self.counted.get(outcome, 0) + n

    def flush(self) -> None:
        with self.lock:
            batch, self.held = self.held, []
            counted, self.counted = self.counted, {}
        if batch or counted:
            self._send(batch, counted)

    def _send(self, batch: list[Record], counted: dict[Outcome, int]) -> None:
        if self.ship is None:
            raise AssertionError("records outside a distributed walk")
        self.ship(batch, counted)

    def deliver(self, batch: list[Record], counted: dict[Outcome, int]) -> None:
        """On rank 0: what another rank sent."""
        if self.sink is not None:
            for record in batch:
                self.sink(record)
            for outcome, n in counted.items():
                self.sink.count(outcome, n)  # type: ignore[attr-defined]


def _portable(exc: AxlError) -> tuple[type[AxlError], str | None, str]:
    # An AxlError does not pickle (its constructor takes two arguments, its args hold one message).
    return (type(exc), exc.path, exc.reason)


def _rebuild(value: tuple[type[AxlError], str | None, str]) -> AxlError:
    cls, path, reason = value
    return cls(path, reason)


__all__ = ["MISSING_MPI4PY", "Distributed", "connect", "launcher_rank"]
