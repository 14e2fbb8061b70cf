"""Coverage-guided fuzzing of the bbcmd reply parser with atheris (issue 5, item 5).

    python tools/fuzz/atheris_bbcmd_reply.py -atheris_runs=2000000 [CORPUS_DIR]

`axlstateless.backends.bbcmd_reply` reads the output of another program: whatever it is given, it
returns a typed result or raises `ReplyError`, and nothing else (no KeyError, TypeError, RecursionError,
or a hang).
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from axlstateless.backends.bbcmd_reply import (
        ReplyError,
        parse_handle_info,
        parse_handles,
        parse_reply,
        parse_status,
        parse_transfer_list,
    )


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for parse in (parse_handles, parse_status):
        with contextlib.suppress(ReplyError):
            parse(text)
    try:
        reply = parse_reply(text)
    except ReplyError:
        return
    for follow in (parse_transfer_list, parse_handle_info):
        with contextlib.suppress(ReplyError):
            follow(reply)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
