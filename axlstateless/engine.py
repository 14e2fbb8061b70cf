"""Commit or abort one temporary, acting only on an open file descriptor and names inside an open
directory descriptor (no path is ever resolved twice, no symlink followed).

The commit order is fixed by the promises:

1. open the temporary ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO must not block, a symlink is refused) and
   ``fstat`` the descriptor: only a regular file with one link is acted on (CVE-2017-18078: a hardlink to
   /etc/passwd), only one its owner may act on;
2. verify the size against what is expected (`source.py`: our name, or an AXL state-file entry);
3. as root, ``fchown`` to the expected group first, because chown clears set-uid/set-gid
   (AXL chmods first and loses them); then ``fchmod``; then ``futimens`` (mtime from the name or the
   record, atime from the xattr or the record), all on the descriptor;
4. with ``--fsync``, fsync the file before the rename (renameio: otherwise a crash can leave an empty
   file under the final name);
5. ``renameat`` within the directory: the final name appears only now, complete, with its mode and times.

An abort unlinks the temporary; the old final file, if any, stays.

What a verdict leads to is the `Policy` in `Settings` (`policy.py`): finalize's by default; cleanup's
skips a temporary that is not an orphan (too young, its transfer in progress) untouched after the
``fstat``, and does not delete one written to since it was judged (its ctime or size moved); status's
changes nothing and annotates each record.
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
from .metadata import Extras
from .nameformat import DirMarker, LegacyName
from .orphan import BEING_WRITTEN
from .policy import FINALIZE, Legacy, Policy, Seen
from .report import Kind, Outcome, Record
from .source import NAME_SOURCE, Expected, Source
from .verdict import Action, decide

_VANISHED: Final = "vanished: done by another process"
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS: Final = getattr(os, "O_PATH", 0o10000000) | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Settings:
    """How to act: one per run, shared by every worker."""

    backend: Backend
    dry_run: bool = False
    fsync: bool = False
    euid: int = -1
    policy: Policy = FINALIZE  # what is done with each verdict: finalize's, cleanup's or status's

    def __post_init__(self) -> None:
        if self.euid == -1:
            object.__setattr__(self, "euid", os.geteuid())
        if not self.policy.acts and not self.dry_run:
            object.__setattr__(self, "dry_run", True)


def settle_file(
    dfd: int, name: bytes, path: bytes, exp: Expected, settings: Settings, source: Source = NAME_SOURCE
) -> Record:
    """Commit, abort or leave the file temporary `name` in directory `dfd`, expected to become `exp` (from
    our name or an AXL state-file entry, `source`); never raises OSError. The policy decides what a
    verdict leads to (a temporary that is not an orphan is skipped by cleanup, and so on)."""
    transfer = settings.backend.status(exp.handle)
    policy = settings.policy
    seen = Seen()
    kind = source.kind

    # The walk passes `path` as dir/name: slicing is cheaper than dirname and join, once per temporary.
    if path.endswith(name):
        final = path[: len(path) - len(name)] + exp.final
    else:
        final = os.path.join(os.path.dirname(path), exp.final)

    def record(outcome: Outcome, reason: str, *, in_progress: bool = False) -> Record:
        return Record(
            path=path,
            kind=kind,
            outcome=outcome,
            reason=reason,
            final=final,
            mode=exp.mode,
            size=exp.size,
            mtime_ns=exp.mtime_ns,
            handle=exp.handle,
            transfer=transfer.detail,
            in_progress=in_progress,
            extra=policy.annotate(kind, outcome, seen),
        )

    if transfer.state is TransferState.IN_PROGRESS:
        if policy.measures_age:
            seen.age_ns = _age_by_name(dfd, name, policy)
        outcome, reason, in_progress = policy.in_transfer(seen)
        return record(outcome, reason, in_progress=in_progress)
    opened = _open_and_check(dfd, name, settings, seen, record, exp, source)
    if isinstance(opened, Record):
        return opened
    fd, st, extras = opened.fd, opened.st, opened.extras
    try:
        ruled = source.preverdict(exp)
        action, why = ruled or decide(transfer, expected_size=exp.size, actual_size=st.st_size)
        action, why = policy.verdict(action, why)
        if action is Action.ABORT:
            if not settings.dry_run and not _unlink_same(dfd, name, st, unchanged=policy.guard_unchanged):
                seen.waiting = BEING_WRITTEN
                return record(Outcome.SKIPPED, "not an orphan: written to while being judged")
            return record(Outcome.ABORTED, why)
        return _commit(dfd, fd, opened.via_path, name, exp, st, extras, settings, record, why)
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
    exp: Expected,
    st: os.stat_result,
    extras: Extras,
    settings: Settings,
    record: _RecordFn,
    why: str,
) -> Record:
    as_root = settings.euid == 0
    target = f"/proc/self/fd/{fd}" if via_path else fd
    new_gid = st.st_gid
    gid = extras.gid
    if as_root and gid is not None and gid != st.st_gid:
        new_gid = gid
    mode = ownership.safe_mode(exp.mode, st.st_uid, new_gid, as_root=as_root)
    reason = why
    if mode != exp.mode:
        dropped = (
            f"set-uid/set-gid dropped (mode {mode:04o}, not {exp.mode:04o}): root never grants them from a name "
            "or a record alone"
        )
        reason = f"{why}; {dropped}" if why else dropped
    # The final name is looked at only when its owner matters (root committing a user's file) or a dry
    # run must predict the rename: otherwise renameat itself refuses a directory (EISDIR), and the
    # fstatat was one call in seven per temporary (docs/performance.md).
    final_st: os.stat_result | None = None
    if settings.dry_run or (as_root and st.st_uid != 0):
        with contextlib.suppress(FileNotFoundError):
            final_st = os.stat(exp.final, dir_fd=dfd, follow_symlinks=False)
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
    atime_ns = st.st_atime_ns if extras.atime_ns is None else extras.atime_ns
    os.utime(target, ns=(atime_ns, st.st_mtime_ns if exp.mtime_ns is None else exp.mtime_ns))
    if settings.fsync and not via_path:
        os.fsync(fd)
    # Linux renames by name only: the name checked through the descriptor may have been swapped since it was
    # opened (a pre-stage rerun unlinks and recreates it), and the rename would then put the newcomer, say
    # an empty file, under the final name. So the name is checked to be the verified inode right before
    # the rename, and the final name right after it (docs/security.md: the window that remains).
    try:
        if not _same_file(os.stat(name, dir_fd=dfd, follow_symlinks=False), st):
            return record(Outcome.LEFT, _REPLACED + "; not committed, rerun to judge the new one")
    except FileNotFoundError:
        return record(Outcome.SKIPPED, "vanished before the rename: done by another process")
    try:
        _renameat(dfd, name, exp.final)
    except FileNotFoundError:
        return record(Outcome.SKIPPED, "vanished before the rename: done by another process")
    except IsADirectoryError:
        return record(Outcome.LEFT, "the final name is a directory")
    if not _same_file(os.stat(exp.final, dir_fd=dfd, follow_symlinks=False), st):
        return record(Outcome.LEFT, _REPLACED + "; " + _put_back(dfd, name, exp.final))
    return record(Outcome.COMMITTED, reason)


_REPLACED: Final = "the temporary's name was replaced by another file between the checks and the rename"


def _renameat(dfd: int, src: bytes, dst: bytes) -> None:
    """``renameat`` within one directory (a function of its own: the race tests interpose here)."""
    os.rename(src, dst, src_dir_fd=dfd, dst_dir_fd=dfd)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


def _put_back(dfd: int, name: bytes, final: bytes) -> str:
    """The rename moved a file that was not the one verified: move it back under the temporary's name
    (unless that name was taken again meanwhile), so no unverified file stays under the final name."""
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        try:
            os.rename(final, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as exc:
            return f"it is under the final name and could not be moved back: {exc.strerror}"
        return "it was moved back to the temporary's name, rerun to judge it"
    return "it is under the final name, and the temporary's name is taken again: look at both"


def settle_dir_marker(
    dfd: int, name: bytes, path: bytes, dm: DirMarker, settings: Settings, *, pending_below: bool
) -> Record:
    """Give a directory pre-stage created its source's mode and mtime, then remove its marker.

    The marker lives in the parent, so applying the directory's mtime and then unlinking the marker
    leaves the directory's own mtime alone, and a crash in between is repaired by a rerun.
    """
    final = os.path.join(os.path.dirname(path), dm.final)
    policy = settings.policy
    seen = Seen()

    def record(outcome: Outcome, reason: str, *, in_progress: bool = False) -> Record:
        return Record(
            path=path,
            kind=Kind.DIR,
            outcome=outcome,
            reason=reason,
            final=final,
            mode=dm.mode,
            mtime_ns=dm.mtime_ns,
            in_progress=in_progress,
            extra=policy.annotate(Kind.DIR, outcome, seen),
        )

    if pending_below:
        outcome, reason = policy.marker_waits(seen)
        # It waits on what is below it, which is reported on its own (left for a reason, exit 4, or in
        # transfer, exit 3): counted as waiting on transfers, so that it never turns a 3 into a 4.
        return record(outcome, reason, in_progress=outcome is Outcome.LEFT)
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
    if held := policy.hold(seen, mst):
        return record(Outcome.SKIPPED, held)
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
        why = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        return record(Outcome.LEFT, f"directory cannot be opened: {why}")
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


LEGACY_LEFT: Final = (
    "legacy AXL temporary that no state file names: left untouched (it may be the only copy of complete data; "
    "pass its state file with --axl-state to commit it)"
)


def settle_legacy(
    dfd: int, name: bytes, path: bytes, ln: LegacyName, settings: Settings, *, refused: str | None = None
) -> Record:
    """A legacy AXL temporary (``<final>._AXL[handle]``) that no state file names: never committed, since
    nothing verifies it, and left untouched unless the policy deletes orphaned ones (cleanup
    ``--delete-legacy``), after the same refusals as a temporary of ours (`refused`: why its listed type,
    or an unreadable state file that may name it, already rules it out)."""
    final = os.path.join(os.path.dirname(path), ln.final)
    policy = settings.policy
    seen = Seen()
    deletes = policy.unclaimed_legacy() is Legacy.DELETE
    transfer = settings.backend.status(ln.handle) if deletes else None

    def record(outcome: Outcome, reason: str, *, in_progress: bool = False) -> Record:
        return Record(
            path=path,
            kind=Kind.LEGACY,
            outcome=outcome,
            reason=reason,
            final=final,
            handle=ln.handle,
            transfer=None if transfer is None else transfer.detail,
            extra=policy.annotate(Kind.LEGACY, outcome, seen),
        )

    if not deletes:
        if policy.measures_age:
            seen.age_ns = _age_by_name(dfd, name, policy)
        return record(Outcome.LEFT, LEGACY_LEFT)
    if refused:
        return record(Outcome.LEFT, f"{refused}: refused")
    if transfer is not None and transfer.state is TransferState.IN_PROGRESS:
        seen.age_ns = _age_by_name(dfd, name, policy)
        outcome, reason, in_progress = policy.in_transfer(seen)
        return record(outcome, reason, in_progress=in_progress)
    opened = _open_and_check(dfd, name, settings, seen, record, None, NAME_SOURCE)
    if isinstance(opened, Record):
        return opened
    fd, st = opened.fd, opened.st
    try:
        if not settings.dry_run and not _unlink_same(dfd, name, st, unchanged=True):
            seen.waiting = BEING_WRITTEN
            return record(Outcome.SKIPPED, "not an orphan: written to while being judged")
        return record(
            Outcome.ABORTED, "orphaned legacy AXL temporary: deleted (--delete-legacy; no state file named it)"
        )
    except FileNotFoundError:
        # Only the temporary's own name can be missing here: another process committed or aborted it.
        return record(Outcome.SKIPPED, _VANISHED)
    except OSError as exc:
        return record(Outcome.LEFT, f"{exc.strerror or exc}")
    finally:
        os.close(fd)


def _age_by_name(dfd: int, name: bytes, policy: Policy) -> int | None:
    # Only for the report: a temporary whose transfer runs is not opened, but its age is still shown.
    try:
        return policy.age_ns(os.stat(name, dir_fd=dfd, follow_symlinks=False))
    except OSError:
        return None


@dataclass(slots=True)
class _Opened:
    fd: int
    via_path: bool
    st: os.stat_result
    extras: Extras


def _open_and_check(
    dfd: int,
    name: bytes,
    settings: Settings,
    seen: Seen,
    record: _RecordFn,
    exp: Expected | None,
    source: Source,
) -> _Opened | Record:
    """Open a temporary (or a legacy one) and make the checks every kind shares: gone, not a regular
    file or hard-linked, held by the policy (not an orphan yet), refused owner. A `Record` when it stops
    there (the descriptor closed), else the open descriptor, for the caller to act on and close."""
    try:
        fd, via_path = _open_temporary(dfd, name)
    except OSError as exc:
        return _open_failure(exc, record)
    try:
        st = os.fstat(fd)
        if st.st_nlink == 0:  # unlinked by another finalizer (or cleanup) since we opened it
            done = record(Outcome.SKIPPED, _VANISHED)
        elif problem := _file_problem(st):
            done = record(Outcome.LEFT, problem)
        elif held := settings.policy.hold(seen, st):
            # Judged on this descriptor's fstat, the inode about to be acted on, not on a listing.
            done = record(Outcome.SKIPPED, held)
        else:
            # Ownership first for a non-root user: another user's unreadable temporary is held by an
            # O_PATH descriptor, whose xattrs cannot be read (EBADF), and the true reason is that it is
            # not ours. Our own, unreadable since its final mode was applied before a crash, is judged
            # like one on a file system without xattrs.
            readable = not via_path and settings.euid in {0, st.st_uid}
            extras = Extras() if exp is None else source.extras(exp, fd, st, readable=readable)
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
    # work, and only one of them may report it (four finalizers at once: tests/test_concurrency.py).
    now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise FileNotFoundError(errno.ENOENT, "replaced since it was judged", name)
    if unchanged and (now.st_ctime_ns, now.st_size) != (st.st_ctime_ns, st.st_size):
        return False
    os.unlink(name, dir_fd=dfd)
    return True


__all__ = ["Settings", "TransferStatus", "settle_dir_marker", "settle_file", "settle_legacy"]
