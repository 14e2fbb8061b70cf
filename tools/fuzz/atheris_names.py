"""Coverage-guided fuzzing of the temporary-name parser with atheris.

    python tools/fuzz/atheris_names.py -atheris_runs=2000000 [CORPUS_DIR]

The invariants are those of tests/test_fuzz_names.py: `parse` never raises, accepts nothing longer than
NAME_MAX, and whatever it accepts as a temporary or marker `encode` gives back byte for byte; `encode`
of any record either raises NameFormatError or makes a name that parses back to the same record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# The invariants are the suite's own (tests/test_fuzz_names.py), not a copy that could drift from them.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

with atheris.instrument_imports():
    from test_fuzz_names import check_parse

    from axlstateless.errors import NameFormatError
    from axlstateless.nameformat import DirMarker, TempName, parse


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
    check_parse(data)
    check_record(atheris.FuzzedDataProvider(data))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
