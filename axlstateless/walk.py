"""The tree walk: through directory file descriptors only, never following a symlink, never leaving the
roots, post-order (a directory is finished after everything below it, deepest first, as mpifileutils
sets directory metadata), with one directory's entries handled by one worker at a time (mpifileutils'
drm: workers do not fight over a directory's lock on a parallel file system).

Memory does not grow with the number of temporaries: a directory is listed, handled and released, and
one wider than `CHUNK` temporaries is handled `CHUNK` at a time (a worker then holds one chunk, the
directory's subdirectory names and 8 bytes per temporary). Open descriptors are bounded by the depth
of the tree times the number of workers, because workers take the most recently found directory first
(depth-first), and a directory's descriptor is closed when its subtree is finished.
"""

from __future__ import annotations

import array
import itertools
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from . import interrupt, nameformat
from .errors import UsageError, WalkError
from .nameformat import DirMarker, Parsed, TempName

#: A path as the caller has it: str, bytes or a path object (``os.fsencode`` takes them all).
AnyPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MARKER_STR: Final = os.fsdecode(nameformat.MARKER)
_DIR_MARKER_STR: Final = _MARKER_STR + ".v1.dir."
#: Entries a worker holds at once in a streamed directory (about 0.3 KB each).
CHUNK: Final = 2048
# What os.fsencode does to a str, without its Python-level call once per directory entry (a measured cost,
# docs/performance.md).
_FS_ENCODING: Final = sys.getfilesystemencoding()
_FS_ERRORS: Final = sys.getfilesystemencodeerrors()


@dataclass(slots=True)
class Entry:
    """A directory entry whose name carries the marker, with what the listing said of its type.

    Not frozen: one per temporary, and a frozen dataclass sets each field through a call."""

    name: bytes
    parsed: Parsed
    dtype: str  # "file", "dir", "symlink" or "other", from d_type (or an lstat where d_type is unknown)


@dataclass
class Listing:
    """One directory's entries of interest.

    A directory with more than `CHUNK` of them is *streamed*: `entries` then holds only its directory
    markers, and `chunks` lists the rest again, `CHUNK` at a time, so memory is bounded by the chunk and
    not by the widest directory (before chunking, 16 workers on 62,500-entry directories held 350 MB).
    """

    fd: int
    path: bytes
    entries: list[Entry] = field(default_factory=list)
    subdirs: list[bytes] = field(default_factory=list)
    #: Final names claimed by more than one file temporary in the whole directory, with their count.
    clashes: dict[bytes, int] = field(default_factory=dict)
    streamed: bool = False
    #: Only when the visitor asks for them (`raw_names`): names of regular files (by the listing's type)
    #: that carry the marker, not parsed, none a directory marker or sharing its final part with another
    #: name. Parsing costs 2 us a name in Python; the native core parses these itself and only what it
    #: gives back is parsed here (`entries` then holds the rest, parsed as always).
    raw: list[bytes] = field(default_factory=list)


class Visitor(Protocol):
    # Optional: ``raw_names = True`` asks for listings whose common entries are left unparsed in
    # `Listing.raw` (see there); without it every entry is parsed into `Listing.entries`.

    def visit(self, listing: Listing) -> bool:
        """Handle a directory's own entries (not its markers); True when something was left pending.

        Called once per directory, or once per chunk of a streamed one (`Listing.clashes` then still
        covers the whole directory)."""

    def finish(self, listing: Listing, pending_children: dict[bytes, bool]) -> bool:
        """Handle a directory's markers once every subdirectory is finished; True when left pending."""

    def error(self, path: bytes, exc: OSError) -> None:
        """A directory below a root could not be opened or listed (it is reported, the walk goes on)."""

    # Optional: ``root_done(listing, pending)`` is called once a root's whole tree is finished.


