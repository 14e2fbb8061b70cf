"""The temporary's name, format version 1 (see docs/format.md).

Everything a commit needs travels in the name, so a finalizer needs no state file and a burst buffer
that recreates the file (losing its extended attributes) still leaves a committable temporary::

    <final>._AXL.v1.m<mode>.s<size>.t<mtime_ns>[.h<handle>]   a file temporary
    <final>._AXL.v1.dir.m<mode>.t<mtime_ns>                   a directory marker (see below)
    <final>._AXL[<digits>]                                    a legacy AXL temporary

A directory marker is an empty file that pre-stage leaves beside a directory it created; it tells the
finalizer which mode and mtime to give directory ``<final>`` once everything below it is done.

Names are bytes. Parsing looks for the *last* ``._AXL`` and matches the suffix after it against the
grammar exactly, which is how legacy names and ours are told apart (docs/format.md):

- ``.v1.`` and the v1 fields: one of ours. Its final part must itself be a valid name that does not
  parse as anything, so the set of v1 names that parse is exactly the set that `encode` can produce;
- nothing, or only digits (at most 20, below 2**64): a legacy AXL temporary. Its final part is whatever
  precedes that last marker, as AXL itself splits a name (``axl_remove_extension``): it may contain
  ``._AXL`` too (``x._AXL7._AXL`` is the temporary of ``x._AXL7``);
- anything else: `Unrecognised`, never acted on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import NameFormatError

MARKER: Final = b"._AXL"
VERSION: Final = 1
NAME_MAX: Final = 255

SIZE_LIMIT: Final = 2**63  # st_size is a signed 64-bit off_t
MTIME_LIMIT: Final = 2**63  # nanoseconds since the epoch, signed 64-bit
HANDLE_LIMIT: Final = 2**64  # BBTransferHandle_t is a uint64_t

# Canonical decimals only (no leading zeros, no "+", no "-0"): one name per record, so encode(parse(n))
# gives back n byte for byte. Digit counts are bounded to keep the regex linear on hostile input.
_UINT = rb"(0|[1-9][0-9]{0,19})"
_INT = rb"(0|-?[1-9][0-9]{0,19})"
_MODE = rb"([0-7]{4})"
_FILE_RE: Final = re.compile(rb"\._AXL\.v1\.m" + _MODE + rb"\.s" + _UINT + rb"\.t" + _INT + rb"(?:\.h" + _UINT + rb")?")
_DIR_RE: Final = re.compile(rb"\._AXL\.v1\.dir\.m" + _MODE + rb"\.t" + _INT)
# AXL prints its uint64 handle in decimal: at most 20 digits (unbounded, a 4,301-digit name made int()
# raise, and a 250-digit one passed a handle no BB has to the backend).
_LEGACY_RE: Final = re.compile(rb"\._AXL([0-9]{0,20})")


@dataclass(frozen=True, slots=True)
class TempName:
    """A file temporary: what its commit needs (final name, permission bits, size, mtime)."""

    final: bytes
    mode: int
    size: int
    mtime_ns: int
    handle: int | None = None

    def encode(self) -> bytes:
        """Return the temporary's name; raises `NameFormatError` if the fields cannot be encoded."""
        check_final(self.final)
        _check_range("mode", self.mode, 0, 0o7777 + 1)
        _check_range("size", self.size, 0, SIZE_LIMIT)
        _check_range("mtime", self.mtime_ns, -MTIME_LIMIT, MTIME_LIMIT)
        suffix = b"%s.v1.m%04o.s%d.t%d" % (MARKER, self.mode, self.size, self.mtime_ns)
        if self.handle is not None:
            _check_range("handle", self.handle, 0, HANDLE_LIMIT)
            suffix += b".h%d" % self.handle
        return _join(self.final, suffix)


