"""Many hypothesis examples for the bbcmd reply parser: replies shaped like bbcmd's (ranks, string
values, handle lists, statuses), mutated, truncated and padded. Only `ReplyError` may come out.

    python tools/fuzz/hypothesis_bbcmd_reply.py [EXAMPLES]
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axlstateless.backends.bbcmd_reply import (
    STATUS_VALUES,
    ReplyError,
    parse_handle_info,
    parse_handles,
    parse_reply,
    parse_status,
    parse_transfer_list,
)

KEYS = ["rc", "id", "out", "error", "text", "func", "handles", "numhandles", "numavailhandles", "status"]
KEYS += ["localstatus", "handle", "jobid", "jobstepid", "tag", "numcontrib", "totalTransferSize", "0", "1", "17"]
scalars = st.one_of(
    st.sampled_from([*STATUS_VALUES, "UNDEFINED (4096)", "(1,2,3)", "()", "(,)", "-1", "0", "18446744073709551616"]),
    st.text(max_size=12),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
)
shaped = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)),
    max_leaves=30,
)


def parse_all(text: str) -> None:
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


def run(examples: int) -> None:
    opts = settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)

    @opts
    @given(shaped, st.text(max_size=20), st.text(max_size=20), st.integers(0, 400))
    def replies(obj: Any, before: str, after: str, cut: int) -> None:
        text = json.dumps(obj)
        parse_all(text)
        parse_all(before + text + after)
        parse_all(text[:cut])

    replies()


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
