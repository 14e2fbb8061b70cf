"""Finalize: walk the roots for temporaries, wait on the backend, commit what arrived, abort what did not."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from . import fastpath, interrupt
from .backends.base import Backend
from .backends.none import NoneBackend
from .engine import Settings, settle_dir_marker, settle_file, settle_legacy
from .errors import UsageError
from .nameformat import MARKER, DirMarker, LegacyName, TempName, Unrecognised, parse
from .policy import FINALIZE, Policy
from .report import Kind, Outcome, Record, Sink
from .walk import AnyPath, Listing, Visitor, open_roots, refuse_type, walk

if TYPE_CHECKING:
    from .axlsource import AxlIndex
    from .mpi import Distributed

DEFAULT_WAIT_TIMEOUT = 540.0  # below LSF's 600 s stage-out limit, leaving time to commit


#: Where a metadata call is microseconds of CPU: extra threads only add GIL hand-offs (on an
#: idle 2-core node, 100k temporaries on ext4 took 4.2 s with one worker, 7.7 s with 2, 14.7 s with 16).
LOCAL_FILE_SYSTEMS: Final = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "bcachefs", "zfs", "tmpfs", "ramfs"}
)
#: Elsewhere (Lustre, GPFS, BeeGFS, NFS, FUSE...) the time goes in waiting on calls in flight: on latfs
#: at 200 us per call 16 workers were 6-11x faster than the C floor, 8 workers 8x, 4 workers 3x; 32 added
#: nothing over 16 directories and 64 was slower (docs/performance.md).
PARALLEL_JOBS: Final = 16
#: With the native core the per-file work runs without the GIL, so threads use the cores on a local file
#: system too: 100k temporaries on ext4 (2 cores, load 2) took 1.05x the C floor with one worker and
#: 0.65x with two (docs/performance.md). Capped, having been measured on 2 cores only.
NATIVE_LOCAL_JOBS_MAX: Final = 8


def default_jobs(root_fds: Sequence[int] = (), *, native: bool = False) -> int:
    """Workers when none are asked for: 16 unless every root is on a local file system; there, one per
    core (at most 8) when the native core settles the files (`native`), else 1."""
    if root_fds and all(file_system_type(fd) in LOCAL_FILE_SYSTEMS for fd in root_fds):
        return min(len(os.sched_getaffinity(0)), NATIVE_LOCAL_JOBS_MAX) if native else 1
    return PARALLEL_JOBS


def file_system_type(fd: int) -> str | None:
    """The type of the file system holding the open directory `fd` ("ext4", "lustre", "fuse.latfs"),
    from /proc/self/mountinfo by device number; None when it cannot be told."""
    dev = os.fstat(fd).st_dev
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        return None
    return None


@dataclass
class FinalizeOptions:
    backend: Backend | None = None
    dry_run: bool = False
    fsync: bool = False
    jobs: int | None = 1  # None: default_jobs() for the roots
    one_file_system: bool = False
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    #: AXL state files, or directories searched for them (--axl-state): AXL's temporaries they name are
    #: settled from them (axlsource.py).
    axl_state: Sequence[AnyPath] = ()
    # Set by cleanup and status, not a finalize flag: what is done with each verdict (policy.py).
    policy: Policy = FINALIZE
    #: The ranks of an MPI job to spread the work over (`mpi.connect()`), or None for this process alone.
    mpi: Distributed | None = None


class Walker(Protocol):
    """`walk.walk`, or `mpi.Distributed.walk` to spread the same visits over the ranks of an MPI job."""

    def __call__(
        self, roots: list[tuple[bytes, int]], visitor: Visitor, *, jobs: int = 1, one_file_system: bool = False
    ) -> None: ...


def finalize(
    roots: Sequence[AnyPath],
    sink: Sink,
    options: FinalizeOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Commit or abort every temporary below `roots`, reporting exactly one `Record` each to `sink`.

    Raises `UsageError` for a missing root (before anything changes) and `BackendError` when the backend
    fails before any verdict could be reached.
    """
    opts = options or FinalizeOptions()
    backend = opts.backend or NoneBackend()
    dist = opts.mpi
    if dist is not None and opts.axl_state:
        # Each rank would settle only the entries of the directories it walks, and none could tell when a
        # state file's entries are all settled.
        raise UsageError(None, "--axl-state cannot be combined with --mpi (yet): run it in one process")
    log = progress or (lambda _m: None)
    opened = open_roots(roots) if dist is None else dist.open_roots(roots)
    try:
        axl = None
        if opts.axl_state:
            # Imported here: a plain finalize does not pay for the state-file reader's start-up.
            from .axlsource import AxlIndex, state_file_error_record  # noqa: PLC0415

            axl = AxlIndex.load(opts.axl_state, opened)
            # Each unreadable state file: one error line and one record (exit 4); the rest of the run
            # goes on, and none of the temporaries it may name is touched.
            for error in axl.errors:
                log(f"Error: {error}")
                sink(state_file_error_record(error))
        if opts.jobs is not None:
            jobs = opts.jobs
        else:
            native = fastpath.NATIVE and fastpath.acts(opts.policy, dry_run=opts.dry_run) and not opts.axl_state
            jobs = default_jobs([fd for _, fd in opened], native=native)
        if backend.uses_handles:
            if dist is None:
                handles = collect_handles(opened, legacy=opts.policy.legacy_handles, jobs=jobs)
                if axl is not None:
                    handles |= axl.handles()
                backend.wait(handles, opts.wait_timeout, log)
            else:  # one wait, on rank 0, for the handles every rank found
                handles = collect_handles(opened, legacy=opts.policy.legacy_handles, walker=dist.walk, jobs=jobs)
                backend = dist.wait_once(backend, handles, opts.wait_timeout, log)
        settings = Settings(backend, dry_run=opts.dry_run, fsync=opts.fsync, policy=opts.policy)
        visitor = FinalizeVisitor(settings, sink if dist is None else dist.sink(sink), axl=axl)
        (walk if dist is None else dist.walk)(
            _dup_roots(opened), visitor, jobs=jobs, one_file_system=opts.one_file_system
        )
        if axl is not None:
            axl.finish(settings, sink, log)
    finally:
        for _, fd in opened:
            os.close(fd)


