"""Fuzzing the name parser: whatever bytes a user puts in a directory entry, `parse`
never raises, never takes long, and accepts as a temporary exactly the names `encode` produces.

The suite runs a bounded number of examples; ``AXL_FUZZ_EXAMPLES=N`` raises it (tools/fuzz/run.sh does,
and also runs an atheris harness over the same properties).
"""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from axlstateless import DirMarker, LegacyName, NameFormatError, TempName, Unrecognised, parse
from axlstateless.nameformat import HANDLE_LIMIT, MARKER, MTIME_LIMIT, NAME_MAX, SIZE_LIMIT, final_problem

EXAMPLES = int(os.environ.get("AXL_FUZZ_EXAMPLES", "300"))
fuzz = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)

# Bytes that matter to the grammar, so that random names hit its edges often.
GRAMMAR = [b"._AXL", b".v1", b".m", b".s", b".t", b".h", b".dir", b"-", b"0", b"7", b"9", b".", b"/", b"\0", b"\n"]
pieces = st.one_of(st.sampled_from(GRAMMAR), st.binary(max_size=4), st.integers(0, 2**70).map(lambda n: b"%d" % n))
grammarish = st.lists(pieces, max_size=14).map(b"".join)
names = st.one_of(st.binary(max_size=300), grammarish)
finals = st.binary(min_size=1, max_size=60).filter(lambda f: final_problem(f) is None)
temp_names = st.builds(
    TempName,
    final=finals,
    mode=st.integers(0, 0o7777),
    size=st.integers(0, SIZE_LIMIT - 1),
    mtime_ns=st.integers(-MTIME_LIMIT, MTIME_LIMIT - 1),
    handle=st.none() | st.integers(0, HANDLE_LIMIT - 1),
)


def check_parse(name: bytes) -> None:
    """The invariants every name must keep; shared with tools/fuzz/atheris_names.py."""
    parsed = parse(name)
    if MARKER not in name:
        assert parsed is None
        return
    assert parsed is not None
    if isinstance(parsed, Unrecognised):
        assert parsed.name == name
        return
    assert len(name) <= NAME_MAX  # nothing longer is a temporary: encode could not have made it
    # Whatever was accepted names a valid final name in the same directory...
    assert parsed.final not in (b"", b".", b"..")
    assert b"/" not in parsed.final and b"\0" not in parsed.final
    assert name.startswith(parsed.final)
    if isinstance(parsed, LegacyName):
        # ...split as AXL splits it: at the last marker, whatever the final holds (it may hold the marker).
        assert name.rfind(MARKER) == len(parsed.final)
        digits = name[len(parsed.final) + len(MARKER) :]
        assert name[len(parsed.final) :].startswith(MARKER)
        assert digits.isdigit() or digits == b""
        assert parsed.handle == (int(digits) if digits else None)
        assert parsed.handle is None or parsed.handle < HANDLE_LIMIT  # a uint64, as the BB's handles
        return
    # One of ours: its final part parses as nothing (so the suffix alone tells v1 from legacy)...
    assert final_problem(parsed.final) is None
    # ...and is canonical: encoding it gives back the very same bytes (so no malformed name is ever
    # read as a temporary, and there is one name per record).
    assert isinstance(parsed, TempName | DirMarker)
    assert parsed.encode() == name


@fuzz
@given(names)
@example(b"f._AXL.v1.m0644.s1.t0._AXL.v1.m0644.s1.t0")
@example(b"\xff._AXL.v1.m7777.s9223372036854775807.t-9223372036854775808.h18446744073709551615")
@example(b"._AXL._AXL")
def test_parse_keeps_its_invariants(name: bytes) -> None:
    check_parse(name)


@fuzz
@given(temp_names)
def test_encode_parse_round_trip(tn: TempName) -> None:
    try:
        name = tn.encode()
    except NameFormatError:
        assert len(tn.final) + 40 > NAME_MAX  # only length can make a valid record unencodable
        return
    assert len(name) <= NAME_MAX
    assert parse(name) == tn
    check_parse(name)


