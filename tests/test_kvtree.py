"""The KVTree file format: AXL's real state files decode to what KVTree's own kvtree_print shows and
re-encode byte for byte; every defect, cut or mutation is a KVTreeError and nothing else."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from axlfixtures import DATA, WITH_STATE, manifest, original_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axlstateless import kvtree
from axlstateless.axlstate import parse_state
from axlstateless.errors import KVTreeError, StateFileError
from axlstateless.kvtree import KVTree, dumps, get_value, is_kvtree, loads

Ordered = list[tuple[bytes, "Ordered"]]
#: Examples per property; ``AXL_FUZZ_EXAMPLES=N`` raises it (tools/fuzz/run.sh does).
EXAMPLES = int(os.environ.get("AXL_FUZZ_EXAMPLES", "300"))


def ordered(tree: KVTree) -> Ordered:
    """The tree with its order made part of equality (dicts compare without it)."""
    return [(key, ordered(child)) for key, child in tree.items()]


def parse_print(text: bytes, prefix: bytes) -> KVTree:
    """kvtree_print's layout (a key per line, two more spaces of indent per level, the top at two),
    with the fixtures' ``$P`` standing for the original prefix."""
    top: KVTree = {}
    stack: list[tuple[int, KVTree]] = [(0, top)]
    for line in text.split(b"\n"):
        if not line:
            continue
        key = line.lstrip(b" ")
        depth = (len(line) - len(key)) // 2
        assert len(line) - len(key) == 2 * depth and depth >= 1, line
        del stack[depth:]
        assert len(stack) == depth, line
        child: KVTree = {}
        stack[-1][1][key.replace(b"$P", prefix)] = child
        stack.append((depth, child))
    return top


def seal(body: bytes, *, crc: bool = True) -> bytes:
    """A header, `body` (a packed hash) and a CRC that all agree, as KVTree's writer makes them."""
    size = 20 + len(body) + (4 if crc else 0)
    data = struct.pack(">IHHQI", kvtree.MAGIC, 1, 1, size, 1 if crc else 0) + body
    return data + struct.pack(">I", zlib.crc32(data)) if crc else data


def reseal(data: bytes) -> bytes:
    """`data` with its header's filesize and its CRC rewritten to match whatever follows the header:
    what a cut or a mutation looks like once KVTree's own checks cannot catch it (KVTree issue 40)."""
    return seal(data[20:-4] if len(data) >= 24 else b"")


@pytest.mark.parametrize("sid", WITH_STATE)
def test_fixture_state_files_decode_as_kvtree_print_shows(sid: str) -> None:
    data = original_state(sid)
    prefix = bytes.fromhex(manifest(sid)["root_hex"])[: -len(sid) - 1]
    expected = parse_print((DATA / f"{sid}.state.txt").read_bytes(), prefix)
    tree = loads(data)
    assert ordered(tree) == ordered(expected)
    assert dumps(tree) == data
    assert len(tree[b"FILE"]) == len(expected[b"FILE"]) > 0


def test_the_documented_example_packs_to_the_documented_bytes() -> None:
    body = b"\0\0\0\x02DEST\0\0\0\0\x01/p/a._AXL\0\0\0\0\0STATUS\0\0\0\0\x013\0\0\0\0\0"
    tree = {b"DEST": {b"/p/a._AXL": {}}, b"STATUS": {b"3": {}}}
    assert dumps(tree) == seal(body)
    assert loads(seal(body)) == tree
    assert loads(seal(body, crc=False)) == tree


@pytest.mark.parametrize("sid", WITH_STATE)
def test_every_cut_of_a_state_file_is_refused(sid: str) -> None:
    data = original_state(sid)
    assert loads(data[:0]) == {}
    for n in range(1, len(data)):
        with pytest.raises(KVTreeError):
            loads(data[:n])


