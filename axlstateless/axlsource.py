"""AXL state files as a source of expected metadata: AXL's own temporaries, settled by the same engine.

AXL (docs/axl.md) writes each file to ``<final>._AXL`` (``._AXL<handle>`` for IBM BB transfers) when its
extension is on, or straight to the final name when it is off (its default), and records in a state
file, per file, the DEST it wrote and the source's size, mode, owner and times. Nothing in the name of
an AXL temporary verifies it, so the state file is the only source of truth: a legacy temporary that no
state file names is never committed and never deleted blind (`engine.settle_legacy`).

The state files are read up front, once (`AxlIndex.load`), and their entries indexed by directory, so
that the tree walk settles them in the same pass as our own temporaries: one process for any number
of state files. Each entry whose DEST lies below a root is, in the directory that holds it:

- a temporary on disk (AXL's extension): settled by `engine.settle_file` from an `AxlTarget` (size
  verified against SIZE, then as root the owner within `ownership`'s rules, then the 07777 bits of MODE,
  then atime and mtime, then the rename to the final name AXL would compute); deleted when its size
  does not verify, its transfer failed, or AXL marked the file failed (per-file STATUS 4);
- a temporary no longer on disk: done already when the final name holds a file of SIZE bytes, else its
  data never arrived (reported, nothing to delete);
- written without the extension (DEST is the final name): its size is checked; a short one is reported
  incomplete and left (it cannot be told from a complete file by its name, so it is never deleted).

A DEST is matched to the walk by its path, lexically (``..`` and ``.`` resolved, symbolic links not),
relative paths against the current directory as AXL would resolve them on a rerun: the walk never
follows a symbolic link, so a DEST reached through one is never found and is reported as not reached.
A state file whose every entry ended settled is removed, as ``AXL_Free`` does; one left with work
stays for the rerun.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

from .axlstate import STATUS_ERROR, AxlFile, AxlTransfer, find_state_files, read_state_file, split_axl_name
from .backends.base import TransferState
from .engine import Settings, settle_file
from .errors import AxlError, NotAxlStateError, StateFileError, UsageError
from .metadata import Extras
from .policy import Policy, Seen
from .report import Kind, Outcome, Record, Sink
from .source import Expected
from .verdict import Action
from .walk import AnyPath, Entry, refuse_type

_HANDLE_LIMIT: Final = 2**64
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

NEVER_ARRIVED: Final = "never arrived: no temporary and no final file (AXL had not started it)"
ALREADY_DONE: Final = "no temporary: the final name already holds a file of the recorded size (committed earlier)"
OUTSIDE: Final = "outside the given roots: left alone (give its root to settle it)"


@dataclass(frozen=True, slots=True)
class AxlTarget:
    """What one AXL state-file entry says its temporary must become (an `Expected`)."""

    final: bytes  # the final name, in the temporary's directory
    mode: int  # the 07777 bits of the recorded st_mode
    size: int
    mtime_ns: int | None
    atime_ns: int | None
    uid: int | None
    gid: int | None
    handle: int | None  # the transfer's IBM BB handle
    failed: bool  # AXL marked this file failed (its STATUS 4)


class AxlSource:
    """The `source.Source` of AXL temporaries: everything comes from the state-file entry."""

    kind: ClassVar[Kind] = Kind.AXL

    def extras(self, expected: Expected, fd: int, st: os.stat_result, *, readable: bool) -> Extras:
        if not isinstance(expected, AxlTarget):  # pragma: no cover - the index pairs them
            raise TypeError(expected)
        return Extras(atime_ns=expected.atime_ns, uid=expected.uid, gid=expected.gid)

    def preverdict(self, expected: Expected) -> tuple[Action, str] | None:
        if isinstance(expected, AxlTarget) and expected.failed:
            return Action.ABORT, "AXL marked this file failed (its STATUS 4)"
        return None


AXL_SOURCE: Final = AxlSource()


@dataclass(eq=False)
class StateFile:
    """One state file read whole, with how many of its entries are not settled yet."""

    path: bytes
    transfer: AxlTransfer
    st: os.stat_result  # as read: a state file rewritten since is not removed
    unsettled: int = 0
    outside: int = 0


@dataclass(eq=False)
class Item:
    """One state-file entry below a root, in the directory `AxlDir` that holds its DEST."""

    dest: bytes  # as recorded
    name: bytes  # DEST's last component: the temporary, or the final when written without the extension
    state: StateFile
    target: AxlTarget | None  # None when `refusal` says why it cannot be settled
    with_extension: bool
    refusal: str | None = None
    done: bool = False


@dataclass(eq=False)
class AxlDir:
    """The state-file entries of one directory below a root."""

    root_fd: int
    rel: bytes  # the directory, relative to its root (b"" for the root itself)
    names: dict[bytes, Item] = field(default_factory=dict)  # by DEST's last component
    finals: set[bytes] = field(default_factory=set)  # final names of the temporaries in `names`
    items: list[Item] = field(default_factory=list)
    visited: bool = False


class AxlIndex:
    """Every entry of the given state files, by the directory (lexical path) that holds its DEST."""

    def __init__(self) -> None:
        self.dirs: dict[bytes, AxlDir] = {}
        self.state_files: list[StateFile] = []
        self.errors: list[StateFileError] = []
        self.outside: list[tuple[Item, bytes]] = []
        self._lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, paths: Sequence[AnyPath], roots: Sequence[tuple[bytes, int]]) -> AxlIndex:
        """Read every state file named by or found below `paths` (by the kvtree magic), for the opened
        `roots`. A state file that cannot be read whole is kept in `errors` (none of its entries is
        used); raises `UsageError` for a path that does not exist at all."""
        index = cls()
        prefixes = _root_prefixes(roots)
        for path in _existing(paths):
            for found in find_state_files([path], on_error=index.errors.append):
                try:
                    st = os.stat(found, follow_symlinks=False)
                    transfer = read_state_file(found)
                except NotAxlStateError as exc:
                    # SCR keeps kvtree files of its own beside AXL's: skipped when a directory search met
                    # one, an error only when the user named it.
                    if found == path:
                        index.errors.append(exc)
                    continue
                except StateFileError as exc:
                    index.errors.append(exc)
                    continue
                except OSError as exc:
                    index.errors.append(StateFileError(found, exc.strerror or str(exc)))
                    continue
                index._add(StateFile(found, transfer, st), prefixes)
        return index

    def _add(self, state: StateFile, prefixes: list[tuple[bytes, bytes, int]]) -> None:
        self.state_files.append(state)
        transfer = state.transfer
        for entry in transfer.files:
            dest = os.path.normpath(os.path.abspath(entry.dest))
            below = _below(dest, prefixes)
            item = _item(entry, state, transfer)
            state.unsettled += 1
            if below is None:
                state.outside += 1
                self.outside.append((item, dest))
                continue
            key, root_fd, rel = below
            directory = self.dirs.get(key)
            if directory is None:
                directory = self.dirs[key] = AxlDir(root_fd, rel)
            directory.items.append(item)
            other = directory.names.get(item.name)
            if other is not None:
                clash = f"{os.fsdecode(item.dest)!r} is named by more than one state-file entry: refused"
                other.refusal = item.refusal = clash
                continue
            directory.names[item.name] = item
            if item.with_extension and item.target is not None:
                directory.finals.add(item.target.final)

    def handles(self) -> set[int]:
        """The IBM BB handles of the transfers with an entry below a root."""
        return {
            item.target.handle
            for d in self.dirs.values()
            for item in d.items
            if item.target is not None and item.target.handle is not None
        }

    # -- settling, called by the walk's visitor ------------------------------------------------------

    def directory(self, listing_path: bytes) -> AxlDir | None:
        if not self.dirs:
            return None
        found = self.dirs.get(os.path.normpath(os.path.abspath(listing_path)))
        if found is not None:
            found.visited = True
        return found

    def settle_listed(self, dfd: int, entry: Entry, path: bytes, item: Item, settings: Settings) -> Record | None:
        """Settle the entry whose DEST is the listed `entry`; None when it is to be judged by `settle_rest`
        (a final name written without the extension)."""
        if not item.with_extension and item.refusal is None:
            return None
        if item.refusal is not None:
            record = _record(path, Outcome.LEFT, item.refusal, item)
        elif why := refuse_type(entry):
            record = _record(path, Outcome.LEFT, f"{why}: refused", item)
        else:
            assert item.target is not None  # noqa: S101 - no refusal means a target
            record = settle_file(dfd, entry.name, path, item.target, settings, AXL_SOURCE)
        self._done(item, record, settings.policy)
        return record

    def settle_rest(self, dfd: int | None, dirpath: bytes, directory: AxlDir, settings: Settings, sink: Sink) -> bool:
        """Settle the entries of `directory` the listing did not show (`dfd` None: the directory does not
        exist); True when one of them leaves work pending in it."""
        pending = False
        for item in directory.items:
            if item.done:
                continue
            record = _settle_unlisted(dfd, os.path.join(dirpath, item.name), item, settings)
            self._done(item, record, settings.policy)
            pending |= settings.policy.holds_directory(record)
            sink(record)
        return pending

    def claimed_final(self, directory: AxlDir, path: bytes) -> Record:
        reason = "the final name of an AXL temporary a state file names: not a temporary, left as it is"
        return Record(path=path, kind=Kind.AXL, outcome=Outcome.SKIPPED, reason=reason)

    def _done(self, item: Item, record: Record, policy: Policy) -> None:
        item.done = True
        if not policy.holds_directory(record):
            with self._lock:
                item.state.unsettled -= 1

    # -- after the walk ------------------------------------------------------------------------------

    def finish(self, settings: Settings, sink: Sink, log: Callable[[str], None]) -> None:
        """Settle what the walk did not reach, report the entries outside the roots, and remove every
        state file whose entries all ended settled (not in a dry run, never for status)."""
        for key, directory in self.dirs.items():
            if directory.visited or all(item.done for item in directory.items):
                continue
            if why := _unreachable(directory.root_fd, directory.rel):
                for item in directory.items:
                    if not item.done:
                        record = _record(os.path.join(key, item.name), Outcome.LEFT, why, item)
                        self._done(item, record, settings.policy)
                        sink(record)
                continue
            self.settle_rest(None, key, directory, settings, sink)
        for item, dest in self.outside:
            sink(_record(dest, Outcome.SKIPPED, OUTSIDE, item))
        if settings.dry_run or not settings.policy.acts:
            return
        for state in self.state_files:
            if state.unsettled == 0:
                if problem := _remove_state_file(state):
                    sink(Record(path=state.path, kind=Kind.STATE_FILE, outcome=Outcome.LEFT, reason=problem))
                else:
                    log(f"{os.fsdecode(state.path)}: every entry settled, state file removed (as AXL_Free does)")


def _existing(paths: Sequence[AnyPath]) -> Iterable[AnyPath]:
    for path in paths:
        bpath = os.fsencode(path)
        if os.path.lexists(bpath):
            yield bpath
            continue
        parent = os.path.dirname(bpath) or b"."
        if not os.path.isdir(parent):
            raise UsageError(bpath, "no such state file or directory")
        # A state file removed by an earlier run once all its entries were settled: nothing left to do,
        # and a rerun of the same command must finish, not fail.


def _root_prefixes(roots: Sequence[tuple[bytes, int]]) -> list[tuple[bytes, bytes, int]]:
    """(prefix, the root's lexical path, its fd) for each spelling of each root: as given (made absolute)
    and with its symbolic links resolved, longest first, so the deepest root claims an entry."""
    out: list[tuple[bytes, bytes, int]] = []
    for path, fd in roots:
        lexical = os.path.normpath(os.path.abspath(path))
        for prefix in {lexical, os.path.realpath(path)}:
            out.append((prefix, lexical, fd))
    out.sort(key=lambda p: len(p[0]), reverse=True)
    return out


def _below(dest: bytes, prefixes: list[tuple[bytes, bytes, int]]) -> tuple[bytes, int, bytes] | None:
    """(the lexical directory key, the root's fd, the directory relative to the root) of `dest`."""
    for prefix, lexical, fd in prefixes:
        start = prefix if prefix.endswith(b"/") else prefix + b"/"
        if dest.startswith(start) and len(dest) > len(start):
            rel_dir = os.path.dirname(dest[len(start) :])
            return (os.path.join(lexical, rel_dir) if rel_dir else lexical), fd, rel_dir
    return None


def _item(entry: AxlFile, state: StateFile, transfer: AxlTransfer) -> Item:
    """The `Item` of one entry, with its `AxlTarget`, or with the reason it cannot be settled."""
    dest = entry.dest
    name = os.path.basename(dest)
    if not name or name in (b".", b".."):
        return Item(dest, name or dest, state, None, False, "DEST does not name a file: refused")
    with_extension = transfer.use_extension
    final = name
    handle = transfer.handle
    if with_extension:
        split = split_axl_name(name)
        if split is None or not split[0] or split[0] in (b".", b".."):
            return Item(dest, name, state, None, True, "recorded with AXL's extension, but DEST has none: refused")
        final, extra = split
        if extra:
            if not extra.isdigit() or len(extra) > 20 or int(extra) >= _HANDLE_LIMIT:
                return Item(dest, name, state, None, True, "DEST's extension is not AXL's (._AXL[handle]): refused")
            if handle is not None and int(extra) != handle:
                why = f"DEST names handle {int(extra)} but the transfer's handle is {handle}: refused"
                return Item(dest, name, state, None, True, why)
            handle = int(extra)
    if entry.size is None or entry.mode is None:
        why = "the record has no SIZE or no MODE: nothing to verify a commit against"
        return Item(dest, name, state, None, with_extension, why)
    if entry.mode and not stat.S_ISREG(entry.mode) and stat.S_IFMT(entry.mode):
        return Item(dest, name, state, None, with_extension, "the record's MODE is not a regular file's: refused")
    owner = state.st.st_uid
    if owner not in (0, entry.uid):
        # A user's state file speaks only for that user's files: otherwise root, reading it, would change
        # the mode and times of another user's temporary (and rename it) on that user's word.
        why = f"the state file belongs to uid {owner} but its record names uid {entry.uid}: refused"
        return Item(dest, name, state, None, with_extension, why)
    target = AxlTarget(
        final=final,
        mode=stat.S_IMODE(entry.mode),
        size=entry.size,
        mtime_ns=entry.mtime_ns,
        atime_ns=entry.atime_ns,
        uid=entry.uid,  # the temporary must belong to it (ownership.refusal): a file is never given away
        gid=entry.gid,
        handle=handle,
        failed=entry.status == STATUS_ERROR,
    )
    return Item(dest, name, state, target, with_extension)


def _record(path: bytes, outcome: Outcome, reason: str, item: Item, **fields: object) -> Record:
    target = item.target
    return Record(
        path=path,
        kind=Kind.AXL,
        outcome=outcome,
        reason=reason,
        final=None if target is None else os.path.join(os.path.dirname(path), target.final),
        mode=None if target is None else target.mode,
        size=None if target is None else target.size,
        mtime_ns=None if target is None else target.mtime_ns,
        handle=None if target is None else target.handle,
        **fields,  # type: ignore[arg-type]
    )


def _settle_unlisted(dfd: int | None, path: bytes, item: Item, settings: Settings) -> Record:
    """An entry whose DEST the listing did not show: its temporary is gone (or never came), or it was
    written without the extension and DEST is the final name, to be checked in place."""
    if item.refusal is not None or item.target is None:
        return _record(path, Outcome.LEFT, item.refusal or "refused", item)
    target = item.target
    policy = settings.policy
    seen = Seen()
    transfer = settings.backend.status(target.handle)

    def record(outcome: Outcome, reason: str, *, in_progress: bool = False) -> Record:
        extra = policy.annotate(Kind.AXL, outcome, seen)
        return _record(path, outcome, reason, item, transfer=transfer.detail, in_progress=in_progress, extra=extra)

    if transfer.state is TransferState.IN_PROGRESS:
        outcome, reason, in_progress = policy.in_transfer(seen)
        return record(outcome, reason, in_progress=in_progress)
    st: os.stat_result | None = None
    if dfd is not None:
        try:
            fd = os.open(target.final, _OPEN_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return record(Outcome.LEFT, "the final name is a symbolic link: refused")
            return record(Outcome.LEFT, f"the final name cannot be opened: {exc.strerror}")
        else:
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
    if st is None:
        # Nothing on disk: for cleanup, only once the state file itself is old enough (a live AXL may be
        # about to write it); status annotates its age.
        if held := policy.hold(seen, item.state.st):
            return record(Outcome.SKIPPED, held)
        return record(Outcome.ABORTED, NEVER_ARRIVED)
    if not stat.S_ISREG(st.st_mode):
        return record(Outcome.LEFT, "the final name is not a regular file: refused")
    if item.with_extension:
        if st.st_size == target.size:
            return record(Outcome.SKIPPED, ALREADY_DONE)
        why = f"never arrived: no temporary (the final name holds another file of size {st.st_size}, left as it is)"
        return record(Outcome.ABORTED, why)
    if st.st_size == target.size:
        return record(
            Outcome.SKIPPED, "written without AXL's extension: the final file is in place and its size verifies"
        )
    return record(
        Outcome.LEFT,
        f"incomplete under its final name: size {st.st_size}, expected {target.size} (written without AXL's "
        "extension, so it cannot be told from a complete file by its name: never deleted; the state file is kept)",
    )


def _unreachable(root_fd: int, rel: bytes) -> str | None:
    """Why the directory `rel` below the root, which the walk did not visit, cannot be looked at; None
    when it does not exist (its entries then never arrived). Reached one component at a time, never
    through a symbolic link."""
    fd = os.dup(root_fd)
    try:
        for part in (p for p in rel.split(b"/") if p):
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                why = (
                    "a symbolic link or not a directory" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
                )
                return f"its directory cannot be reached below the root ({os.fsdecode(part)}: {why}): left"
            os.close(fd)
            fd = sub
    finally:
        os.close(fd)
    return "its directory was not walked (another file system, or it could not be read): left"


def _remove_state_file(state: StateFile) -> str | None:
    """Unlink the state file if it is still the file that was read; the reason it was not, or None."""
    path = state.path
    parent = os.path.dirname(path) or b"."
    try:
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return f"every entry settled, but the state file cannot be removed: {exc.strerror}"
    try:
        name = os.path.basename(path)
        now = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        was = state.st
        if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (
            was.st_dev,
            was.st_ino,
            was.st_size,
            was.st_mtime_ns,
        ):
            return "every entry settled, but the state file changed since it was read: kept (rerun)"
        os.unlink(name, dir_fd=pfd)
    except FileNotFoundError:
        return None  # removed by another finalizer
    except OSError as exc:
        return f"every entry settled, but the state file cannot be removed: {exc.strerror}"
    finally:
        os.close(pfd)
    return None


def state_file_error_record(exc: AxlError) -> Record:
    """The record of a state file that cannot be read: left, its temporaries untouched."""
    reason = f"state file not read: {exc.reason}; its temporaries are left untouched"
    return Record(path=os.fsencode(exc.path or ""), kind=Kind.STATE_FILE, outcome=Outcome.LEFT, reason=reason)


__all__ = ["AXL_SOURCE", "AxlIndex", "AxlSource", "AxlTarget", "state_file_error_record"]
