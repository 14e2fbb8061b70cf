"""The bbcmd reply parser: the shapes in docs/ibm-bb.md, and a fuzz that it raises nothing but ReplyError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axlstateless.backends.bbcmd_reply import (
    ReplyError,
    parse_handle_info,
    parse_handles,
    parse_reply,
    parse_status,
    parse_transfer_list,
    status_name,
)

NESTED = '{"rc":"0","0":{"id":"1","rc":"0","out":{"numhandles":"2","numavailhandles":"2","handles":"(101,102)"}}}'
FIELD_FAILURE = (
    '{"id":"1","rc":"-2","env":{"configfile":"/etc/ibm/bb.cfg"},'
    '"error":{"text":"Unable to create bb.proxyconnection","func":"BB_InitLibrary"}}'
)


def test_nested_gettransfers() -> None:
    listing = parse_transfer_list(parse_reply(NESTED))
    assert listing.handles == {101, 102}
    assert (listing.numhandles, listing.numavailhandles, listing.cut) == (2, 2, False)


def test_cut_list() -> None:
    text = '{"rc":"0","0":{"rc":"0","out":{"numhandles":"1","numavailhandles":"3","handles":"(5)"}}}'
    assert parse_transfer_list(parse_reply(text)).cut


def test_field_failure() -> None:
    reply = parse_reply(FIELD_FAILURE + "\n")
    assert not reply.ok
    assert reply.rc == -2
    assert reply.describe() == "rc=-2: Unable to create bb.proxyconnection (BB_InitLibrary)"
    with pytest.raises(ReplyError):
        parse_transfer_list(reply)


def test_failure_of_one_rank() -> None:
    text = '{"rc":"0","0":{"rc":"0","out":{"handles":"()"}},"1":{"rc":"-1","error":{"text":"down","func":"f"}}}'
    reply = parse_reply(text)
    assert (reply.ok, reply.rc, reply.error_text) == (False, -1, "down")


def test_log_lines_before_the_reply_are_skipped() -> None:
    assert parse_reply("warning: something\n" + NESTED).ok
    with pytest.raises(ReplyError):
        parse_reply(NESTED + " trailing")


def test_handles_and_statuses() -> None:
    assert parse_handles("()") == ()
    assert parse_handles(" ( 1 , 18446744073709551615 ) ") == (1, 2**64 - 1)
    for bad in ("", "1,2", "(1,,2)", "(-1)", "(18446744073709551616)", "(1,)"):
        with pytest.raises(ReplyError):
            parse_handles(bad)
    assert parse_status("BBFULLSUCCESS").value == 8
    assert parse_status("UNDEFINED (128)").value == 128
    assert not parse_status("UNDEFINED (128)").known
    assert parse_status("BBSOMETHINGNEW").value is None
    assert status_name(0x20) == "BBFAILED"
    assert status_name(0x80) == "UNDEFINED (128)"


def test_getstatus_with_extra_keys() -> None:
    out = {
        "handle": "4294967297",
        "contribid": "0",
        "jobid": "42",
        "jobstepid": "1",
        "tag": "3",
        "numcontrib": "2",
        "status": "UNDEFINED (1024)",
        "numreportingcontribs": "1",
        "totalTransferSize": "100",
        "localstatus": "BBNOTREPORTED",
        "localTransferSize": "0",
        "somethingnew": "x",
    }
    info = parse_handle_info(parse_reply(json.dumps({"rc": "0", "dft": {}, "0": {"rc": "0", "out": out}})))
    assert (info.handle, info.status.value, info.jobstepid, info.tag) == (2**32 + 1, 1024, 1, 3)
    assert info.localstatus is not None
    assert info.localstatus.name == "BBNOTREPORTED"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(["rc", "0", "1", "out", "error", "handles", "numhandles", "numavailhandles", "status", "handle"])
values = st.one_of(
    st.sampled_from(["0", "-2", "()", "(1,2)", "(1", "UNDEFINED (9)", "BBFAILED", "x", "", "99999999999999999999999"]),
    json_values,
)
shaped = st.recursive(values, lambda children: st.dictionaries(keys, children, max_size=5), max_leaves=25)


def parse_everything(text: str) -> None:
    try:
        reply = parse_reply(text)
    except ReplyError:
        return
    for parse in (parse_transfer_list, parse_handle_info):
        with contextlib.suppress(ReplyError):
            parse(reply)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text(text: str) -> None:
    parse_everything(text)


@settings(max_examples=200, deadline=None)
@given(shaped)
def test_fuzz_shaped_json(obj: Any) -> None:
    parse_everything(json.dumps(obj))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="(),0123456789 -", max_size=40), st.text(max_size=30))
def test_fuzz_handles_and_status(handles: str, status: str) -> None:
    for call in (lambda: parse_handles(handles), lambda: parse_status(status)):
        with contextlib.suppress(ReplyError):
            call()


def test_hostile_nesting_depth() -> None:
    with pytest.raises(ReplyError):
        parse_reply("{" + '"a":{' * 100_000)
    with pytest.raises(ReplyError):
        parse_reply('{"rc":"0","0":' * 5000 + "{}" + "}" * 5000)
