"""Coverage-guided fuzzing of the KVTree decoder and the AXL state-file reader with atheris.

    python tools/fuzz/atheris_kvtree.py -atheris_runs=2000000 [CORPUS_DIR]

The invariants are those of tests/test_kvtree.py (`check_decode`): `loads` raises nothing but
KVTreeError, `parse_state` nothing but a StateFileError naming the file, and whatever decodes re-encodes
to the same body. Half the inputs are taken as they are; the other half get a header and CRC that agree
with them, so that the fuzzer reaches the unpacking's bounds checks instead of stopping at the CRC.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import atheris

# The invariants are the suite's own, not a copy that could drift from them.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

with atheris.instrument_imports():
    from test_kvtree import check_decode

    from axlstateless import kvtree


def sealed(body: bytes) -> bytes:
    head = struct.pack(">IHHQI", kvtree.MAGIC, 1, 1, 20 + len(body) + 4, kvtree.FLAG_CRC32) + body
    return head + struct.pack(">I", zlib.crc32(head))


def test_one_input(data: bytes) -> None:
    if data[:1] == b"\x01":
        check_decode(sealed(data[21:-4] if data[1:5] == b"\x95\x1f\xc3\xf5" else data[1:]))
    else:
        check_decode(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
