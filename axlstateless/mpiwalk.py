"""The tree walk across the ranks of an MPI job: the same `Visitor` calls as `walk.walk`, each made once,
on whichever rank rank 0 hands the work to (docs/mpi.md).

Rank 0 coordinates, as well as working: it holds the tree of unfinished directories (for each, the
count of unfinished children and pieces, whether something below is pending, and which rank holds its
listing), hands out directories to list and visit, a wide directory's chunks to visit, and markers to
finish, and sends each rank at most ``jobs`` of them at a time, so every rank stays busy on a skewed
tree (one huge directory beside many small ones, a deep chain). A rank lists a directory with
`walk.list_directory` and takes its entries with `walk.chunks`; the chunks of a wide one are sent to rank
0 to be handed out, so its temporaries are spread across ranks while the directory is read once. A
directory's markers are finished by the rank that listed it (it holds the listing and its descriptor)
only once everything below it is finished on every rank.

A rank opens a directory it did not list by walking its path's components from its own descriptor of the
root (or of the parent, when it holds that), each ``O_DIRECTORY | O_NOFOLLOW`` with ``openat``: never a
path resolved through symlinks, never outside the roots. Within a rank, ``jobs`` threads do the work and
the main thread alone talks MPI (``MPI_THREAD_FUNNELED`` is enough); records of ranks other than 0 go to
rank 0 in batches, before the result of the piece of work that made them, so rank 0 has every record
once every piece of work is reported done.

A bug or an interrupt on any rank aborts the whole job (``MPI_Abort``); the crash discipline of the
engine makes a rerun, with or without MPI, finish the work.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .nameformat import DirMarker
from .walk import Entry, Listing, Visitor, chunks, list_directory

if TYPE_CHECKING:
    from .mpi import Distributed, _GatherSink

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MIN_IDLE: Final = 0.0001
_MAX_IDLE: Final = 0.002

# Messages are tuples whose first item says what they are.
# Down, rank 0 to a rank:
#   ("list", node, parent, root, components, path)  open, list, visit (or send the chunks of) a directory
#   ("visit", node, parent, root, components, path, entries, raw, clashes)  visit one chunk of a wide one
#   ("finish", node, children, pending, is_root)  finish a directory this rank listed
#   ("stop",)
# Up, a rank to rank 0:
#   ("listed", node, subdirs, pending, held)  held: this rank keeps the listing, to finish it later
#   ("chunk", node, entries, raw, clashes)  a wide directory's chunk for any rank to visit
#   ("visited", node, pending) / ("finished", node, pending)
#   ("records", records, {outcome: count})  records, and temporaries only counted (see mpi._GatherSink)
Message = tuple[Any, ...]


@dataclass(eq=False)
class _Node:
    id: int
    root: int
    components: tuple[bytes, ...]
    path: bytes
    parent: _Node | None
    remaining: int = 1  # unfinished children and chunks, plus one for the directory's own listing
    pending: bool = False
    owner: int = -1  # the rank holding the listing, or -1 (not listed: unreadable, another file system)
    children: dict[bytes, bool] = field(default_factory=dict)


class _Coordinator:
    """Rank 0's view of the tree and of the work each rank holds."""

    def __init__(self, size: int, capacity: int, roots: list[bytes]) -> None:
        self.capacity = capacity
        self.inflight = [0] * size
        self.nodes: dict[int, _Node] = {}
        self.ready: list[tuple[int, Message]] = []  # (preferred rank or -1, message), taken last first
        self.directed: list[tuple[int, Message]] = []  # finishes: to the rank holding the listing
        self.roots_left = len(roots)
        self.last_id = 0
        for index, path in reversed(list(enumerate(roots))):
            node = self._node(index, (), path, None)
            self.ready.append((-1, ("list", node.id, -1, index, (), path)))

    def _node(self, root: int, components: tuple[bytes, ...], path: bytes, parent: _Node | None) -> _Node:
        self.last_id += 1
        node = _Node(self.last_id, root, components, path, parent)
        self.nodes[node.id] = node
        return node

    @property
    def done(self) -> bool:
        return self.roots_left == 0

    def handle(self, rank: int, message: Message) -> None:
        kind = message[0]
        if kind == "listed":
            _, nid, subdirs, pending, held = message
            self.inflight[rank] -= 1
            node = self.nodes[nid]
            node.owner = rank if held else -1
            node.pending |= pending
            node.remaining += len(subdirs)
            # Reversed so that the first listed subdirectory is taken first, near its parent's rank.
            for name in reversed(subdirs):
                child = self._node(node.root, (*node.components, name), os.path.join(node.path, name), node)
                self.ready.append((rank, ("list", child.id, nid, child.root, child.components, child.path)))
            self._done(node)
        elif kind == "chunk":
            _, nid, entries, raw, clashes = message
            node = self.nodes[nid]
            node.remaining += 1
            visit = ("visit", nid, -1, node.root, node.components, node.path, entries, raw, clashes)
            self.ready.append((-1, visit))
        elif kind in ("visited", "finished"):
            _, nid, pending = message
            self.inflight[rank] -= 1
            node = self.nodes[nid]
            node.pending |= pending
            if kind == "visited":
                self._done(node)
            else:
                self._complete(node)
        else:
            raise AssertionError(f"unexpected message {kind!r} from rank {rank}")

    def _done(self, node: _Node) -> None:
        node.remaining -= 1
        if node.remaining:
            return
        if node.owner >= 0:
            self.inflight[node.owner] += 1
            message = ("finish", node.id, node.children, node.pending, node.parent is None)
            self.directed.append((node.owner, message))
        else:
            self._complete(node)

    def _complete(self, node: _Node) -> None:
        del self.nodes[node.id]
        parent = node.parent
        if parent is None:
            self.roots_left -= 1
            return
        parent.children[node.components[-1]] = node.pending
        parent.pending |= node.pending
        self._done(parent)

    def dispatch(self) -> Iterator[tuple[int, Message]]:
        """The messages to send now: every finish, and work for each rank below its capacity."""
        directed, self.directed = self.directed, []
        yield from directed
        inflight, capacity = self.inflight, self.capacity
        while self.ready:
            preferred, message = self.ready[-1]
            if preferred >= 0 and inflight[preferred] < capacity:
                rank = preferred
            else:
                rank = min(range(len(inflight)), key=inflight.__getitem__)
                if inflight[rank] >= capacity:
                    return
            self.ready.pop()
            inflight[rank] += 1
            yield rank, message


