"""Pre-stage: create each destination temporary beside its final path before the data is copied.

The temporary is created empty with ``O_EXCL``, owned like its source (when permitted), with the source's
times, and named after the source's permission bits, size and mtime (`nameformat`), so a later finalize
needs nothing but the name. Missing parent directories are created owner-writable (a read-only source
directory would stop the copy) and get a `DirMarker` beside them carrying their source's mode and mtime.

Everything is checked before anything is created: a bad pair fails the whole run with nothing changed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from . import interrupt, nameformat
from .errors import NameFormatError, PrestageError, SourceError, UsageError
from .metadata import Extras, write_extras
from .nameformat import DirMarker, TempName

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The temporary is private while data arrives: nobody reads a partial checkpoint. Its real mode is
# in its name and applied at commit.
_TEMP_MODE: Final = 0o600
_WHITESPACE: Final = frozenset(b" \t\n\r\v\f")


@dataclass(frozen=True, slots=True)
class StagePair:
    """One file to pre-stage: its source and its final destination path."""

    source: bytes
    final: bytes


@dataclass(frozen=True, slots=True)
class StagedFile:
    source: bytes
    temporary: bytes
    final: bytes


@dataclass
class PrestageResult:
    files: list[StagedFile] = field(default_factory=list)
    created_directories: list[bytes] = field(default_factory=list)
    replaced: int = 0  # earlier temporaries of the same final paths that were removed
    xattrs: bool = True  # False when some destination kept no user xattrs (the name still carries all)
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class _Plan:
    source: bytes
    final: bytes
    st: os.stat_result
    temp: TempName


def expand_sources(
    sources: Sequence[bytes | str], dest: bytes | str, *, recursive: bool = False, follow_symlinks: bool = False
) -> tuple[list[StagePair], dict[bytes, bytes]]:
    """Turn a cp-like ``SRC... DEST`` into pairs, plus the source directory of each destination directory
    that a recursive copy implies (used to give created directories their source's mode and mtime).

    Raises `UsageError` for a missing target directory and `SourceError` for a directory without
    `recursive`.
    """
    if not sources:
        raise UsageError(None, "no source given")
    dest_b = os.path.abspath(os.fsencode(dest))
    into_dir = os.path.isdir(dest_b) or os.fsencode(dest).endswith(b"/")
    if len(sources) > 1 and not into_dir:
        raise UsageError(dest_b, "target is not a directory (several sources need an existing directory or DEST/)")
    pairs: list[StagePair] = []
    dir_sources: dict[bytes, bytes] = {}
    for src in sources:
        src_b = os.path.abspath(os.fsencode(src))
        base = os.path.basename(src_b.rstrip(b"/")) or src_b
        target = os.path.join(dest_b, base) if into_dir else dest_b
        st = _lstat_source(src_b, follow_symlinks)
        if not stat.S_ISDIR(st.st_mode):
            pairs.append(StagePair(src_b, target))
            continue
        if not recursive:
            raise SourceError(src_b, "is a directory (use -r to pre-stage a directory tree)")
        real_src, real_target = os.path.realpath(src_b), os.path.realpath(target)
        if os.path.commonpath([real_src, real_target]) == real_src:
            # As cp refuses: the walk would meet the copy's own directories and stage them again.
            raise UsageError(
                target, f"is inside the source directory {os.fsdecode(src_b)}: cannot copy a directory into itself"
            )
        for dirpath, dirnames, filenames in os.walk(src_b, followlinks=follow_symlinks, onerror=_walk_error):
            rel = os.path.relpath(dirpath, src_b)
            dest_dir = os.path.normpath(os.path.join(target, rel))
            dir_sources[dest_dir] = dirpath
            dirnames.sort()
            names = sorted(filenames)
            if not follow_symlinks:
                names += sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
            pairs.extend(StagePair(os.path.join(dirpath, n), os.path.join(dest_dir, n)) for n in names)
    return pairs, dir_sources


def read_pair_list(data: bytes, *, nul: bool = False, origin: str = "list") -> list[StagePair]:
    """Parse ``SRC<TAB>DST`` lines (or, with `nul`, NUL-separated ``SRC``, ``DST`` fields)."""
    pairs: list[StagePair] = []
    if nul:
        fields = data.split(b"\0")
        if fields and fields[-1] == b"":
            fields.pop()
        if len(fields) % 2:
            raise UsageError(origin, f"{len(fields)} NUL-separated fields: expected SRC and DST pairs")
        pairs = [StagePair(fields[i], fields[i + 1]) for i in range(0, len(fields), 2)]
        for i, pair in enumerate(pairs, 1):
            if not pair.source or not pair.final:
                raise UsageError(origin, f"pair {i}: an empty {'SRC' if not pair.source else 'DST'} field")
    else:
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            if line.endswith(b"\r"):
                # A file written on Windows: the \r would end up in the final name.
                raise UsageError(origin, f"line {number}: ends in a carriage return (CRLF line ends): use LF")
            src, tab, dst = line.partition(b"\t")
            if not tab or b"\t" in dst or not src or not dst:
                raise UsageError(origin, f"line {number}: expected SRC<TAB>DST")
            pairs.append(StagePair(src, dst))
    if not pairs:
        raise UsageError(origin, "no SRC/DST pairs")
    for pair in pairs:
        _check_final(pair.final)  # before abspath, which would turn "dir/" into "dir" and "." into a name
    return [StagePair(os.path.abspath(p.source), os.path.abspath(p.final)) for p in pairs]


def prestage(
    pairs: Iterable[StagePair],
    *,
    handle: int | None = None,
    follow_symlinks: bool = False,
    filelist: bytes | str | None = None,
    dir_sources: dict[bytes, bytes] | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PrestageResult:
    """Create one temporary per pair beside its final path and, with `filelist`, write the file list
    ``bbcmd copy --filelist`` takes (``<source> <temporary> 0`` a line).

    An earlier temporary of the same final path is replaced; an existing final file stays until a commit
    replaces it. Missing directories are created owner-writable; those with a known source directory
    (from `dir_sources`, or the source's ancestor of the same name) get a marker so that finalize gives
    them their source's mode and mtime.

    `progress` is called with the number of temporaries made so far after each one. Everything (sources,
    final paths, the names of temporaries and of created directories' markers, the file list's directory)
    is checked before the first change.

    Raises `SourceError`, `NameFormatError` or `UsageError` (nothing created), `PrestageError`, and
    `Interrupted` when a signal was noted (`interrupt`; a rerun replaces what was made).
    """
    plans = _plan(pairs, handle, follow_symlinks, filelist is not None)
    if filelist is not None:
        _check_filelist(os.fsencode(filelist))
    result = PrestageResult(dry_run=dry_run)
    by_dir: dict[bytes, list[_Plan]] = {}
    for plan in plans:
        by_dir.setdefault(os.path.dirname(plan.final), []).append(plan)
    _check_directories(by_dir, dir_sources or {})
    for dest_dir, group in by_dir.items():
        _stage_directory(dest_dir, group, dir_sources or {}, result, progress)
    if filelist is not None and not dry_run:
        _write_filelist(os.fsencode(filelist), result.files)
    return result


def _plan(pairs: Iterable[StagePair], handle: int | None, follow: bool, for_filelist: bool) -> list[_Plan]:
    plans: list[_Plan] = []
    seen: set[bytes] = set()
    for pair in pairs:
        interrupt.check()  # nothing is changed yet: a signal stops the checks as cleanly
        _check_final(pair.final)
        final = os.path.normpath(os.path.abspath(pair.final))
        if final in seen:
            raise UsageError(final, "named twice as a destination")
        seen.add(final)
        st = _lstat_source(pair.source, follow)
        if not stat.S_ISREG(st.st_mode):
            kind = "a symbolic link (use --follow-symlinks)" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise SourceError(pair.source, f"is {kind}")
        _check_readable(pair.source, follow)
        temp = TempName(os.path.basename(final), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, handle)
        try:
            name = temp.encode()
        except NameFormatError as exc:
            raise NameFormatError(final, exc.reason) from None
        if for_filelist:
            for path in (pair.source, os.path.join(os.path.dirname(final), name)):
                if _WHITESPACE.intersection(path):
                    raise UsageError(path, "contains white space, which bbcmd's file list cannot express")
        plans.append(_Plan(pair.source, final, st, temp))
    return plans


def _check_final(final: bytes) -> None:
    """Refuse a final path no commit could ever give: no file name in it, or an existing directory."""
    if not final or b"\0" in final:
        raise UsageError(final, "is not a file path (empty, or a NUL byte in it)")
    if os.path.basename(final) in (b"", b".", b".."):
        raise UsageError(final, "names a directory, not a file (it ends in '/', '.' or '..')")
    try:
        st = os.stat(final, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise UsageError(final, f"cannot be looked at: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(final, "is an existing directory: a file cannot be committed over it")


def _lstat_source(source: bytes, follow: bool) -> os.stat_result:
    if b"\0" in source:
        raise SourceError(source.replace(b"\0", b"\\0"), "a NUL byte in the path")
    try:
        return os.stat(source, follow_symlinks=follow)
    except FileNotFoundError:
        raise SourceError(source, "no such file or directory") from None
    except OSError as exc:
        raise SourceError(source, exc.strerror or str(exc)) from None


def _check_readable(source: bytes, follow: bool) -> None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        raise SourceError(source, f"cannot be read: {exc.strerror}") from None
    os.close(fd)


def _walk_error(exc: OSError) -> None:
    raise SourceError(exc.filename, exc.strerror or str(exc))


def _check_filelist(path: bytes) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(path, "cannot write the file list: its directory does not exist")
    if os.path.isdir(path):
        raise UsageError(path, "cannot write the file list: is a directory")


def _check_directories(by_dir: dict[bytes, list[_Plan]], dir_sources: dict[bytes, bytes]) -> None:
    """Find, before the first change, what creating the destination directories would refuse: an
    ancestor that is not a directory, a marker name the format cannot express (a name too long)."""
    checked: set[bytes] = set()
    for dest_dir, group in by_dir.items():
        path = dest_dir
        missing: list[bytes] = []
        while path not in checked and not os.path.lexists(path):
            head = os.path.dirname(path)
            if head == path:
                raise UsageError(dest_dir, "no existing ancestor directory")
            missing.append(path)
            path = head
        if path not in checked and not os.path.isdir(path):
            raise UsageError(path, "is not a directory")
        checked.add(path)
        for created in missing:
            checked.add(created)
            src_dir = _source_dir(created, dest_dir, group[0].source, dir_sources)
            if src_dir is None:
                continue
            try:
                st = os.stat(src_dir)
            except OSError as exc:
                raise SourceError(src_dir, exc.strerror or str(exc)) from None
            try:
                DirMarker(os.path.basename(created), stat.S_IMODE(st.st_mode), st.st_mtime_ns).encode()
            except NameFormatError as exc:
                raise NameFormatError(created, f"cannot be given a directory marker: {exc.reason}") from None


def _stage_directory(
    dest_dir: bytes,
    group: list[_Plan],
    dir_sources: dict[bytes, bytes],
    out: PrestageResult,
    progress: Callable[[int], None] | None,
) -> None:
    if out.dry_run:
        if not os.path.isdir(dest_dir):
            out.created_directories.append(dest_dir)
        for plan in group:
            out.files.append(StagedFile(plan.source, os.path.join(dest_dir, plan.temp.encode()), plan.final))
        return
    dfd = _open_or_create_dir(dest_dir, group[0].source, dir_sources, out)
    try:
        finals = {plan.temp.final for plan in group}
        out.replaced += _remove_earlier(dfd, dest_dir, finals)
        for plan in group:
            interrupt.check()  # between two temporaries; a rerun replaces what was made
            name = plan.temp.encode()
            _create_temporary(dfd, name, plan, out)
            out.files.append(StagedFile(plan.source, os.path.join(dest_dir, name), plan.final))
            if progress is not None:
                progress(len(out.files))
    finally:
        os.close(dfd)


def _remove_earlier(dfd: int, dest_dir: bytes, finals: set[bytes]) -> int:
    # One temporary per final path: a rerun of pre-stage supersedes the earlier one, so a finalizer
    # never has to choose between two (it refuses to). One listing per directory, not per file.
    removed = 0
    for entry in os.listdir(dfd):
        name = os.fsencode(entry)
        parsed = nameformat.parse(name) if nameformat.MARKER in name else None
        if isinstance(parsed, TempName) and parsed.final in finals:
            try:
                os.unlink(name, dir_fd=dfd)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise PrestageError(
                    os.path.join(dest_dir, name), f"cannot remove earlier temporary: {exc.strerror}"
                ) from None
    return removed


def _create_temporary(dfd: int, name: bytes, plan: _Plan, out: PrestageResult) -> None:
    path = os.path.join(os.path.dirname(plan.final), name)
    try:
        fd = os.open(name, _CREATE_FLAGS, _TEMP_MODE, dir_fd=dfd)
    except OSError as exc:
        raise PrestageError(path, f"cannot create temporary: {exc.strerror}") from None
    try:
        _give_owner(fd, plan.st)
        out.xattrs &= write_extras(
            fd, Extras(atime_ns=plan.st.st_atime_ns, uid=plan.st.st_uid, gid=plan.st.st_gid, source=plan.source)
        )
        os.utime(fd, ns=(plan.st.st_atime_ns, plan.st.st_mtime_ns))
    except OSError as exc:
        os.unlink(name, dir_fd=dfd)
        raise PrestageError(path, f"cannot set up temporary: {exc.strerror}") from None
    finally:
        os.close(fd)


def _give_owner(fd: int, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)
        return
    # A user may give a file any group they belong to; anything else is not ours to give.
    if st.st_gid != os.getegid():
        with contextlib.suppress(PermissionError):
            os.fchown(fd, -1, st.st_gid)


def _open_or_create_dir(dest_dir: bytes, source: bytes, dir_sources: dict[bytes, bytes], out: PrestageResult) -> int:
    missing: list[bytes] = []
    path = dest_dir
    while True:
        try:
            parent_fd = os.open(path, _DIR_FLAGS)
            break
        except FileNotFoundError:
            head, tail = os.path.split(path)
            if head == path:
                raise PrestageError(dest_dir, "no existing ancestor directory") from None
            missing.append(tail)
            path = head
        except OSError as exc:
            raise PrestageError(path, f"cannot open destination directory: {exc.strerror}") from None
    for component in reversed(missing):
        path = os.path.join(path, component)
        try:
            parent_fd = _make_child_dir(
                parent_fd, component, path, _source_dir(path, dest_dir, source, dir_sources), out
            )
        except OSError as exc:
            raise PrestageError(path, f"cannot create directory: {exc.strerror}") from None
    return parent_fd


def _source_dir(path: bytes, dest_dir: bytes, source: bytes, dir_sources: dict[bytes, bytes]) -> bytes | None:
    if path in dir_sources:
        return dir_sources[path]
    # Without an explicit mapping, a created directory inherits from the source's ancestor at the same
    # depth only when the names agree (timestep.0 -> timestep.0); others are plain `mkdir -p` directories.
    src_dir = os.path.dirname(source)
    for dst_part in _ancestors(dest_dir):
        if dst_part == path:
            return src_dir if os.path.basename(src_dir) == os.path.basename(path) else None
        if os.path.basename(src_dir) != os.path.basename(dst_part):
            return None
        src_dir = os.path.dirname(src_dir)
    return None


def _ancestors(path: bytes) -> Iterator[bytes]:
    while True:
        yield path
        head = os.path.dirname(path)
        if head == path:
            return
        path = head


def _make_child_dir(parent_fd: int, name: bytes, path: bytes, src_dir: bytes | None, out: PrestageResult) -> int:
    try:
        try:
            # With a source directory: private until its mode is known (set below). Without one: as
            # `mkdir -p` would, the umask deciding.
            os.mkdir(name, 0o700 if src_dir is not None else 0o777, dir_fd=parent_fd)
            created = True
        except FileExistsError:
            created = False  # another rank of the same job made it first
        fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    except BaseException:
        os.close(parent_fd)
        raise
    try:
        if created:
            out.created_directories.append(path)
        if created and src_dir is not None:
            _mark_directory(fd, parent_fd, name, src_dir)
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.close(parent_fd)
    return fd


def _mark_directory(fd: int, parent_fd: int, name: bytes, src_dir: bytes) -> None:
    src = os.stat(src_dir)
    os.fchmod(fd, (stat.S_IMODE(src.st_mode) & 0o777) | 0o700)
    _give_owner(fd, src)
    marker = DirMarker(name, stat.S_IMODE(src.st_mode), src.st_mtime_ns).encode()
    try:
        mfd = os.open(marker, _CREATE_FLAGS, _TEMP_MODE, dir_fd=parent_fd)
    except FileExistsError:
        return
    try:
        _give_owner(mfd, src)
    finally:
        os.close(mfd)


def write_filelist(path: bytes | str, files: list[StagedFile]) -> None:
    """Write the file list ``bbcmd copy --filelist`` takes (``<source> <temporary> 0`` a line), atomically
    (to a new name, then renamed over `path`). Raises `PrestageError`."""
    _write_filelist(os.fsencode(path), files)


def _write_filelist(path: bytes, files: list[StagedFile]) -> None:
    tmp = path + b".part%d" % os.getpid()
    try:
        # O_EXCL | O_NOFOLLOW: the name is predictable, and a user who can write the directory could
        # have planted it as a link to a file root would then overwrite (tests/test_root_over_users.py).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with open(fd, "wb") as out:
            out.writelines(b"%s %s 0\n" % (f.source, f.temporary) for f in files)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EEXIST):  # EEXIST: not ours to remove
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise PrestageError(path, f"cannot write the file list: {exc.strerror}") from None
