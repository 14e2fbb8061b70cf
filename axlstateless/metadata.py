"""Extras that do not fit in the name, kept in ``user.axl.*`` extended attributes when the file system has
them: access time, expected owner, source path. Their absence degrades nothing the name carries.

All calls act on an open file descriptor, never on a path (a path could be swapped for a symlink).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Final

import xattr

#: atime, uid and gid in one attribute: the finalizer reads it with a single fgetxattr per temporary.
META_ATTR: Final = "user.axl.meta"
#: The source path, for people and for `status`; the finalizer never reads it.
SOURCE_ATTR: Final = "user.axl.source"

_META_INT: Final = re.compile(rb"-?[0-9]{1,20}")
_CANONICAL_META: Final = re.compile(rb"atime=(-?[0-9]{1,20});uid=([0-9]{1,20});gid=([0-9]{1,20})")

# Errors that mean "this file system (or this file) has no user xattrs": not a failure of ours.
_NO_XATTRS: Final = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM, errno.EACCES})


@dataclass(slots=True)
class Extras:
    """Read once per temporary: not frozen, which costs a setattr call per field to build."""

    atime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None
    source: bytes | None = None

    def encode_meta(self) -> bytes:
        fields = (("atime", self.atime_ns), ("uid", self.uid), ("gid", self.gid))
        return b";".join(b"%s=%d" % (k.encode(), v) for k, v in fields if v is not None)


def decode_meta(raw: bytes) -> Extras:
    """Parse ``user.axl.meta``; unknown keys and malformed fields are ignored (they are only extras)."""
    # What pre-stage writes matches in one regex call, read once per temporary (measured: the field loop
    # cost more than the fgetxattr itself).
    if m := _CANONICAL_META.fullmatch(raw):
        atime, uid, gid = m.groups()
        return Extras(int(atime), int(uid), int(gid))
    values: dict[str, int] = {}
    for field in raw.split(b";"):
        key, sep, value = field.partition(b"=")
        if sep and _META_INT.fullmatch(value):
            values[key.decode("ascii", "replace")] = int(value)
    return Extras(atime_ns=values.get("atime"), uid=values.get("uid"), gid=values.get("gid"))


def write_extras(fd: int, extras: Extras) -> bool:
    """Store `extras` on the open file; False when the file system keeps no user xattrs.

    ENOSPC and EDQUOT are raised: a full file system is the user's to know about, not an extra to drop.
    """
    try:
        meta = extras.encode_meta()
        if meta:
            xattr.setxattr(fd, META_ATTR, meta)
        if extras.source is not None:
            xattr.setxattr(fd, SOURCE_ATTR, extras.source)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return False
        raise
    return True


def read_extras(fd: int, *, with_source: bool = False) -> Extras:
    """The extras on the open file; empty when there are none or the file system has no xattrs."""
    try:
        # os.getxattr, not the xattr package, on this per-temporary path: the package's cffi wrapper
        # cost 7 us a call against 2.5 us (measured); writes still go through the package.
        extras = decode_meta(os.getxattr(fd, META_ATTR))
    except OSError as exc:
        if exc.errno in _NO_XATTRS or exc.errno in {errno.E2BIG, errno.ERANGE}:
            extras = Extras()
        else:
            raise
    if with_source:
        try:
            source: bytes | None = xattr.getxattr(fd, SOURCE_ATTR)
        except OSError:
            source = None
        extras = Extras(extras.atime_ns, extras.uid, extras.gid, source)
    return extras