@dataclass(frozen=True, slots=True)
class DirMarker:
    """The marker of a directory pre-stage created: its source's mode and mtime, applied last."""

    final: bytes
    mode: int
    mtime_ns: int

    def encode(self) -> bytes:
        """Return the marker's name; raises `NameFormatError` if the fields cannot be encoded."""
        check_final(self.final)
        _check_range("mode", self.mode, 0, 0o7777 + 1)
        _check_range("mtime", self.mtime_ns, -MTIME_LIMIT, MTIME_LIMIT)
        return _join(self.final, b"%s.v1.dir.m%04o.t%d" % (MARKER, self.mode, self.mtime_ns))


@dataclass(frozen=True, slots=True)
class LegacyName:
    """An AXL temporary (``<final>._AXL`` or ``<final>._AXL<handle>``): no mode or size in its name; only
    an AXL state file that names it says what it should become."""

    final: bytes
    handle: int | None


@dataclass(frozen=True, slots=True)
class Unrecognised:
    """A name that carries the marker but does not match the grammar: reported, never touched."""

    name: bytes
    reason: str


Parsed = TempName | DirMarker | LegacyName | Unrecognised


def parse(name: bytes) -> Parsed | None:
    """Classify a directory entry's name; None when it does not carry the marker at all."""
    at = name.rfind(MARKER)
    if at < 0:
        return None
    if len(name) > NAME_MAX:
        # No directory entry is longer and `encode` makes none; checking the final part recurses once
        # per marker, so an unbounded name could exhaust the stack (found by tests/test_fuzz_names.py).
        return Unrecognised(name, f"longer than NAME_MAX ({NAME_MAX} bytes)")
    final, suffix = name[:at], name[at:]
    if m := _LEGACY_RE.fullmatch(suffix):
        # AXL's own split: the final is everything before the last marker, whatever it holds.
        if problem := _name_problem(final):
            return Unrecognised(name, problem)
        handle = int(m[1]) if m[1] else None
        if handle is not None and handle >= HANDLE_LIMIT:
            return Unrecognised(name, "the handle is out of range")
        return LegacyName(final, handle)
    if problem := final_problem(final):
        return Unrecognised(name, problem)
    if m := _FILE_RE.fullmatch(suffix):
        mode_s, size_s, mtime_s, handle_s = m.groups()
        size, mtime = int(size_s), int(mtime_s)
        handle = None if handle_s is None else int(handle_s)
        if size >= SIZE_LIMIT or not -MTIME_LIMIT <= mtime < MTIME_LIMIT:
            return Unrecognised(name, "a number is out of range")
        if handle is not None and handle >= HANDLE_LIMIT:
            return Unrecognised(name, "the handle is out of range")
        return TempName(final, int(mode_s, 8), size, mtime, handle)
    if m := _DIR_RE.fullmatch(suffix):
        mtime = int(m[2])
        if not -MTIME_LIMIT <= mtime < MTIME_LIMIT:
            return Unrecognised(name, "a number is out of range")
        return DirMarker(final, int(m[1], 8), mtime)
    return Unrecognised(name, "the suffix after ._AXL does not match format version 1")


def _name_problem(final: bytes) -> str | None:
    if final in (b"", b".", b".."):
        return "the final name is empty, '.' or '..'"
    if b"/" in final or b"\0" in final:
        return "the final name contains '/' or NUL"
    return None


def final_problem(final: bytes) -> str | None:
    """Why `final` cannot be the final name of one of our temporaries, or None when it can."""
    if problem := _name_problem(final):
        return problem
    inner = parse(final)
    if inner is not None and not isinstance(inner, Unrecognised):
        return "the final name itself parses as a temporary"
    return None


def check_final(final: bytes) -> None:
    """Raise `NameFormatError` unless `final` can be the final name of a temporary."""
    if problem := final_problem(final):
        raise NameFormatError(final, problem)


def _join(final: bytes, suffix: bytes) -> bytes:
    name = final + suffix
    if len(name) > NAME_MAX:
        raise NameFormatError(final, f"the temporary's name would be {len(name)} bytes, over NAME_MAX ({NAME_MAX})")
    return name


def _check_range(what: str, value: int, low: int, high: int) -> None:
    if not low <= value < high:
        raise NameFormatError(b"", f"{what} {value} is outside [{low}, {high})")
