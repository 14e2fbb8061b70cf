"""Commit or abort one temporary, acting only on an open file descriptor and names inside an open
directory descriptor (no path is ever resolved twice, no symlink followed).

The commit order is fixed by the promises:

1. open the temporary ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO must not block, a symlink is refused) and
   ``fstat`` the descriptor: only a regular file with one link is acted on (CVE-2017-18078: a hardlink to
   /etc/passwd), only one its owner may act on;
2. verify the size against the name;
3. as root, ``fchown`` to the expected group first, because chown clears set-uid/set-gid
   (AXL chmods first and loses them); then ``fchmod``; then ``futimens`` (mtime from the name, atime from
   the xattr), all on the descriptor;
4. with ``--fsync``, fsync the file before the rename (renameio: otherwise a crash can leave an empty
   file under the final name);
5. ``renameat`` within the directory: the final name appears only now, complete, with its mode and times.

An abort unlinks the temporary; the old final file, if any, stays.

Cleanup (issue 4) runs the same steps with an `OrphanPolicy` in `Settings`: after the ``fstat``, a
temporary that is not an orphan (too young, its transfer in progress) is skipped untouched; an orphan goes
through the same refusals and verdict, and is not deleted after all if the file was written to since
it was judged (its ctime or size moved).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from typing import Final, Protocol

from . import ownership
from .backends.base import Backend, TransferState, TransferStatus
from .metadata import Extras, read_extras
from .nameformat import DirMarker, LegacyName, TempName
from .orphan import BEING_WRITTEN, CONTENTS_PENDING, IN_TRANSFER, OrphanPolicy
from .report import Kind, Outcome, Record
from .verdict import Action, decide

_VANISHED: Final = "vanished: done by another process"
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS: Final = getattr(os, "O_PATH", 0o10000000) | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE: Final = Kind.FILE


@dataclass(frozen=True)
class Settings:
    """How to act: one per run, shared by every worker."""

    backend: Backend
    dry_run: bool = False
    fsync: bool = False
    euid: int = -1
    orphans: OrphanPolicy | None = None  # cleanup's policy (or, not acting, status's annotations)

    def __post_init__(self) -> None:
        if self.euid == -1:
            object.__setattr__(self, "euid", os.geteuid())


def settle_file(dfd: int, name: bytes, path: bytes, tn: TempName, settings: Settings) -> Record:
    """Commit, abort or leave the file temporary `name` in directory `dfd`; never raises OSError.

    With an acting orphan policy (cleanup) a temporary that is not an orphan is skipped untouched, and
    with ``delete_only`` a complete one is deleted instead of committed.
    """
    transfer = settings.backend.status(tn.handle)
    policy = settings.orphans
    seen = _Seen()

    # The walk passes `path` as dir/name: slicing is cheaper than dirname and join, once per temporary.
    if path.endswith(name):
        final = path[: len(path) - len(name)] + tn.final
    else:
        final = os.path.join(os.path.dirname(path), tn.final)

    def record(outcome: Outcome, reason: str, *, in_progress: bool = False) -> Record:
        # Positional: one record per temporary, and keywords cost more to pass (issue 6).
        return Record(
            path,
            _FILE,
            outcome,
            reason,
            final,
            tn.mode,
            tn.size,
            tn.mtime_ns,
            tn.handle,
            transfer.detail,
            in_progress,
            None if policy is None else policy.annotate(_FILE, outcome, seen.age_ns, seen.waiting),
        )

    if transfer.state is TransferState.IN_PROGRESS:
        if policy is not None:
            seen.age_ns, seen.waiting = _age_by_name(dfd, name, policy), IN_TRANSFER
            if policy.act:
                return record(Outcome.SKIPPED, policy.why_not(seen.waiting, seen.age_ns))
        return record(Outcome.LEFT, "transfer still in progress", in_progress=True)
    opened = _open_and_check(dfd, name, settings, seen, record, skip_waiting=policy is not None and policy.act)
    if isinstance(opened, Record):
        return opened
    fd, st, extras = opened.fd, opened.st, opened.extras
    try:
        action, why = decide(transfer, expected_size=tn.size, actual_size=st.st_size)
        if action is Action.COMMIT and policy is not None and policy.act and policy.delete_only:
            action, why = Action.ABORT, "complete, but deleted without commit (--delete-only)"
        if action is Action.ABORT:
            if not settings.dry_run and not _unlink_same(dfd, name, st, unchanged=policy is not None):
                seen.waiting = BEING_WRITTEN
                return record(Outcome.SKIPPED, "not an orphan: written to while being judged")
            return record(Outcome.ABORTED, why)
        return _commit(dfd, fd, opened.via_path, name, tn, st, extras.atime_ns, extras.gid, settings, record, why)
    except FileNotFoundError:
        # Only the temporary's own name can be missing here: another process committed or aborted it.
        return record(Outcome.SKIPPED, _VANISHED)
    except OSError as exc:
        return record(Outcome.LEFT, f"{exc.strerror or exc}")
    finally:
        os.close(fd)


def _commit(
    dfd: int,
    fd: int,
    via_path: bool,
    name: bytes,
    tn: TempName,
    st: os.stat_result,
    atime_ns: int | None,
    gid: int | None,
    settings: Settings,
    record: _RecordFn,
    why: str,
) -> Record:
    as_root = settings.euid == 0
    target = f"/proc/self/fd/{fd}" if via_path else fd
    new_gid = st.st_gid
    if as_root and gid is not None and gid != st.st_gid:
        new_gid = gid
    mode = ownership.safe_mode(tn.mode, st.st_uid, new_gid, as_root=as_root)
    reason = why
    if mode != tn.mode:
        dropped = f"set-uid/set-gid dropped (mode {mode:04o}, not {tn.mode:04o}): root never grants them from a name"
        reason = f"{why}; {dropped}" if why else dropped
    # The final name is looked at only when its owner matters (root committing a user's file) or a dry
    # run must predict the rename: otherwise renameat itself refuses a directory (EISDIR), and the
    # fstatat was one call in seven per temporary (issue 6).
    final_st: os.stat_result | None = None
    if settings.dry_run or (as_root and st.st_uid != 0):
        with contextlib.suppress(FileNotFoundError):
            final_st = os.stat(tn.final, dir_fd=dfd, follow_symlinks=False)
    if final_st is not None and stat.S_ISDIR(final_st.st_mode):
        return record(Outcome.LEFT, "the final name is a directory")
    if as_root and final_st is not None and st.st_uid not in (0, final_st.st_uid):
        return record(
            Outcome.LEFT, f"would replace a file owned by uid {final_st.st_uid} with one owned by uid {st.st_uid}"
        )
    if settings.dry_run:
        return record(Outcome.COMMITTED, reason)
    if new_gid != st.st_gid:
        os.chown(target, -1, new_gid)
    if via_path:
        os.chmod(target, mode)
    else:
        os.fchmod(fd, mode)
    os.utime(target, ns=(st.st_atime_ns if atime_ns is None else atime_ns, tn.mtime_ns))
    if settings.fsync and not via_path:
        os.fsync(fd)
    try:
        os.rename(name, tn.final, src_dir_fd=dfd, dst_dir_fd=dfd)
    except FileNotFoundError:
        return record(Outcome.SKIPPED, "vanished before the rename: done by another process")
    except IsADirectoryError:
        return record(Outcome.LEFT, "the final name is a directory")
    return record(Outcome.COMMITTED, reason)


def settle_dir_marker(
    dfd: int, name: bytes, path: bytes, dm: DirMarker, settings: Settings, *, pending_below: bool
) -> Record:
    """Give a directory pre-stage created its source's mode and mtime, then remove its marker.

    The marker lives in the parent, so applying the directory's mtime and then unlinking the marker
    leaves the directory's own mtime alone, and a crash in between is repaired by a rerun.
    """
    final = os.path.join(os.path.dirname(path), dm.final)
    policy = settings.orphans
    age_ns: int | None = None
    waiting: str | None = None

    def record(outcome: Outcome, reason: str) -> Record:
        extra = None if policy is None else policy.annotate(Kind.DIR, outcome, age_ns, waiting)
        return Record(path, Kind.DIR, outcome, reason, final=final, mode=dm.mode, mtime_ns=dm.mtime_ns, extra=extra)

    if pending_below:
        if policy is not None and policy.act:
            # Cleanup: what is below is not an orphan yet (or was reported left); the marker waits with it.
            waiting = CONTENTS_PENDING
            return record(Outcome.SKIPPED, policy.why_not(waiting, None))
        return record(Outcome.LEFT, "the directory still holds unfinished temporaries")
    try:
        mfd = os.open(name, _PATH_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        return record(Outcome.SKIPPED, "vanished: done by another process")
    except OSError as exc:
        return record(Outcome.LEFT, f"marker cannot be opened: {exc.strerror}")
    try:
        mst = os.fstat(mfd)
    except OSError as exc:
        return record(Outcome.LEFT, f"marker cannot be read: {exc.strerror}")
    finally:
        os.close(mfd)
    if mst.st_nlink == 0:
        return record(Outcome.SKIPPED, _VANISHED)
    if problem := _file_problem(mst):
        return record(Outcome.LEFT, f"marker {problem}")
    if policy is not None:
        age_ns = policy.age_ns(mst)
        waiting = policy.waiting(in_transfer=False, age_ns=age_ns)
        if waiting and policy.act:
            return record(Outcome.SKIPPED, policy.why_not(waiting, age_ns))
    try:
        fd = os.open(dm.final, _DIR_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        if not settings.dry_run:
            try:
                _unlink_same(dfd, name, mst)
            except FileNotFoundError:
                return record(Outcome.SKIPPED, _VANISHED)
            except OSError as exc:
                return record(Outcome.LEFT, f"marker cannot be removed: {exc.strerror}")
        return record(Outcome.ABORTED, "the directory no longer exists")
    except OSError as exc:
        reason = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        return record(Outcome.LEFT, f"directory cannot be opened: {reason}")
    try:
        st = os.fstat(fd)
        if settings.euid not in {0, st.st_uid}:
            return record(Outcome.LEFT, f"directory owned by uid {st.st_uid}, not by this user")
        if mst.st_uid != st.st_uid:
            return record(Outcome.LEFT, f"marker owned by uid {mst.st_uid} but the directory by uid {st.st_uid}")
        mode = ownership.safe_mode(dm.mode, st.st_uid, st.st_gid, as_root=settings.euid == 0, directory=True)
        if not settings.dry_run:
            os.fchmod(fd, mode)
            os.utime(fd, ns=(st.st_atime_ns, dm.mtime_ns))
            if settings.fsync:
                os.fsync(fd)
            _unlink_same(dfd, name, mst)
        return record(Outcome.COMMITTED, "")
    except FileNotFoundError:  # the marker went while we worked: another process applied it
        return record(Outcome.SKIPPED, _VANISHED)
    except OSError as exc:
        return record(Outcome.LEFT, exc.strerror or str(exc))
    finally:
        os.close(fd)


LEGACY_SKIPPED = "legacy AXL temporary: no mode or size to verify; never committed (cleanup removes it)"


def settle_legacy(
    dfd: int, name: bytes, path: bytes, ln: LegacyName, settings: Settings, *, refused: str | None = None
) -> Record:
    """A legacy AXL temporary (``<final>._AXL[handle]``): never committed, since nothing verifies it.

    Finalize (no orphan policy) skips it without opening it. Cleanup deletes it once it is an orphan,
    after the same refusals as a temporary of ours (`refused`: why its listed type already rules it
    out). Status reports finalize's skip, annotated with what cleanup would do.
    """
    final = os.path.join(os.path.dirname(path), ln.final)
    policy = settings.orphans
    transfer = None if policy is None else settings.backend.status(ln.handle)
    seen = _Seen()

    def record(outcome: Outcome, reason: str, *, in_progress: bool = False) -> Record:
        extra = None if policy is None else policy.annotate(Kind.LEGACY, outcome, seen.age_ns, seen.waiting)
        if policy is None or not policy.act:
            outcome, reason = Outcome.SKIPPED, LEGACY_SKIPPED
        detail = None if transfer is None else transfer.detail
        return Record(path, Kind.LEGACY, outcome, reason, final=final, handle=ln.handle, transfer=detail, extra=extra)

    if policy is None:
        return record(Outcome.SKIPPED, LEGACY_SKIPPED)
    if refused:
        return record(Outcome.LEFT, f"{refused}: refused")
    if transfer is not None and transfer.state is TransferState.IN_PROGRESS:
        seen.age_ns, seen.waiting = _age_by_name(dfd, name, policy), IN_TRANSFER
        return record(Outcome.SKIPPED, policy.why_not(seen.waiting, seen.age_ns))
    opened = _open_and_check(dfd, name, settings, seen, record, skip_waiting=True)
    if isinstance(opened, Record):
        return opened
    fd, st = opened.fd, opened.st
    try:
        if policy.act and not settings.dry_run and not _unlink_same(dfd, name, st, unchanged=True):
            seen.waiting = BEING_WRITTEN
            return record(Outcome.SKIPPED, "not an orphan: written to while being judged")
        return record(Outcome.ABORTED, "orphaned legacy AXL temporary: deleted (no mode or size to verify a commit)")
    except FileNotFoundError:
        # Only the temporary's own name can be missing here: another process committed or aborted it.
        return record(Outcome.SKIPPED, _VANISHED)
    except OSError as exc:
        return record(Outcome.LEFT, f"{exc.strerror or exc}")
    finally:
        os.close(fd)


def _age_by_name(dfd: int, name: bytes, policy: OrphanPolicy) -> int | None:
    # Only for the report: a temporary whose transfer runs is not opened, but its age is still shown.
    try:
        return policy.age_ns(os.stat(name, dir_fd=dfd, follow_symlinks=False))
    except OSError:
        return None


class _Seen:
    """What the orphan policy saw of a temporary, for its record's annotations."""

    __slots__ = ("age_ns", "waiting")

    def __init__(self) -> None:
        self.age_ns: int | None = None
        self.waiting: str | None = None