def open_roots(roots: Sequence[AnyPath]) -> list[tuple[bytes, int]]:
    """Open every root before anything is done, so a typo fails the run with nothing changed.

    A root is opened as named (symlinks in the path the user typed are theirs to choose); nothing
    below it is ever reached through a symlink.
    """
    opened: list[tuple[bytes, int]] = []
    try:
        for root in roots:
            path = os.fsencode(root)
            try:
                opened.append((path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)))
            except FileNotFoundError:
                raise UsageError(path, "no such directory") from None
            except NotADirectoryError:
                raise UsageError(path, "not a directory") from None
            except OSError as exc:
                raise WalkError(path, exc.strerror or str(exc)) from None
    except BaseException:
        for _, fd in opened:
            os.close(fd)
        raise
    return opened


def list_directory(fd: int, path: bytes, *, raw: bool = False) -> Listing:
    """One directory's subdirectories and marker-carrying entries (all of them, or for a streamed
    directory its markers only); with `raw`, regular files' names go unparsed to `Listing.raw`."""
    listing = Listing(fd, path)
    # One machine word per temporary for the whole directory: the hash of what precedes the marker,
    # from which clashes are found without holding every entry.
    prefixes = array.array("q")
    # Names are parsed only once the directory is known not to be streamed (at most CHUNK of them held
    # meanwhile): a streamed one's temporaries are parsed by `chunks`, and parsing them here as well
    # cost a parse per temporary for nothing.
    held: list[tuple[str, str]] = []
    with os.scandir(fd) as it:
        for de in it:
            name = de.name
            if _MARKER_STR in name:
                if listing.streamed:
                    prefixes.append(hash(name[: name.rfind(_MARKER_STR)]))
                    if _DIR_MARKER_STR in name:
                        _add_marker(listing, name, _dtype(de))
                else:
                    held.append((name, _dtype(de)))
                    if len(held) > CHUNK:
                        listing.streamed = True
                        prefixes.extend(hash(n[: n.rfind(_MARKER_STR)]) for n, _ in held)
                        for n, dtype in held:
                            if _DIR_MARKER_STR in n:
                                _add_marker(listing, n, dtype)
                        held = []
            if de.is_dir(follow_symlinks=False):
                listing.subdirs.append(os.fsencode(name))
    if not listing.streamed:
        if raw:
            _split_raw(listing, held)
            return listing
        for name, dtype in held:
            bname = name.encode(_FS_ENCODING, _FS_ERRORS)
            if (parsed := nameformat.parse(bname)) is not None:
                listing.entries.append(Entry(bname, parsed, dtype))
        listing.clashes = clashing_finals(listing.entries)
    else:
        listing.clashes = _streamed_clashes(fd, prefixes)
    return listing


def _split_raw(listing: Listing, held: list[tuple[str, str]]) -> None:
    # Two names with the same part before the last marker may be two temporaries for one final name:
    # those are parsed here, with every name that is not a plain regular file, so that clashes are
    # counted exactly and the native core only ever sees names that cannot clash.
    seen: set[str] = set()
    twice: set[str] = set()
    for name, _ in held:
        prefix = name[: name.rfind(_MARKER_STR)]
        if prefix in seen:
            twice.add(prefix)
        seen.add(prefix)
    for name, dtype in held:
        bname = name.encode(_FS_ENCODING, _FS_ERRORS)
        if (
            dtype == "file"
            and _DIR_MARKER_STR not in name
            and (not twice or name[: name.rfind(_MARKER_STR)] not in twice)
        ):
            listing.raw.append(bname)
        elif (parsed := nameformat.parse(bname)) is not None:
            listing.entries.append(Entry(bname, parsed, dtype))
    listing.clashes = clashing_finals(listing.entries)


def _add_marker(listing: Listing, name: str, dtype: str) -> None:
    bname = name.encode(_FS_ENCODING, _FS_ERRORS)
    if isinstance(parsed := nameformat.parse(bname), DirMarker):
        listing.entries.append(Entry(bname, parsed, dtype))


