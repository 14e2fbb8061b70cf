"""The KVTree v1.5.0 file format (github.com/ECP-VeloC/KVTree), the format of AXL's state files.

A kvtree is a hash of byte-string keys, each with a child hash; "KEY value" is the key KEY whose child
hash holds exactly one key, the value's text. The file (docs/axl.md, "The state file's bytes"):

    magic u32 | type u16 = 1 | version u16 = 1 | filesize u64 | flags u32 (0x1: CRC) | hash | crc u32
    hash    = count u32, then count times: key bytes, NUL, hash (the child)

all big-endian, nothing padded, the CRC a zlib ``crc32`` of every byte before it.

KVTree's own reader (``kvtree_read_fd``) checks the header, the file size and the CRC, then unpacks
with no bounds checks (KVTree issue 40: github.com/ECP-VeloC/KVTree/issues/40). `loads` is stricter:
every count and key is checked against the end of the file, and any defect is a `KVTreeError`, so a
state file is either read whole or not used at all.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final, TypeAlias

from .errors import KVTreeError

__all__ = [
    "FLAG_CRC32",
    "HEADER_SIZE",
    "MAGIC",
    "MAGIC_HEAD",
    "MAX_DEPTH",
    "TYPE_HASH",
    "VERSION_HASH_1",
    "KVTree",
    "KVTreeError",
    "dumps",
    "get_value",
    "is_kvtree",
    "loads",
]

MAGIC: Final = 0x951FC3F5
TYPE_HASH: Final = 1
VERSION_HASH_1: Final = 1
HEADER_SIZE: Final = 20
FLAG_CRC32: Final = 0x1
#: AXL's trees are four levels deep (FILE / source / key / value); KVTree sets no limit, and a crafted
#: file could otherwise nest as deep as its size allows.
MAX_DEPTH: Final = 64

#: A hash: each key (bytes without NUL) maps to its child hash, in the order of the file.
KVTree: TypeAlias = dict[bytes, "KVTree"]

_HEAD: Final = struct.Struct(">IHHQI")
_U32: Final = struct.Struct(">I")
#: The first 8 bytes of every KVTree file: magic, type 1, version 1.
MAGIC_HEAD: Final = _HEAD.pack(MAGIC, TYPE_HASH, VERSION_HASH_1, 0, 0)[:8]
#: The smallest element: a NUL (empty key) and an empty child hash (count 0).
_MIN_ELEMENT: Final = 5
_COUNT_0: Final = b"\0\0\0\0"
_COUNT_1: Final = b"\0\0\0\x01"


def is_kvtree(head: bytes) -> bool:
    """True if `head`, the first bytes of a file (at least 8), carry the magic, type 1 and version 1."""
    return head[:8] == MAGIC_HEAD


def loads(data: bytes) -> KVTree:
    """Decode a whole KVTree file; raise `KVTreeError` on any defect, never read out of bounds.

    0 bytes decode to ``{}`` as in KVTree (AXL leaves an empty state file when killed while rewriting
    it; the state-file layer refuses it). Refused: a header shorter than 20 bytes; a wrong magic, type
    or version; unknown flag bits; a filesize below the header (plus the CRC when flagged); fewer bytes
    than the filesize, or more (KVTree ignores bytes after it; AXL truncates on every rewrite, so they
    mean another writer); a CRC mismatch (when flagged); a count or key that runs past the end; bytes
    left over after the top hash; a key twice in one hash (KVTree merges them); nesting deeper than
    `MAX_DEPTH`.
    """
    data = bytes(data)
    size = len(data)
    if size == 0:
        return {}
    if size < HEADER_SIZE:
        raise KVTreeError(f"{size} bytes: shorter than the {HEADER_SIZE}-byte header")
    magic, ftype, version, filesize, flags = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise KVTreeError(f"bad magic 0x{magic:08x} (not a kvtree file)")
    if ftype != TYPE_HASH or version != VERSION_HASH_1:
        raise KVTreeError(f"kvtree type {ftype} version {version}; only type 1 version 1 is known")
    if flags & ~FLAG_CRC32:
        raise KVTreeError(f"unknown flags 0x{flags:08x}")
    crc = flags & FLAG_CRC32
    end = filesize - 4 if crc else filesize
    if end < HEADER_SIZE:
        raise KVTreeError(f"header gives a filesize of {filesize} bytes, too small")
    if size < filesize:
        raise KVTreeError(f"truncated: {size} bytes, the header says {filesize}")
    if size > filesize:
        raise KVTreeError(f"{size - filesize} bytes after the end the header gives ({filesize} bytes)")
    if crc:
        (stored,) = _U32.unpack_from(data, end)
        computed = zlib.crc32(memoryview(data)[:end])
        if stored != computed:
            raise KVTreeError(f"CRC mismatch: file says 0x{stored:08x}, content gives 0x{computed:08x}")
    tree, pos = _unpack(data, HEADER_SIZE, end, 0)
    if pos != end:
        raise KVTreeError(f"{end - pos} bytes of garbage after the tree at offset {pos}")
    return tree


def _unpack(data: bytes, pos: int, end: int, depth: int) -> tuple[KVTree, int]:
    if depth > MAX_DEPTH:
        raise KVTreeError(f"nested deeper than {MAX_DEPTH} levels at offset {pos}")
    if end - pos < 4:
        raise KVTreeError(f"hash count at offset {pos} runs past the end ({end})")
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    if count * _MIN_ELEMENT > end - pos:
        raise KVTreeError(f"hash of {count} keys at offset {pos - 4} cannot fit in the {end - pos} bytes left")
    # Most elements of a state file are "KEY value" pairs and their leaves: both are decoded here
    # without a call per element (a third of the time of a state file), as long as the depth they
    # reach is within the limit the general path enforces.
    shallow = depth + 2 <= MAX_DEPTH
    find = data.find
    tree: KVTree = {}
    for _ in range(count):
        nul = find(b"\0", pos, end)
        if nul < 0:
            raise KVTreeError(f"key at offset {pos} has no terminating NUL before the end ({end})")
        key = data[pos:nul]
        if key in tree:
            raise KVTreeError(f"key {key!r} twice in one hash (offset {pos})")
        pos = nul + 1
        head = data[pos : pos + 4] if pos + 4 <= end else b""
        if shallow and head == _COUNT_0:
            tree[key] = {}
            pos += 4
            continue
        if shallow and head == _COUNT_1:
            vnul = find(b"\0", pos + 4, end)
            if vnul >= 0 and vnul + 5 <= end and data[vnul + 1 : vnul + 5] == _COUNT_0:
                tree[key] = {data[pos + 4 : vnul]: {}}
                pos = vnul + 5
                continue
        tree[key], pos = _unpack(data, pos, end, depth + 1)
    return tree, pos


def dumps(tree: KVTree) -> bytes:
    """Encode `tree` as KVTree's writer does (``kvtree_write_fd``): CRC flagged, keys in dict order.

    For any file `loads` accepted with its CRC flag set, ``dumps(loads(data)) == data``. Raises
    `KVTreeError` for a key holding a NUL or a tree deeper than `MAX_DEPTH` (`loads` would refuse it).
    """
    parts: list[bytes] = [b""]
    _pack(tree, parts, 0)
    filesize = sum(map(len, parts)) + HEADER_SIZE + 4
    parts[0] = _HEAD.pack(MAGIC, TYPE_HASH, VERSION_HASH_1, filesize, FLAG_CRC32)
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


def _pack(tree: KVTree, parts: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise KVTreeError(f"tree nested deeper than {MAX_DEPTH} levels")
    parts.append(_U32.pack(len(tree)))
    for key, child in tree.items():
        if b"\0" in key:
            raise KVTreeError(f"key {key!r} holds a NUL, which a kvtree key cannot")
        parts.append(key + b"\0")
        _pack(child, parts, depth + 1)


def get_value(tree: KVTree, key: bytes) -> bytes | None:
    """The value of "KEY value": the one key of `key`'s child hash (``kvtree_get_val``).

    None when `key` is absent or its child hash does not hold exactly one key, as in KVTree."""
    child = tree.get(key)
    if child is None or len(child) != 1:
        return None
    return next(iter(child))