@dataclass(slots=True)
class _Opened:
    fd: int
    via_path: bool
    st: os.stat_result
    extras: Extras


def _open_and_check(
    dfd: int, name: bytes, settings: Settings, seen: _Seen, record: _RecordFn, *, skip_waiting: bool
) -> _Opened | Record:
    """Open a temporary (or a legacy one) and make the checks every kind shares: gone, not a regular
    file or hard-linked, not an orphan yet (cleanup), refused owner. A `Record` when it stops there (the
    descriptor closed), else the open descriptor, for the caller to act on and close."""
    try:
        fd, via_path = _open_temporary(dfd, name)
    except OSError as exc:
        return _open_failure(exc, record)
    try:
        st = os.fstat(fd)
        policy = settings.orphans
        if st.st_nlink == 0:  # unlinked by another finalizer (or cleanup) since we opened it
            done = record(Outcome.SKIPPED, _VANISHED)
        elif problem := _file_problem(st):
            done = record(Outcome.LEFT, problem)
        else:
            if policy is not None:
                # Judged on this descriptor's fstat, the inode about to be acted on, not on a listing.
                seen.age_ns = policy.age_ns(st)
                seen.waiting = policy.waiting(in_transfer=False, age_ns=seen.age_ns)
            if policy is not None and seen.waiting and skip_waiting:
                done = record(Outcome.SKIPPED, policy.why_not(seen.waiting, seen.age_ns))
            else:
                # Ownership first for a non-root user: another user's unreadable temporary is held by an
                # O_PATH descriptor, whose xattrs cannot be read (EBADF), and the true reason is that it
                # is not ours. Our own, unreadable since its final mode was applied before a crash, is
                # judged like one on a file system without xattrs.
                extras = Extras() if via_path or settings.euid not in {0, st.st_uid} else read_extras(fd)
                if refusal := ownership.refusal(st, extras.uid, extras.gid, settings.euid):
                    done = record(Outcome.LEFT, refusal)
                else:
                    return _Opened(fd, via_path, st, extras)
    except FileNotFoundError:
        done = record(Outcome.SKIPPED, _VANISHED)
    except OSError as exc:
        done = record(Outcome.LEFT, f"{exc.strerror or exc}")
    os.close(fd)
    return done


