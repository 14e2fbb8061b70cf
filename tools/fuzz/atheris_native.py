"""Coverage-guided fuzzing of the native name parser against the Python one, with atheris.

    python tools/fuzz/atheris_native.py -atheris_runs=2000000 [CORPUS_DIR]

The invariant is the suite's (tests/test_fastpath.py `check_agree`): on every input, the C parser in
`axlstateless._fastcore` classifies the name as `nameformat.parse` does and, for a file temporary,
decodes the same fields. Needs the extension built (``pip install .`` or
``python setup.py build_ext --inplace``). Only the Python side is instrumented: atheris cannot see
inside the C extension, so the Python parser's branches guide the search.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

with atheris.instrument_imports():
    from test_fastpath import check_agree


def main() -> None:
    atheris.Setup(sys.argv, check_agree)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
