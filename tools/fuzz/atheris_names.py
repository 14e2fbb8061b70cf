"""Coverage-guided fuzzing of the temporary-name parser with atheris (issue 5, item 5).

    python tools/fuzz/atheris_names.py -atheris_runs=2000000 [CORPUS_DIR]

The invariants are those of tests/test_fuzz_names.py: `parse` never raises, accepts nothing longer than
NAME_MAX, and whatever it accepts as a temporary or marker `encode` gives back byte for byte; `encode`
of any record either raises NameFormatError or makes a name that parses back to the same record.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from axlstateless.errors import NameFormatError
    from axlstateless.nameformat import (
        MARKER,
        NAME_MAX,
        DirMarker,
        LegacyName,
        TempName,
        Unrecognised,
        final_problem,
        parse,
    )


def check_name(name: bytes) -> None:
    parsed = parse(name)
    if MARKER not in name:
        assert parsed is None
        return
    assert parsed is not None
    if isinstance(parsed, Unrecognised):
        assert parsed.name == name
        return
    assert len(name) <= NAME_MAX
    assert final_problem(parsed.final) is None
    if isinstance(parsed, LegacyName):
        digits = name[len(parsed.final) + len(MARKER) :]
        assert parsed.handle == (int(digits) if digits else None)
        assert parsed.handle is None or parsed.handle < 2**64
        return
    assert isinstance(parsed, TempName | DirMarker)
    assert parsed.encode() == name


def check_record(fdp: atheris.FuzzedDataProvider) -> None:
    final = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
    mode = fdp.ConsumeIntInRange(-1, 0o10000)
    size = fdp.ConsumeIntInRange(-1, 2**64)
    mtime = fdp.ConsumeIntInRange(-(2**64), 2**64)
    handle = fdp.ConsumeIntInRange(-1, 2**65) if fdp.ConsumeBool() else None
    record: TempName | DirMarker
    record = TempName(final, mode, size, mtime, handle) if fdp.ConsumeBool() else DirMarker(final, mode, mtime)
    try:
        name = record.encode()
    except NameFormatError:
        return
    assert parse(name) == record


def test_one_input(data: bytes) -> None:
    check_name(data)
    check_record(atheris.FuzzedDataProvider(data))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