def clashing_finals(entries: Iterable[Entry]) -> dict[bytes, int]:
    # Pre-stage keeps one temporary per final path; two mean a race or a forgery, and choosing one
    # would be a guess, so both are left for a person.
    counts = Counter(e.parsed.final for e in entries if isinstance(e.parsed, TempName))
    return {final: n for final, n in counts.items() if n > 1}


def _streamed_clashes(fd: int, prefixes: array.array[int]) -> dict[bytes, int]:
    ordered = sorted(prefixes)
    suspects = {a for a, b in itertools.pairwise(ordered) if a == b}
    del ordered
    if not suspects:
        return {}
    # Rare: the same prefix twice (a clash, a legacy temporary beside a new one, or a hash collision);
    # read again, parsing only those names, for exact counts.
    with os.scandir(fd) as it:
        return clashing_finals(
            Entry(os.fsencode(de.name), parsed, "")
            for de in it
            if _MARKER_STR in de.name
            and hash(de.name[: de.name.rfind(_MARKER_STR)]) in suspects
            and (parsed := nameformat.parse(os.fsencode(de.name))) is not None
        )


def chunks(listing: Listing, *, raw: bool = False) -> Iterator[Listing]:
    """The listing itself, or for a streamed directory, its entries (markers aside) `CHUNK` at a time,
    read again through the same descriptor; raises OSError if that read fails. With `raw`, as for
    `list_directory`."""
    if not listing.streamed:
        yield listing
        return
    if raw:
        yield from _raw_chunks(listing)
        return
    part: list[Entry] = []
    parse = nameformat.parse
    # Chunks are handled while the directory is still being read: POSIX readdir returns every entry
    # that is neither added nor removed meanwhile exactly once, and the renames and unlinks made here
    # only remove temporaries already returned (and add final names, which carry no marker).
    with os.scandir(listing.fd) as it:
        for de in it:
            name = de.name
            if _MARKER_STR in name:
                bname = name.encode(_FS_ENCODING, _FS_ERRORS)
                parsed = parse(bname)
                if parsed is not None and not isinstance(parsed, DirMarker):
                    part.append(Entry(bname, parsed, _dtype(de)))
                    if len(part) == CHUNK:
                        yield Listing(listing.fd, listing.path, part, [], listing.clashes)
                        part = []
    if part:
        yield Listing(listing.fd, listing.path, part, [], listing.clashes)


def _raw_chunks(listing: Listing) -> Iterator[Listing]:
    part: list[Entry] = []
    names: list[bytes] = []
    clashes, marker = listing.clashes, nameformat.MARKER
    with os.scandir(listing.fd) as it:
        for de in it:
            name = de.name
            if _MARKER_STR not in name:
                continue
            bname = name.encode(_FS_ENCODING, _FS_ERRORS)
            if (
                _DIR_MARKER_STR not in name
                and de.is_file(follow_symlinks=False)
                and (not clashes or bname[: bname.rfind(marker)] not in clashes)
            ):
                names.append(bname)
            elif (parsed := nameformat.parse(bname)) is not None and not isinstance(parsed, DirMarker):
                part.append(Entry(bname, parsed, _dtype(de)))
            if len(part) + len(names) == CHUNK:
                yield Listing(listing.fd, listing.path, part, [], clashes, raw=names)
                part, names = [], []
    if part or names:
        yield Listing(listing.fd, listing.path, part, [], clashes, raw=names)


def _dtype(de: os.DirEntry[str]) -> str:
    if de.is_symlink():
        return "symlink"
    if de.is_file(follow_symlinks=False):
        return "file"
    if de.is_dir(follow_symlinks=False):
        return "dir"
    return "other"


@dataclass(eq=False)
class _Node:
    path: bytes
    name: bytes
    parent: _Node | None
    fd: int = -1
    listing: Listing | None = None
    remaining: int = 1  # unfinished children, plus one for the directory's own visit
    pending: bool = False
    children: dict[bytes, bool] = field(default_factory=dict)


