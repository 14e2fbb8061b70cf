"""Coverage-guided fuzzing of the bbcmd reply parser with atheris.

    python tools/fuzz/atheris_bbcmd_reply.py -atheris_runs=2000000 [CORPUS_DIR]

`axlstateless.backends.bbcmd_reply` reads the output of another program: whatever it is given, it
returns a typed result or raises `ReplyError`, and nothing else (no KeyError, TypeError, RecursionError,
or a hang).
"""

from __future__ import annotations

import sys

import atheris

# The same calls as the hypothesis job (hypothesis_bbcmd_reply.py, beside this file): only ReplyError
# may come out of them.
with atheris.instrument_imports():
    from hypothesis_bbcmd_reply import parse_all


def test_one_input(data: bytes) -> None:
    parse_all(data.decode("utf-8", "replace"))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