def _dup_roots(opened: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    return [(path, os.dup(fd)) for path, fd in opened]


def collect_handles(
    opened: list[tuple[bytes, int]], *, legacy: bool = False, walker: Walker = walk, jobs: int = 1
) -> set[int]:
    """The transfer handles named by the temporaries below the roots (one read-only pass, with `jobs`
    workers as the walk after it: on a parallel file system the listing is the cost); with `legacy`,
    those of legacy AXL temporaries too (cleanup must not delete one whose transfer still runs). With an
    MPI `walker`, each rank's share of them."""
    handles: set[int] = set()
    kinds = (TempName, LegacyName) if legacy else (TempName,)

    class _Collect:
        def visit(self, listing: Listing) -> bool:
            for entry in listing.entries:
                if isinstance(entry.parsed, kinds) and entry.parsed.handle is not None:
                    handles.add(entry.parsed.handle)
            return False

        def finish(self, listing: Listing, pending_children: dict[bytes, bool]) -> bool:
            return False

        def error(self, path: bytes, exc: OSError) -> None:
            pass

    walker(_dup_roots(opened), _Collect(), jobs=jobs)
    return handles


class FinalizeVisitor:
    """Settles each directory's temporaries as the walk reaches it, and its markers once it is finished."""

    def __init__(self, settings: Settings, sink: Sink, *, axl: AxlIndex | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.axl = axl
        # A legacy temporary is never deleted while a state file that may name it could not be read.
        self.legacy_refused = "a state file given could not be read and may name it" if axl and axl.errors else None
        # A plain acting finalize (no AXL state files) settles the common case in the native core
        # (fastpath); the walk then leaves those names unparsed (`Listing.raw`) and the engine gets what
        # the core gives back.
        self.native = None if axl is not None else fastpath.settler(settings, sink)
        self.raw_names = self.native is not None

    def visit(self, listing: Listing) -> bool:
        pending = committed = False
        entries = listing.entries
        if listing.raw and self.native is not None:
            interrupt.check()  # the native core settles a chunk at once: a signal stops between chunks
            entries, committed = self.native.settle(listing)
        clashes = listing.clashes  # over the whole directory, also when it comes in chunks
        prefix = os.path.join(listing.path, b"")  # then one concatenation per entry, not a posixpath.join
        # Looked up once per directory, not once per temporary: this loop runs once per temporary.
        settings, sink, dfd = self.settings, self.sink, listing.fd
        holds, done = self.settings.policy.holds_directory, Outcome.COMMITTED
        axl = None if self.axl is None else self.axl.directory(listing.path)
        for entry in entries:
            interrupt.check()  # between two temporaries: a signal never cuts one's settling short
            parsed = entry.parsed
            if isinstance(parsed, DirMarker):
                continue
            path = prefix + entry.name
            if axl is not None and (item := axl.names.get(entry.name)) is not None:
                assert self.axl is not None  # noqa: S101 - axl comes from it
                if (settled := self.axl.settle_listed(dfd, entry, path, item, settings)) is None:
                    continue  # a final written without AXL's extension: checked with the rest, in finish
                record = settled
            elif axl is not None and entry.name in axl.finals:
                record = self.axl.claimed_final(axl, path)  # type: ignore[union-attr]
            elif isinstance(parsed, TempName):
                if why := refuse_type(entry):
                    final = os.path.join(listing.path, parsed.final)
                    record = Record(
                        path=path,
                        kind=Kind.FILE,
                        outcome=Outcome.LEFT,
                        reason=f"{why}: refused",
                        final=final,
                        mode=parsed.mode,
                    )
                elif parsed.final in clashes:
                    n = clashes[parsed.final]
                    final = os.path.join(listing.path, parsed.final)
                    reason = f"{n} temporaries for one final name"
                    record = Record(path=path, kind=Kind.FILE, outcome=Outcome.LEFT, reason=reason, final=final)
                else:
                    record = settle_file(dfd, entry.name, path, parsed, settings)
            elif isinstance(parsed, LegacyName):
                refused = refuse_type(entry) or self.legacy_refused
                record = settle_legacy(dfd, entry.name, path, parsed, settings, refused=refused)
            elif isinstance(parsed, Unrecognised):
                reason = f"unrecognised name: {parsed.reason}"
                record = Record(path=path, kind=Kind.UNRECOGNISED, outcome=Outcome.SKIPPED, reason=reason)
            if holds(record):
                pending = True
            committed |= record.outcome is done
            sink(record)
        if committed and self.settings.fsync and not self.settings.dry_run:
            # One directory fsync after all its renames (Syncthing batches them too): each file was
            # fsynced before its rename, so a crash before this loses only renames, which a rerun redoes.
            try:
                os.fsync(listing.fd)
            except OSError as exc:
                # The renames are done but perhaps not durable: report it (exit 4) and keep the markers
                # above waiting, rather than stop the walk with every other temporary unreported.
                reason = f"directory fsync failed: {exc.strerror or exc}"
                self.sink(Record(path=listing.path, kind=Kind.DIR, outcome=Outcome.LEFT, reason=reason))
                pending = True
        return pending

    def finish(self, listing: Listing, pending_children: dict[bytes, bool]) -> bool:
        pending = False
        if self.axl is not None and (axl := self.axl.directory(listing.path)) is not None:
            # State-file entries the listing did not show: temporaries gone (or never come), and finals
            # written without AXL's extension.
            pending = self.axl.settle_rest(listing.fd, listing.path, axl, self.settings, self.sink)
        for entry in listing.entries:
            if not isinstance(entry.parsed, DirMarker):
                continue
            path = os.path.join(listing.path, entry.name)
            if why := refuse_type(entry):
                final = os.path.join(listing.path, entry.parsed.final)
                reason = f"marker {why}: refused"
                record = Record(path=path, kind=Kind.DIR, outcome=Outcome.LEFT, reason=reason, final=final)
            else:
                below = pending_children.get(entry.parsed.final, False)
                record = settle_dir_marker(
                    listing.fd, entry.name, path, entry.parsed, self.settings, pending_below=below
                )
            pending |= self.settings.policy.holds_directory(record)
            self.sink(record)
        return pending

    def error(self, path: bytes, exc: OSError) -> None:
        reason = f"directory cannot be read: {exc.strerror or exc}"
        self.sink(Record(path=path, kind=Kind.DIR, outcome=Outcome.LEFT, reason=reason))

    def root_done(self, listing: Listing, pending: bool) -> None:
        """Apply the marker of a root that pre-stage created (``prestage -r src dst`` makes dst).

        Its marker lives in the root's parent: the one entry outside the roots finalize reads or
        removes, and only when it names the very directory that was walked (same device and inode).
        """
        parent = os.path.dirname(os.path.abspath(listing.path))
        base = os.path.basename(os.path.abspath(listing.path))
        try:
            pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            here = os.fstat(listing.fd)
            there = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
                return
            for name in os.listdir(pfd):
                bname = os.fsencode(name)
                if not bname.startswith(base + MARKER):
                    continue
                parsed = parse(bname)
                if isinstance(parsed, DirMarker) and parsed.final == base:
                    path = os.path.join(_shown_parent(listing.path, parent), bname)
                    self.sink(settle_dir_marker(pfd, bname, path, parsed, self.settings, pending_below=pending))
        except OSError:
            return
        finally:
            os.close(pfd)


def _shown_parent(root: bytes, absolute_parent: bytes) -> bytes:
    """The root's parent as the user would write it from what they typed (``out`` for ``out/run42``),
    so that reports name the root's marker like everything else below the root."""
    typed = os.path.normpath(root)
    if typed == b".":
        return b".."
    if os.path.basename(typed) in (b"", b".."):
        return absolute_parent
    return os.path.dirname(typed)