def test_every_cut_resealed_is_refused_by_the_bounds_checks() -> None:
    # A cut whose header and CRC are rewritten to match gets past every check KVTree makes; only the
    # bounds checks of the unpacking stand between it and a read past the buffer.
    data = original_state("f1")
    for n in range(24, len(data)):
        cut = reseal(data[:n])
        with pytest.raises(KVTreeError):
            loads(cut)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x95\x1f\xc3\xf5\0\x01\0\x01", "shorter than the 20-byte header"),
        (b"\x95\x1f\xc3\xf6" + seal(b"\0\0\0\0")[4:], "bad magic"),
        (seal(b"\0\0\0\0")[:4] + b"\0\x02\0\x01" + seal(b"\0\0\0\0")[8:], "type 2 version 1"),
        (seal(b"\0\0\0\0")[:4] + b"\0\x01\0\x02" + seal(b"\0\0\0\0")[8:], "type 1 version 2"),
        (struct.pack(">IHHQI", kvtree.MAGIC, 1, 1, 24, 3) + b"\0\0\0\0", "unknown flags"),
        (struct.pack(">IHHQI", kvtree.MAGIC, 1, 1, 19, 0) + b"\0\0\0\0", "too small"),
        (struct.pack(">IHHQI", kvtree.MAGIC, 1, 1, 22, 1) + b"\0\0\0\0", "too small"),
        (seal(b"\0\0\0\0")[:-1], "truncated"),
        (seal(b"\0\0\0\0") + b"\0", "1 bytes after the end"),
        (seal(b"\0\0\0\0")[:-1] + b"\0", "CRC mismatch"),
        (seal(b"\0\0\0\x01"), "cannot fit"),
        (seal(b"\xff\xff\xff\xff" + b"k\0\0\0\0\0" * 3), "cannot fit"),
        (seal(b"\0\0\0\x01key\0\0\0\0"), "runs past the end"),
        (seal(b"\0\0\0\x01keyxyz"), "no terminating NUL"),
        (seal(b"\0\0\0\0\0"), "garbage after the tree"),
        (seal(b"\0\0\0\x02k\0\0\0\0\0k\0\0\0\0\0"), "twice in one hash"),
        (seal(b"\0\0\0\x01k\0" * 70 + b"\0\0\0\0"), "nested deeper"),
    ],
)
def test_each_defect_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(KVTreeError, match=reason):
        loads(data)


def test_depth_limit_is_the_same_both_ways() -> None:
    deep: KVTree = {}
    for _ in range(kvtree.MAX_DEPTH):
        deep = {b"k": deep}
    assert loads(dumps(deep)) == deep
    assert dumps(deep) == seal(b"\0\0\0\x01k\0" * kvtree.MAX_DEPTH + b"\0\0\0\0")
    with pytest.raises(KVTreeError, match="deeper"):
        dumps({b"k": deep})
    for extra in (1, 2):  # the last levels are a "KEY value" pair and a leaf, decoded on the fast path
        with pytest.raises(KVTreeError, match="deeper"):
            loads(seal(b"\0\0\0\x01k\0" * (kvtree.MAX_DEPTH + extra) + b"\0\0\0\0"))
    with pytest.raises(KVTreeError, match="NUL"):
        dumps({b"a\0b": {}})


def test_is_kvtree_and_get_value() -> None:
    data = original_state("f1")
    assert is_kvtree(data[:8]) and is_kvtree(data)
    assert not is_kvtree(data[:7]) and not is_kvtree(b"\x95\x1f\xc3\xf5\0\x01\0\x02")
    tree = loads(data)
    assert get_value(tree, b"STATE") == b"2"
    assert get_value(tree, b"FILE") is None  # nine children
    assert get_value(tree, b"NOPE") is None
    assert get_value({b"K": {}}, b"K") is None


# Keys are any bytes but NUL, empty included, as C strings are.
keys = st.binary(max_size=6).map(lambda b: b.replace(b"\0", b"\x01"))
trees = st.recursive(st.just({}), lambda sub: st.dictionaries(keys, sub, max_size=4), max_leaves=30)


@given(trees)
def test_round_trip_of_generated_trees(tree: KVTree) -> None:
    data = dumps(tree)
    back = loads(data)
    assert ordered(back) == ordered(tree)
    assert dumps(back) == data


def check_decode(candidate: bytes) -> None:
    """The decoder's invariants on any bytes (also tools/fuzz/atheris_kvtree.py's): `loads` raises
    nothing but KVTreeError, `parse_state` nothing but a StateFileError naming the file, and whatever
    decodes re-encodes to the same body (nothing skipped, invented or reordered)."""
    error: StateFileError | None = None
    try:
        parse_state(b"mutated", candidate)
    except StateFileError as exc:
        error = exc
    assert error is None or error.path == "mutated"
    try:
        tree = loads(candidate)
    except KVTreeError:
        return
    if not candidate:
        assert tree == {}
        return
    flagged = candidate[19] & kvtree.FLAG_CRC32
    assert dumps(tree)[20:-4] == (candidate[20:-4] if flagged else candidate[20:])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(WITH_STATE),
    st.lists(
        st.tuples(
            st.integers(0, 1 << 20),
            st.sampled_from(["flip", "insert", "delete"]),
            st.binary(min_size=1, max_size=4),
        ),
        max_size=6,
    ),
    st.booleans(),
)
def test_mutations_are_refused_or_decoded_never_a_crash(
    sid: str, edits: list[tuple[int, str, bytes]], resealed: bool
) -> None:
    data = bytearray(original_state(sid))
    for where, how, what in edits:
        i = where % (len(data) + 1)
        if how == "flip" and i < len(data):
            data[i] ^= what[0] or 1
        elif how == "insert":
            data[i:i] = what
        else:
            del data[i : i + len(what)]
    check_decode(reseal(bytes(data)) if resealed else bytes(data))