@fuzz
@given(temp_names, st.data())
def test_one_byte_mutations_of_a_valid_name(tn: TempName, data: st.DataObject) -> None:
    """Flip, drop or insert one byte of a valid name: the result is either exactly some other valid
    encoding (parse agrees with encode), or not a temporary at all."""
    try:
        name = tn.encode()
    except NameFormatError:
        return
    at = data.draw(st.integers(0, len(name)))
    byte = data.draw(st.binary(min_size=1, max_size=1))
    how = data.draw(st.sampled_from(["replace", "drop", "insert"]))
    if how == "replace" and at < len(name):
        mutated = name[:at] + byte + name[at + 1 :]
    elif how == "drop" and at < len(name):
        mutated = name[:at] + name[at + 1 :]
    else:
        mutated = name[:at] + byte + name[at:]
    check_parse(mutated)


@fuzz
@given(st.integers(300, 200_000), st.sampled_from([b"9", b"0", b"._AXL", b"._AXL.v1.m0644.s1", b".t-"]))
def test_hostile_long_names_parse_fast(repeat: int, unit: bytes) -> None:
    """No input makes the parser backtrack or recurse for long (regression: a name with thousands of
    markers raised RecursionError)."""
    name = b"f._AXL.v1.m0644.s" + unit * repeat + b".t0"
    started = time.perf_counter()
    assert isinstance(parse(name), Unrecognised)
    assert time.perf_counter() - started < 0.5


def test_many_markers_within_name_max() -> None:
    """50 nested markers fit in 255 bytes: each is the legacy temporary of the name one marker shorter,
    split at the last marker as AXL does (``x._AXL7._AXL`` is the temporary of ``x._AXL7``)."""
    for depth in range(1, 51):
        name = b"a" + b"._AXL" * depth
        assert parse(name) == LegacyName(b"a" + b"._AXL" * (depth - 1), None), depth
    assert parse(b"x._AXL7._AXL") == LegacyName(b"x._AXL7", None)
    assert parse(b"-dash._AXL3._AXL12") == LegacyName(b"-dash._AXL3", 12)
    # A v1 name never has a final that parses: the suffix after the last marker tells them apart.
    assert isinstance(parse(b"a._AXL._AXL.v1.m0644.s1.t1"), Unrecognised)


def test_legacy_handles_are_bounded() -> None:
    """Regression: a legacy suffix of 21+ digits, or a value over uint64, is not a handle;
    thousands of digits made parse raise ValueError (int()'s digit limit)."""
    assert parse(b"ckpt.0._AXL18446744073709551615") == LegacyName(b"ckpt.0", 2**64 - 1)
    assert isinstance(parse(b"ckpt.0._AXL18446744073709551616"), Unrecognised)
    assert isinstance(parse(b"ckpt.0._AXL" + b"9" * 250), Unrecognised)
    assert isinstance(parse(b"ckpt.0._AXL" + b"9" * 5000), Unrecognised)


# Any final AXL could be given: any bytes but "/" and NUL, the marker included (AXL never checks it).
axl_finals = st.lists(
    st.one_of(st.sampled_from([b"._AXL", b"._AXL7", b".v1.m0644.s1.t0", b"."]), st.binary(max_size=6))
)
axl_finals = axl_finals.map(b"".join).filter(lambda f: f not in (b"", b".", b"..") and b"/" not in f and b"\0" not in f)


@fuzz
@given(axl_finals, st.none() | st.integers(0, HANDLE_LIMIT - 1))
@example(b"x._AXL7", None)
@example(b"notes._AXL", None)
@example(b"f._AXL.v1.m0644.s1.t0", 3)
def test_legacy_names_split_as_axl_splits_them(final: bytes, handle: int | None) -> None:
    """Whatever AXL's final, ``<final>._AXL[<handle>]`` is the legacy temporary of exactly that final
    (axl_remove_extension: the last marker), never one of ours."""
    name = final + MARKER + (b"" if handle is None else b"%d" % handle)
    if len(name) > NAME_MAX:
        assert isinstance(parse(name), Unrecognised)
        return
    assert parse(name) == LegacyName(final, handle)
    check_parse(name)


@fuzz
@given(temp_names)
def test_our_names_are_never_legacy_and_never_the_final_of_one(tn: TempName) -> None:
    """The suffix after the last marker tells the two apart: ours starts ``.v1.``, a legacy one is digits
    or nothing; and one of ours with AXL's extension added is AXL's temporary of our name."""
    try:
        name = tn.encode()
    except NameFormatError:
        return
    assert not isinstance(parse(name), LegacyName)
    wrapped = name + MARKER
    if len(wrapped) <= NAME_MAX:
        assert parse(wrapped) == LegacyName(name, None)
