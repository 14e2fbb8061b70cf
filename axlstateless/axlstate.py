"""AXL's state files as data: one `AxlTransfer` per file, one `AxlFile` per file entry.

AXL (github.com/ECP-VeloC/AXL, v0.9.0) records one transfer per state file, a kvtree (`kvtree`) with
the keys listed in docs/axl.md: the transfer's TYPE, STATE and STATUS, its switches, and under FILE
one hash per source path with the DEST it was written to and the source's size, mode, owner and times.
Nothing here changes a file; what is done with an entry is the engine's business.

Numbers are read as AXL reads them (``strtoul(s, NULL, 0)`` for sizes, modes, owners and times:
decimal, ``0x`` hex or leading-``0`` octal; ``atoi`` for TYPE, STATE and STATUS: decimal), but
strictly: AXL writes plain decimal, so a key that is present with anything else (a sign, a space,
trailing bytes, two values, a number out of range) makes the whole file a `StateFileError`, never a
guessed or partial record. A key that is absent gives None (AXL then skips that step).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from . import kvtree
from .errors import KVTreeError, NotAxlStateError, StateFileError, UsageError
from .walk import AnyPath

__all__ = [
    "AXL_EXTENSION",
    "MAX_STATE_FILE_SIZE",
    "STATE_CANCELED",
    "STATE_COMPLETED",
    "STATE_CREATED",
    "STATE_DISPATCHED",
    "STATE_WAITING",
    "STATUS_DEST",
    "STATUS_ERROR",
    "STATUS_INPROG",
    "STATUS_SOURCE",
    "XFER_BBAPI",
    "XFER_DATAWARP",
    "XFER_PTHREAD",
    "XFER_SYNC",
    "AxlFile",
    "AxlTransfer",
    "find_state_files",
    "parse_state",
    "read_state_file",
    "split_axl_name",
]

#: AXL's marker between a final name and its temporary's extra part (``AXL_EXTENSION``, axl.c).
AXL_EXTENSION: Final = b"._AXL"

# axl_xfer_state_t (axl.c): the transfer's STATE.
STATE_CREATED: Final = 1
STATE_DISPATCHED: Final = 2
STATE_WAITING: Final = 3
STATE_COMPLETED: Final = 4
STATE_CANCELED: Final = 5

# AXL_STATUS_* (axl_internal.h): the transfer's and each file's STATUS.
STATUS_SOURCE: Final = 1
STATUS_INPROG: Final = 2
STATUS_DEST: Final = 3
STATUS_ERROR: Final = 4

# axl_xfer_t (axl.h): the recorded TYPE of the transfers AXL v0.9.0 can write a state file for.
XFER_SYNC: Final = 2
XFER_DATAWARP: Final = 4
XFER_BBAPI: Final = 5
XFER_PTHREAD: Final = 7

#: AXL's state files are a few hundred bytes per file entry; one larger than this is not read whole
#: into memory (a full-scale rank holds far fewer entries).
MAX_STATE_FILE_SIZE: Final = 256 << 20

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ULONG_MAX: Final = (1 << 64) - 1
_INT_MIN: Final = -(1 << 31)
_INT_MAX: Final = (1 << 31) - 1
_NSEC: Final = 1_000_000_000
# The clean forms of strtoul base 0 and of atoi (no space, sign or trailing bytes on either).
_ULONG_RE: Final = re.compile(rb"(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_INT_RE: Final = re.compile(rb"-?[0-9]+")


@dataclass(frozen=True, slots=True)
class AxlFile:
    """One FILE entry: the source AXL copied, where it wrote it, and the source's metadata.

    `dest` is DEST as recorded: the temporary (``<final>._AXL[<handle>]``) when AXL wrote with its
    extension, else the final name itself. `mode` is the full recorded ``st_mode`` (type bits
    included). `atime_ns` and `mtime_ns` are ``SECS * 10**9 + NSECS``, each None when its two keys are
    absent, and both None when AXL would set no times (all four values 0). Every other field is None
    when its key is absent.
    """

    source: bytes
    dest: bytes
    status: int | None
    mode: int | None
    uid: int | None
    gid: int | None
    size: int | None
    atime_ns: int | None
    mtime_ns: int | None


@dataclass(frozen=True, slots=True)
class AxlTransfer:
    """One state file: `path` as it was read, the transfer's recorded fields, and its file entries.

    `use_extension` is the recorded USE_EXTENSION switch (AXL_Wait obeys the switch of the process
    that waits, not this one: docs/axl.md). `handle` is BB_TransferHandle (IBM BB transfers only).
    `files` keeps the order of the file, which is the reverse of the order AXL added them.
    """

    path: bytes
    name: bytes | None
    xfer_type: int | None
    state: int | None
    status: int | None
    use_extension: bool
    handle: int | None
    files: tuple[AxlFile, ...]


def split_axl_name(path: bytes) -> tuple[bytes, bytes] | None:
    """Split a DEST as AXL does at rename time (``axl_remove_extension``, axl.c): at the LAST
    ``._AXL`` anywhere in the whole string, directories included.

    Returns ``(final, extra)``: `final` is everything before the marker, `extra` everything after it
    (AXL never checks it: empty, or a BB handle's digits when AXL wrote it). None for a string
    shorter than 6 bytes or one without the marker. As in AXL, `final` may be empty or end in a
    slash (``b"._AXLx"`` gives ``(b"", b"x")``); a caller must refuse such a final.
    """
    if len(path) < len(AXL_EXTENSION) + 1:
        return None
    i = path.rfind(AXL_EXTENSION)
    if i < 0:
        return None
    return path[:i], path[i + len(AXL_EXTENSION) :]


_FILE_KEYS: Final = frozenset(
    {b"DEST", b"STATUS", b"MODE", b"UID", b"GID", b"SIZE", b"ATIME_SECS", b"ATIME_NSECS", b"MTIME_SECS", b"MTIME_NSECS"}
)
_TOP_KEYS: Final = frozenset({b"NAME", b"TYPE", b"STATE", b"STATUS", b"USE_EXTENSION", b"BB_TransferHandle"})


def _where(source: bytes | None) -> str:
    return "" if source is None else f"FILE {source!r}: "


def _values(tree: kvtree.KVTree, keys: frozenset[bytes], source: bytes | None) -> dict[bytes, bytes]:
    """The value of each key of `keys` that `tree` holds, in one pass (one file entry's dozen keys
    are looked at for every entry of every state file)."""
    values: dict[bytes, bytes] = {}
    for key, child in tree.items():
        if key in keys:
            if len(child) != 1:
                raise KVTreeError(f"{_where(source)}{key.decode()} holds {len(child)} values, not one")
            ((value, grandchild),) = child.items()
            if grandchild:
                raise KVTreeError(f"{_where(source)}{key.decode()} value {value!r} has keys below it")
            values[key] = value
    return values


def _ulong(values: dict[bytes, bytes], key: bytes, source: bytes | None) -> int | None:
    text = values.get(key)
    if text is None:
        return None
    if text.isdigit() and (text[0] != 0x30 or len(text) == 1) and len(text) < 20:
        return int(text)  # the plain decimal AXL writes (%lu), below 2**64 by its length alone
    if _ULONG_RE.fullmatch(text) is None:
        raise KVTreeError(f"{_where(source)}{key.decode()} is {text!r}, not an unsigned number")
    if text[:2] in (b"0x", b"0X"):
        value = int(text[2:], 16)
    elif text[:1] == b"0":
        value = int(text, 8)
    else:
        value = int(text)
    if value > _ULONG_MAX:
        raise KVTreeError(f"{_where(source)}{key.decode()} is {text!r}, out of range")
    return value


def _int(values: dict[bytes, bytes], key: bytes, source: bytes | None) -> int | None:
    text = values.get(key)
    if text is None:
        return None
    if _INT_RE.fullmatch(text) is None:
        raise KVTreeError(f"{_where(source)}{key.decode()} is {text!r}, not an integer")
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise KVTreeError(f"{_where(source)}{key.decode()} is {text!r}, out of range")
    return value


def _time(values: dict[bytes, bytes], secs_key: bytes, nsecs_key: bytes, source: bytes) -> tuple[int, int] | None:
    secs = _ulong(values, secs_key, source)
    nsecs = _ulong(values, nsecs_key, source)
    if secs is None and nsecs is None:
        return None
    if secs is None or nsecs is None:
        raise KVTreeError(f"{_where(source)}{secs_key.decode()} and {nsecs_key.decode()} are not both recorded")
    if nsecs >= _NSEC:
        raise KVTreeError(f"{_where(source)}{nsecs_key.decode()} is {nsecs}, not below one second")
    return secs, nsecs


def _file(source: bytes, entry: kvtree.KVTree) -> AxlFile:
    values = _values(entry, _FILE_KEYS, source)
    dest = values.get(b"DEST")
    if dest is None:
        raise KVTreeError(f"{_where(source)}no DEST")
    if not dest:
        raise KVTreeError(f"{_where(source)}DEST is empty")
    atime = _time(values, b"ATIME_SECS", b"ATIME_NSECS", source)
    mtime = _time(values, b"MTIME_SECS", b"MTIME_NSECS", source)
    atime_ns = mtime_ns = None
    # axl_meta_apply reads a missing time value as 0 and sets no times at all when all four are 0.
    if (atime or (0, 0)) != (0, 0) or (mtime or (0, 0)) != (0, 0):
        atime_ns = None if atime is None else atime[0] * _NSEC + atime[1]
        mtime_ns = None if mtime is None else mtime[0] * _NSEC + mtime[1]
    return AxlFile(
        source=source,
        dest=dest,
        status=_int(values, b"STATUS", source),
        mode=_ulong(values, b"MODE", source),
        uid=_ulong(values, b"UID", source),
        gid=_ulong(values, b"GID", source),
        size=_ulong(values, b"SIZE", source),
        atime_ns=atime_ns,
        mtime_ns=mtime_ns,
    )


def parse_state(path: bytes, data: bytes) -> AxlTransfer:
    """Decode a state file's bytes (`path` is only recorded); raise `StateFileError` naming `path`
    if they are not one whole, well-formed AXL state file."""
    if not data:
        raise StateFileError(path, "empty state file (AXL leaves one when killed while rewriting it)")
    try:
        tree = kvtree.loads(data)
    except KVTreeError as exc:
        raise StateFileError(path, exc.reason) from None
    # AXL_Create sets TYPE and STATE before the first write of the file, so every whole AXL state
    # file has them.
    if b"TYPE" not in tree or b"STATE" not in tree:
        raise NotAxlStateError(path, "a kvtree file but not an AXL state file (no TYPE or STATE)")
    try:
        top = _values(tree, _TOP_KEYS, None)
        files = tree.get(b"FILE", {})
        return AxlTransfer(
            path=path,
            name=top.get(b"NAME"),
            xfer_type=_int(top, b"TYPE", None),
            state=_int(top, b"STATE", None),
            status=_int(top, b"STATUS", None),
            use_extension=bool(_int(top, b"USE_EXTENSION", None)),
            handle=_ulong(top, b"BB_TransferHandle", None),
            files=tuple(_file(source, entry) for source, entry in files.items()),
        )
    except KVTreeError as exc:
        raise StateFileError(path, exc.reason) from None


def read_state_file(path: AnyPath, *, dir_fd: int | None = None) -> AxlTransfer:
    """Read and decode one AXL state file, whole.

    Opened without following a symlink and without blocking (a FIFO cannot hang the run); only a
    regular file of at most `MAX_STATE_FILE_SIZE` bytes is read. Raises `StateFileError(path, reason)`
    for a file that cannot be opened or read, is not a regular file, is empty, truncated or corrupt,
    or is a kvtree that is not an AXL state file. AXL rewrites its state file in place, unlocked: a
    file read while a live AXL rewrites it reads as truncated, an error, never as a shorter transfer.
    """
    bpath = os.fsencode(path)
    try:
        fd = os.open(bpath, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise StateFileError(bpath, _os_reason(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(bpath, "not a regular file")
        if st.st_size > MAX_STATE_FILE_SIZE:
            raise StateFileError(bpath, f"{st.st_size} bytes, larger than {MAX_STATE_FILE_SIZE} (not read)")
        chunks: list[bytes] = []
        total = 0
        # One byte more than fstat said: the usual whole read is one call, and its being short says the
        # end was reached. A file that grew meanwhile (AXL rewrites in place) is read on to its end;
        # one read cut short by anything else reads as truncated, never as a shorter transfer (the
        # kvtree header's filesize and CRC say so).
        want = st.st_size + 1
        while True:
            chunk = os.read(fd, want)
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_STATE_FILE_SIZE:
                raise StateFileError(bpath, f"grew past {MAX_STATE_FILE_SIZE} bytes while read")
            if len(chunk) < want:
                break
            want = 65536
    except OSError as exc:
        raise StateFileError(bpath, _os_reason(exc)) from None
    finally:
        os.close(fd)
    return parse_state(bpath, b"".join(chunks))


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        # O_NOFOLLOW: a state file is read for root in directories users write; a symlink there
        # could point root at any file.
        return "a symlink (never followed)"
    return exc.strerror or str(exc)


def find_state_files(
    paths: Sequence[AnyPath], *, on_error: Callable[[StateFileError], None] | None = None
) -> Iterator[bytes]:
    """Yield every AXL state file named by or below `paths`, each path once, in name order.

    A path that is not a directory is yielded as it is (a state file the user named: reading it says
    whether it is one). A directory is opened as named and searched recursively through directory
    file descriptors, never through a symlink; a regular file below it is yielded when its first bytes
    carry the kvtree magic, or are the start of it (AXL gives state files no naming rule). Other
    programs' kvtree files are yielded too; reading one raises `NotAxlStateError`. Not found by the
    search: an empty file (AXL leaves one when killed while rewriting its state file, but nothing
    tells it from any other empty file; name it to have it reported) and a file the caller cannot
    open. A directory below that cannot be opened or listed is passed to `on_error` as a
    `StateFileError` (raised when `on_error` is None); a path that does not exist is a `UsageError`.
    """
    for path in paths:
        bpath = os.fsencode(path)
        try:
            fd = os.open(bpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            yield bpath
            continue
        except FileNotFoundError:
            raise UsageError(bpath, "no such state file or directory") from None
        except OSError as exc:
            if not os.path.isdir(bpath):
                yield bpath  # reading it reports why it cannot be read
                continue
            _report(StateFileError(bpath, exc.strerror or str(exc)), on_error)
            continue
        yield from _search(fd, bpath, on_error)


def _report(error: StateFileError, on_error: Callable[[StateFileError], None] | None) -> None:
    if on_error is None:
        raise error
    on_error(error)


def _search(fd: int, path: bytes, on_error: Callable[[StateFileError], None] | None) -> Iterator[bytes]:
    """Search the open directory `fd` (closed here); holds one descriptor per level of depth."""
    try:
        try:
            with os.scandir(fd) as it:
                entries = sorted((os.fsencode(de.name), de.is_dir(follow_symlinks=False), _is_file(de)) for de in it)
        except OSError as exc:
            _report(StateFileError(path, exc.strerror or str(exc)), on_error)
            return
        prefix = path if path.endswith(b"/") else path + b"/"
        for name, is_dir, is_file in entries:
            child = prefix + name
            if is_dir:
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    _report(StateFileError(child, exc.strerror or str(exc)), on_error)
                    continue
                yield from _search(sub, child, on_error)
            elif is_file and _has_magic(fd, name):
                yield child
    finally:
        os.close(fd)


def _is_file(de: os.DirEntry[str]) -> bool:
    try:
        return de.is_file(follow_symlinks=False)
    except OSError:
        return False


def _has_magic(dir_fd: int, name: bytes) -> bool:
    """True if `name` is a regular file (not through a symlink) whose first bytes are a kvtree's, or
    of 1 to 7 bytes that begin one (a state file cut short, which reading reports).

    An empty file is not: nothing tells AXL's (a kill during its rewrite leaves one) from any other.
    A file that cannot be opened is not reported here either: it is not known to be a state file."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.pread(fd, 8, 0)
        return bool(head) and kvtree.MAGIC_HEAD.startswith(head)
    except OSError:
        return False
    finally:
        os.close(fd)