class DistributedWalker:
    """One rank's part of a distributed walk: its worker threads, and its main thread's message loop."""

    def __init__(
        self,
        dist: Distributed,
        visitor: Visitor,
        jobs: int,
        one_file_system: bool,
        gather: _GatherSink | None,
    ) -> None:
        self.dist = dist
        self.visitor = visitor
        self.jobs = max(1, jobs)
        self.one_file_system = one_file_system
        self.gather = gather
        #: A wide directory's chunks go out to every rank and thread, unless there is only one of them.
        self.spread = dist.size * self.jobs > 1
        #: The visitor takes names unparsed (`Listing.raw`): the native core's common case.
        self.raw = bool(getattr(visitor, "raw_names", False))
        self.tasks: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.held: dict[int, Listing] = {}
        self.lock = threading.Lock()
        self.roots: list[tuple[bytes, int]] = []
        self.requests: list[Any] = []
        if gather is not None:
            gather.ship = lambda batch, counted: self.outbox.put(("records", batch, counted))

    # -- the main thread ------------------------------------------------------------------------------

    def run(self, roots: list[tuple[bytes, int]]) -> None:
        """Walk `roots` (opened on this rank, the same on every rank; closed here). Collective."""
        self.roots = roots
        threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.jobs)]
        try:
            for thread in threads:
                thread.start()
            if self.dist.rank == 0:
                self._coordinate()
            else:
                self._serve()
            for _ in threads:
                self.tasks.put(None)
            for thread in threads:
                thread.join()
            for request in self.requests:
                request.wait()
        except BaseException as exc:  # a bug or an interrupt: the job goes down, a rerun finishes
            self.dist.crash(exc)
            raise
        finally:
            for _, fd in roots:
                os.close(fd)
            for listing in self.held.values():
                os.close(listing.fd)
            self.held.clear()

    def _coordinate(self) -> None:
        mpi = self.dist.MPI
        comm, tag_up = self.dist.comm, self.dist.TAG_UP
        # No work queued ahead of a rank's threads: with 16 directories for 4 ranks of 4 threads, one
        # more each would leave a rank with 5 (one thread doing 2 in turn) and another with 1.
        coordinator = _Coordinator(self.dist.size, self.jobs, [path for path, _ in self.roots])
        status = mpi.Status()
        idle = _MIN_IDLE
        while True:
            busy = False
            for rank, message in coordinator.dispatch():
                busy = True
                if rank == 0:
                    self.tasks.put(message)
                else:
                    self._send(message, rank, self.dist.TAG_DOWN)
            if coordinator.done:
                break
            while comm.iprobe(source=mpi.ANY_SOURCE, tag=tag_up, status=status):
                source = status.Get_source()
                message = comm.recv(source=source, tag=tag_up)
                busy = True
                self._up(coordinator, source, message)
            local = self._local(busy, idle)
            while local is not None:
                busy = True
                self._up(coordinator, 0, local)
                local = self._local(True, 0)
            idle = _MIN_IDLE if busy else min(idle * 2, _MAX_IDLE)
        for rank in range(1, self.dist.size):
            self._send(("stop",), rank, self.dist.TAG_DOWN)

    def _up(self, coordinator: _Coordinator, rank: int, message: Message) -> None:
        kind = message[0]
        if kind == "records":
            assert self.gather is not None  # noqa: S101 - records come only from a walk with a sink
            self.gather.deliver(message[1], message[2])
        elif kind == "crash":
            raise message[1]
        else:
            coordinator.handle(rank, message)

    def _serve(self) -> None:
        comm, tag_down = self.dist.comm, self.dist.TAG_DOWN
        idle = _MIN_IDLE
        while True:
            busy = False
            while (message := self._local(True, 0)) is not None:
                busy = True
                if message[0] == "crash":
                    raise message[1]
                self._send(message, 0, self.dist.TAG_UP)
            while comm.iprobe(source=0, tag=tag_down):
                message = comm.recv(source=0, tag=tag_down)
                busy = True
                if message[0] == "stop":
                    return
                self.tasks.put(message)
            local = self._local(busy, idle)
            if local is not None:
                if local[0] == "crash":
                    raise local[1]
                self._send(local, 0, self.dist.TAG_UP)
                busy = True
            idle = _MIN_IDLE if busy else min(idle * 2, _MAX_IDLE)

    def _local(self, nowait: bool, idle: float) -> Message | None:
        try:
            return self.outbox.get_nowait() if nowait else self.outbox.get(timeout=idle)
        except queue.Empty:
            return None

    def _send(self, message: Message, dest: int, tag: int) -> None:
        # Non-blocking: two ranks each sending the other a large batch must not wait on each other.
        self.requests.append(self.dist.comm.isend(message, dest=dest, tag=tag))
        if len(self.requests) > 64:
            self.requests = [r for r in self.requests if not r.test()[0]]

    # -- the worker threads ---------------------------------------------------------------------------

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            try:
                kind = task[0]
                if kind == "list":
                    self._list(*task[1:])
                elif kind == "visit":
                    self._visit(*task[1:])
                elif kind == "finish":
                    self._finish(*task[1:])
                else:
                    raise AssertionError(f"unexpected task {kind!r}")
            except BaseException as exc:
                self.outbox.put(("crash", exc))
                return

    def _report(self, message: Message) -> None:
        if self.gather is not None:
            self.gather.flush()  # this work's records travel before its result
        self.outbox.put(message)

    def _open(self, node: int, parent: int, root: int, components: tuple[bytes, ...]) -> tuple[int, bool] | None:
        """A descriptor of the directory (and whether it is ours to close), or None when it is on another
        file system and `one_file_system` holds. Raises OSError."""
        with self.lock:
            here = self.held.get(node)
            above = self.held.get(parent)
        if here is not None:
            return here.fd, False
        if not components:
            return os.dup(self.roots[root][1]), True
        if above is not None:
            start, names = above.fd, components[-1:]
        else:
            start, names = self.roots[root][1], components
        fd, owned = start, False
        try:
            for name in names:
                below = os.open(name, _DIR_FLAGS, dir_fd=fd)
                if owned:
                    os.close(fd)
                fd, owned = below, True
            if self.one_file_system:
                # The serial walk compares a directory with its parent; here the parent is re-opened
                # through the same components (`..` could lead anywhere).
                parent_dev = os.fstat(above.fd).st_dev if above is not None else self._dev_of_parent(root, components)
                if os.fstat(fd).st_dev != parent_dev:
                    os.close(fd)
                    return None
        except BaseException:
            if owned:
                os.close(fd)
            raise
        return fd, True

    def _dev_of_parent(self, root: int, components: tuple[bytes, ...]) -> int:
        fd, owned = self.roots[root][1], False
        try:
            for name in components[:-1]:
                below = os.open(name, _DIR_FLAGS, dir_fd=fd)
                if owned:
                    os.close(fd)
                fd, owned = below, True
            return os.fstat(fd).st_dev
        finally:
            if owned:
                os.close(fd)

    def _list(self, nid: int, parent: int, root: int, components: tuple[bytes, ...], path: bytes) -> None:
        try:
            opened = self._open(nid, parent, root, components)
        except OSError as exc:
            self.visitor.error(path, exc)
            self._report(("listed", nid, [], True, False))
            return
        if opened is None:
            self._report(("listed", nid, [], False, False))
            return
        fd = opened[0]
        try:
            listing = list_directory(fd, path, raw=self.raw)
        except OSError as exc:
            os.close(fd)
            self.visitor.error(path, exc)
            self._report(("listed", nid, [], True, False))
            return
        pending = False
        try:
            for part in chunks(listing, raw=self.raw):
                if listing.streamed and self.spread:
                    self.outbox.put(("chunk", nid, part.entries, part.raw, listing.clashes))
                else:
                    pending |= self.visitor.visit(part)
        except OSError as exc:  # a streamed directory could not be read again: report it, go on below
            self.visitor.error(path, exc)
            pending = True
        # Only the markers are needed to finish it; the rest is released now.
        listing.entries = [e for e in listing.entries if isinstance(e.parsed, DirMarker)]
        listing.raw = []
        with self.lock:
            self.held[nid] = listing
        self._report(("listed", nid, listing.subdirs, pending, True))

    def _visit(
        self,
        nid: int,
        parent: int,
        root: int,
        components: tuple[bytes, ...],
        path: bytes,
        entries: list[Entry],
        raw: list[bytes],
        clashes: dict[bytes, int],
    ) -> None:
        try:
            opened = self._open(nid, parent, root, components)
        except OSError as exc:
            self.visitor.error(path, exc)
            self._report(("visited", nid, True))
            return
        if opened is None:  # the directory was swapped for a mount point since it was listed
            self.visitor.error(path, OSError(0, "moved to another file system while being walked"))
            self._report(("visited", nid, True))
            return
        fd, owned = opened
        try:
            pending = self.visitor.visit(Listing(fd, path, entries, [], clashes, raw=raw))
        finally:
            if owned:
                os.close(fd)
        self._report(("visited", nid, pending))

    def _finish(self, nid: int, children: dict[bytes, bool], pending: bool, is_root: bool) -> None:
        with self.lock:
            listing = self.held.pop(nid)
        try:
            pending |= self.visitor.finish(listing, children)
            if is_root and (root_done := getattr(self.visitor, "root_done", None)):
                root_done(listing, pending)
        finally:
            os.close(listing.fd)
        self._report(("finished", nid, pending))