class _Walker:
    def __init__(self, visitor: Visitor, jobs: int, one_file_system: bool) -> None:
        self.visitor = visitor
        self.raw = bool(getattr(visitor, "raw_names", False))
        self.jobs = max(1, jobs)
        self.one_file_system = one_file_system
        self.stack: list[_Node] = []
        self.cond = threading.Condition()
        self.active = 0
        self.failure: BaseException | None = None
        self.lock = threading.Lock()

    def run(self, roots: list[tuple[bytes, int]]) -> None:
        for path, fd in roots:
            root = _Node(path, b"", None, fd)
            root.remaining = 1
            self.stack.append(root)
        if self.jobs == 1:
            self._work()
        else:
            threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.jobs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if self.failure is not None:
            raise self.failure

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.stack and self.active and self.failure is None:
                    self.cond.wait()
                if not self.stack or self.failure is not None:
                    self.cond.notify_all()
                    return
                node = self.stack.pop()
                self.active += 1
            try:
                interrupt.check()  # between two directories (the visitor checks between temporaries)
                self._visit(node)
            except BaseException as exc:  # a bug or KeyboardInterrupt: stop every worker, re-raise once
                with self.cond:
                    self.failure = self.failure or exc
            finally:
                with self.cond:
                    self.active -= 1
                    self.cond.notify_all()

    def _visit(self, node: _Node) -> None:
        if node.fd < 0:
            if node.parent is None:  # only roots have no parent, and they are opened up front
                raise AssertionError(node.path)
            try:
                node.fd = os.open(node.name, _DIR_FLAGS, dir_fd=node.parent.fd)
                if self.one_file_system and os.fstat(node.fd).st_dev != os.fstat(node.parent.fd).st_dev:
                    os.close(node.fd)
                    node.fd = -1
                    self._done(node)
                    return
            except OSError as exc:
                self.visitor.error(node.path, exc)
                node.pending = True
                self._done(node)
                return
        try:
            node.listing = list_directory(node.fd, node.path, raw=self.raw)
        except OSError as exc:
            self.visitor.error(node.path, exc)
            node.pending = True
            self._done(node)
            return
        try:
            for part in chunks(node.listing, raw=self.raw):
                node.pending |= self.visitor.visit(part)
        except OSError as exc:  # a streamed directory could not be read again: report it, go on below
            self.visitor.error(node.path, exc)
            node.pending = True
        children = [_Node(os.path.join(node.path, n), n, node) for n in node.listing.subdirs]
        with self.lock:
            node.remaining += len(children)
        with self.cond:
            # Reversed so that the first listed subdirectory is taken first (the stack is LIFO).
            self.stack.extend(reversed(children))
            self.cond.notify_all()
        self._done(node)

    def _done(self, node: _Node) -> None:
        while node is not None:
            with self.lock:
                node.remaining -= 1
                if node.remaining:
                    return
            if node.listing is not None:
                node.pending |= self.visitor.finish(node.listing, node.children)
                if node.parent is None and (root_done := getattr(self.visitor, "root_done", None)):
                    root_done(node.listing, node.pending)
            if node.fd >= 0:
                os.close(node.fd)
                node.fd = -1
            parent = node.parent
            if parent is None:
                return
            with self.lock:
                parent.children[node.name] = node.pending
                parent.pending |= node.pending
            node = parent


def walk(roots: list[tuple[bytes, int]], visitor: Visitor, *, jobs: int = 1, one_file_system: bool = False) -> None:
    """Walk the opened `roots` (their descriptors are closed), calling `visitor` for every directory."""
    _Walker(visitor, jobs, one_file_system).run(roots)


def refuse_type(entry: Entry) -> str | None:
    """Why an entry must not be opened as a temporary, from its listed type, or None for a regular file.

    Known before any open: a FIFO is never opened, a device never touched (fstat after the open still
    guards against a swap in between).
    """
    return _REFUSED_TYPES.get(entry.dtype, "is not a regular file")


_REFUSED_TYPES: Final[dict[str, str | None]] = {"file": None, "symlink": "is a symbolic link", "dir": "is a directory"}
