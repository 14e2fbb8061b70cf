"""AXL state files made for tests, with the project's own kvtree writer, in the shape AXL v0.9.0 writes
them (tests/data/axl: keys and values as `axl_cp -a` with AXL_USE_EXTENSION=1 records them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from axlstateless import kvtree


@dataclass(frozen=True)
class Entry:
    """One FILE entry: the source path, the DEST written, and the source's metadata as AXL records it."""

    source: bytes
    dest: bytes
    size: int
    mode: int  # the full st_mode, type bits included (0o100644)
    mtime_ns: int
    atime_ns: int
    uid: int
    gid: int
    status: int = 3  # copied


def _kv(value: bytes | int) -> kvtree.KVTree:
    return {value if isinstance(value, bytes) else str(value).encode(): {}}


def state_tree(
    path: bytes,
    entries: list[Entry],
    *,
    state: int = 2,
    status: int = 3,
    use_extension: int = 1,
    handle: int | None = None,
    xfer_type: int = 2,
) -> kvtree.KVTree:
    files: kvtree.KVTree = {}
    for e in reversed(entries):  # kvtree_set inserts at the head: the last added is written first
        files[e.source] = {
            b"STATUS": _kv(e.status),
            b"MTIME_NSECS": _kv(e.mtime_ns % 10**9),
            b"MTIME_SECS": _kv(e.mtime_ns // 10**9),
            b"CTIME_NSECS": _kv(0),
            b"CTIME_SECS": _kv(e.mtime_ns // 10**9),
            b"ATIME_NSECS": _kv(e.atime_ns % 10**9),
            b"ATIME_SECS": _kv(e.atime_ns // 10**9),
            b"SIZE": _kv(e.size),
            b"GID": _kv(e.gid),
            b"UID": _kv(e.uid),
            b"MODE": _kv(e.mode),
            b"DEST": _kv(e.dest),
        }
    tree: kvtree.KVTree = {
        b"STATUS": _kv(status),
        b"STATE": _kv(state),
        b"FILE": files,
        b"COPY_METADATA": _kv(1),
        b"USE_EXTENSION": _kv(use_extension),
        b"MKDIR": _kv(1),
        b"FILE_BUF_SIZE": _kv(33554432),
        b"NAME": _kv(b"axl_cp"),
        b"TYPE": _kv(5 if handle is not None else xfer_type),
        b"STATE_FILE": _kv(path),
    }
    if handle is not None:
        tree[b"BB_TransferHandle"] = _kv(handle)
    return tree


def write_state(path: Path, entries: list[Entry], **top: int | None) -> Path:
    """Write an AXL state file at `path` naming `entries`; `top` overrides the transfer's fields."""
    path.write_bytes(kvtree.dumps(state_tree(os.fsencode(path), entries, **top)))  # type: ignore[arg-type]
    return path