class _RecordFn(Protocol):
    def __call__(self, outcome: Outcome, reason: str, *, in_progress: bool = False) -> Record: ...


def _open_temporary(dfd: int, name: bytes) -> tuple[int, bool]:
    try:
        return os.open(name, _OPEN_FLAGS, dir_fd=dfd), False
    except PermissionError:
        # A temporary whose final mode (say 0000 or 0200) was applied before a crash can no longer be
        # opened for reading by its owner. An O_PATH descriptor still pins the inode, and
        # /proc/self/fd/N reaches exactly that inode (what glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does).
        return os.open(name, _PATH_FLAGS, dir_fd=dfd), True


def _open_failure(exc: OSError, record: _RecordFn) -> Record:
    if exc.errno == errno.ENOENT:
        return record(Outcome.SKIPPED, "vanished: done by another process")
    if exc.errno == errno.ELOOP:
        return record(Outcome.LEFT, "is a symbolic link: refused")
    if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):
        return record(Outcome.LEFT, "not a regular file (socket or device): refused")
    return record(Outcome.LEFT, f"cannot be opened: {exc.strerror}")


def _file_problem(st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file: refused"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links: refused"
    return None


def _unlink_same(dfd: int, name: bytes, st: os.stat_result, *, unchanged: bool = False) -> bool:
    # The name may have been swapped since it was opened; unlinking a name never follows it, but only
    # the file that was judged should go. With `unchanged` (cleanup), a file written to since it was
    # judged old is not an orphan after all: False, and it stays.
    # A name that is gone, or now names another file, raises FileNotFoundError: another process did the
    # work, and only one of them may report it (issue 5: four finalizers at once).
    now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise FileNotFoundError(errno.ENOENT, "replaced since it was judged", name)
    if unchanged and (now.st_ctime_ns, now.st_size) != (st.st_ctime_ns, st.st_size):
        return False
    os.unlink(name, dir_fd=dfd)
    return True


__all__ = ["Settings", "TransferStatus", "settle_dir_marker", "settle_file", "settle_legacy"]
