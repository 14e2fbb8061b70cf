"""The name format, version 1: round trips over arbitrary byte names, and strictness."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from axlstateless import nameformat
from axlstateless.errors import NameFormatError
from axlstateless.nameformat import DirMarker, LegacyName, TempName, Unrecognised, parse

# Any byte but '/' and NUL may stand in a file name.
name_bytes = st.binary(min_size=1, max_size=120).filter(lambda b: b"/" not in b and b"\0" not in b)
finals = name_bytes.filter(lambda b: nameformat.final_problem(b) is None)
temps = st.builds(
    TempName,
    final=finals,
    mode=st.integers(0, 0o7777),
    size=st.integers(0, 2**63 - 1),
    mtime_ns=st.integers(-(2**63), 2**63 - 1),
    handle=st.none() | st.integers(0, 2**64 - 1),
)


@given(temps)
@settings(max_examples=300)
@example(TempName(b"data.0", 0o644, 0, 0))
@example(TempName(b"x._AXLfoo", 0o4755, 1, -1, 0))
@example(TempName("caf\u00e9 \n\xff".encode("latin-1"), 0o400, 5, 7, 2**64 - 1))
def test_file_names_round_trip(temp: TempName) -> None:
    try:
        name = temp.encode()
    except NameFormatError:
        name = b""
    if not name:  # only an over-long name may be refused
        assert len(temp.final) + 40 > nameformat.NAME_MAX
        return
    assert len(name) <= nameformat.NAME_MAX
    assert parse(name) == temp
    assert parse(name).encode() == name  # type: ignore[union-attr]


@given(finals, st.integers(0, 0o7777), st.integers(-(2**63), 2**63 - 1))
@settings(max_examples=100)
def test_dir_markers_round_trip(final: bytes, mode: int, mtime: int) -> None:
    marker = DirMarker(final, mode, mtime)
    try:
        name = marker.encode()
    except NameFormatError:
        assert len(final) > 200
        return
    assert parse(name) == marker


@given(st.binary(max_size=80).filter(lambda b: b"/" not in b and b"\0" not in b))
@settings(max_examples=500)
def test_whatever_parses_is_exactly_an_encoding(name: bytes) -> None:
    """No name outside the grammar parses as a temporary: parse then encode gives the name back."""
    parsed = parse(name)
    if parsed is None:
        assert nameformat.MARKER not in name
    elif isinstance(parsed, TempName | DirMarker):
        assert parsed.encode() == name
    elif isinstance(parsed, LegacyName):
        digits = name.rsplit(b"._AXL", 1)[1]
        assert digits == b"" or digits.isdigit()
        assert parsed.handle == (int(digits) if digits else None)


@given(temps, st.data())
@settings(max_examples=200)
def test_mutated_suffixes_never_parse_as_another_temporary(temp: TempName, data: st.DataObject) -> None:
    """Changing one byte of a valid suffix yields either the same kind of valid name or no temporary."""
    try:
        name = temp.encode()
    except NameFormatError:
        return
    at = name.rfind(b"._AXL")
    pos = data.draw(st.integers(at, len(name) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b not in (0x2F, 0)))
    mutated = name[:pos] + bytes([byte]) + name[pos + 1 :]
    parsed = parse(mutated)
    if isinstance(parsed, TempName | DirMarker):
        assert parsed.encode() == mutated  # canonical: a different valid name, never a misreading


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (b"a._AXL.v1.m0644.s01.t1", "leading zero"),
        (b"a._AXL.v1.m644.s1.t1", "three mode digits"),
        (b"a._AXL.v1.m0844.s1.t1", "bad octal"),
        (b"a._AXL.v1.m0644.s1", "missing field"),
        (b"a._AXL.v1.m0644.s.t1", "empty field"),
        (b"a._AXL.v1.m0644.s1.t1.h", "empty handle"),
        (b"a._AXL.v1.m0644.s1.t1.h1.x", "extra field"),
        (b"a._AXL.v1.s1.m0644.t1", "wrong order"),
        (b"a._AXL.v2.m0644.s1.t1", "unknown version"),
        (b"a._AXL.v1.m0644.s9223372036854775808.t1", "size overflow"),
        (b"a._AXL.v1.m0644.s1.t-0", "negative zero"),
        (b"a._AXL.v1.m0644.s1.t1.h18446744073709551616", "handle overflow"),
        (b"a._AXL.v1.m0644.s1.t99999999999999999999", "mtime overflow"),
        (b"a._AXL.v1.m0644.s1.t1\n", "trailing newline"),
        (b"._AXL.v1.m0644.s1.t1", "empty final name"),
        (b".._AXL.v1.m0644.s1.t1", "final name '..'"),
        (b"a._AXL._AXL.v1.m0644.s1.t1", "final name is legacy"),
        (b"a._AXL.v1.m0644.s1.t1._AXL.v1.m0644.s1.t1", "final name is a temporary"),
        (b"a._AXLx", "letters after the marker"),
    ],
)
def test_malformed_names_are_unrecognised(name: bytes, reason: str) -> None:
    assert isinstance(parse(name), Unrecognised), reason


def test_legacy_names() -> None:
    assert parse(b"ckpt.0._AXL") == LegacyName(b"ckpt.0", None)
    assert parse(b"ckpt.0._AXL13456") == LegacyName(b"ckpt.0", 13456)


def test_examples_from_the_docs() -> None:
    assert parse(b"data.17._AXL.v1.m0444.s1048576.t1700000000123456789.h101") == TempName(
        b"data.17", 0o444, 1048576, 1700000000123456789, 101
    )
    assert parse(b"timestep.0._AXL.v1.dir.m0555.t1700000000000000000") == DirMarker(
        b"timestep.0", 0o555, 1700000000000000000
    )
    assert parse(b"notes.txt") is None


@pytest.mark.parametrize("final", [b"x._AXL", b"x._AXL7", b"x._AXL.v1.m0644.s1.t1", b"a/b", b"", b"..", b"x" * 240])
def test_encode_refuses_what_would_not_round_trip(final: bytes) -> None:
    with pytest.raises(NameFormatError):
        TempName(final, 0o644, 1, 1).encode()


def test_out_of_range_fields_are_refused() -> None:
    with pytest.raises(NameFormatError):
        TempName(b"a", 0o10000, 1, 1).encode()
    with pytest.raises(NameFormatError):
        TempName(b"a", 0o644, -1, 1).encode()
    with pytest.raises(NameFormatError):
        TempName(b"a", 0o644, 1, 1, 2**64).encode()
