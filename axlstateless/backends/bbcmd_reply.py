"""Parse what IBM CAST's ``bbcmd`` prints into typed results; pure functions, no I/O.

The facts this follows (docs/ibm-bb.md): the reply is JSON written by Boost's property
tree, so every value is a string (``"rc":"0"``); with ``--target`` each rank's reply nests under its rank
number and the top level keeps ``rc``; ``gettransfers`` puts ``handles`` under ``out`` as ONE string such
as ``"(101,102)"``; a status outside the known names prints as ``UNDEFINED (n)``. Keys this module does not
need are ignored, so a newer CAST that adds fields does not break us.

Anything that is not such a reply raises `ReplyError` (a `ValueError`) and nothing else: the input is
the output of another program, so the parser is fuzzed to keep that promise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

#: Transfer status bit values, from bb/include/BBStatus.h.
STATUS_VALUES: Final[Mapping[str, int]] = {
    "BBNONE": 0x0,
    "BBNOTSTARTED": 0x1,
    "BBINPROGRESS": 0x2,
    "BBPARTIALSUCCESS": 0x4,
    "BBFULLSUCCESS": 0x8,
    "BBCANCELED": 0x10,
    "BBFAILED": 0x20,
    "BBSTOPPED": 0x40,
    "BBNOTACONTRIB": 0x100,
    "BBNOTREPORTED": 0x200,
}
_NAMES_BY_VALUE: Final[Mapping[int, str]] = {value: name for name, value in STATUS_VALUES.items()}

#: Statuses in which a transfer is still going to move data.
ACTIVE_STATUSES: Final = ("BBNOTSTARTED", "BBINPROGRESS")
#: Statuses in which a transfer is over without having moved all its data.
FAILED_STATUSES: Final = ("BBFAILED", "BBCANCELED", "BBSTOPPED", "BBPARTIALSUCCESS")

HANDLE_LIMIT: Final = 2**64  # BBTransferHandle_t is a uint64_t
_EXCERPT: Final = 300
_UNDEFINED = re.compile(r"UNDEFINED\s*\(\s*(?:0[xX]([0-9a-fA-F]{1,16})|([0-9]{1,20}))\s*\)")
_HANDLES = re.compile(r"\(\s*([0-9]+(?:\s*,\s*[0-9]+)*)?\s*\)")
_RANK_KEY = re.compile(r"[0-9]{1,9}")  # rank numbers; the bound keeps int() of a hostile key cheap


class ReplyError(ValueError):
    """The text is not a bbcmd reply this module understands; `excerpt` is its start, for messages."""

    def __init__(self, reason: str, text: str = "") -> None:
        self.reason = reason
        self.excerpt = excerpt(text)
        super().__init__(f"{reason}: {self.excerpt!r}" if text else reason)


def excerpt(text: str) -> str:
    """The start of `text`, short enough for one log line."""
    text = text.strip()
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


@dataclass(frozen=True, slots=True)
class BBStatus:
    """One status as bbcmd names it; `value` is None for a name this module does not know."""

    name: str
    value: int | None

    @property
    def known(self) -> bool:
        return self.value is not None and self.value in _NAMES_BY_VALUE


def status_name(value: int) -> str:
    """The name bbcmd prints for a status value (``UNDEFINED (n)`` for one outside the table)."""
    return _NAMES_BY_VALUE.get(value, f"UNDEFINED ({value})")


def parse_status(text: str) -> BBStatus:
    """A status field: a known name, ``UNDEFINED (n)``, or another name kept as it is (value None)."""
    name = text.strip()
    if not name:
        raise ReplyError("empty status")
    if name in STATUS_VALUES:
        return BBStatus(name, STATUS_VALUES[name])
    m = _UNDEFINED.fullmatch(name)
    if m:
        return BBStatus(name, int(m[1], 16) if m[1] else int(m[2], 10))
    return BBStatus(name, None)


def parse_handles(text: str) -> tuple[int, ...]:
    """bbcmd's handle list, one string such as ``"(101,102)"`` or ``"()"``."""
    m = _HANDLES.fullmatch(text.strip())
    if not m:
        raise ReplyError("a handle list is not of the form (h1,h2,...)", text)
    if m[1] is None:
        return ()
    return tuple(_handle(part, text) for part in m[1].split(","))


def _handle(part: object, context: str) -> int:
    value = _uint(part, "handle")
    if value >= HANDLE_LIMIT:
        raise ReplyError("a handle is out of the uint64 range", context)
    return value


def _uint(value: object, what: str) -> int:
    # Boost writes every value as a string; a hand-written stand-in may write numbers, which we accept.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ReplyError(f"{what} is not a number", repr(value))
    try:
        number = int(value.strip(), 10) if isinstance(value, str) else value
    except ValueError:  # also Python's limit on the digits of an int
        raise ReplyError(f"{what} is not a number", str(value)[:_EXCERPT]) from None
    if number < 0:
        raise ReplyError(f"{what} is negative", str(value))
    return number


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ReplyError(f"{what} is not a number", repr(value))
    try:
        return int(value.strip(), 10) if isinstance(value, str) else value
    except ValueError:
        raise ReplyError(f"{what} is not a number", str(value)[:_EXCERPT]) from None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Reply:
    """One bbcmd reply: its return code, its error (if any) and each answering rank's object."""

    rc: int
    error_text: str
    error_func: str
    ranks: tuple[Mapping[str, object], ...]  # the top object itself when the reply is not nested

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def describe(self) -> str:
        """``rc=-2: Unable to create bb.proxyconnection (BB_InitLibrary)``: the failure, for one line."""
        text = f"rc={self.rc}"
        if self.error_text:
            text += f": {self.error_text}"
        if self.error_func:
            text += f" ({self.error_func})"
        return text


def parse_reply(text: str) -> Reply:
    """Parse bbcmd's JSON output, nested under ranks (``--target``) or not.

    Log lines before the JSON object are skipped; anything after it is refused. A reply whose top
    level or any rank has a non-zero ``rc`` is returned with that rc (`Reply.ok` is False), not raised:
    only unreadable output raises `ReplyError`.
    """
    start = _json_start(text)
    try:
        obj, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
        raise ReplyError("bbcmd's output is not JSON", text) from None
    if text[end:].strip():
        raise ReplyError("bbcmd's output has text after its JSON reply", text)
    if not isinstance(obj, dict):
        raise ReplyError("bbcmd's reply is not a JSON object", text)
    ranks = tuple(
        obj[k] for k in sorted((k for k in obj if _RANK_KEY.fullmatch(k)), key=int) if isinstance(obj[k], dict)
    )
    if not ranks:
        if "rc" not in obj:
            raise ReplyError("bbcmd's reply has no rc", text)
        ranks = (obj,)
    rc: int | None = _int(obj["rc"], "rc") if "rc" in obj else None
    error_text, error_func = _error(obj)
    for rank in ranks:
        rank_rc = _int(rank["rc"], "a rank's rc") if "rc" in rank else None
        if rank_rc is not None and rank_rc != 0:
            if not rc:
                rc = rank_rc
            if not error_text:
                error_text, error_func = _error(rank)
    if rc is None:
        if not all("rc" in rank for rank in ranks):
            raise ReplyError("bbcmd's reply has no rc", text)
        rc = 0
    return Reply(rc, error_text, error_func, ranks)


def _json_start(text: str) -> int:
    if text.lstrip().startswith("{"):
        return len(text) - len(text.lstrip())
    # Tolerate log lines ahead of the reply, as long as the reply starts a line of its own.
    pos = text.find("\n{")
    if pos < 0:
        raise ReplyError("bbcmd's output is not JSON", text)
    return pos + 1


def _error(obj: Mapping[str, object]) -> tuple[str, str]:
    error = obj.get("error")
    if not isinstance(error, dict):
        return "", ""
    return _text(error.get("text")), _text(error.get("func"))


@dataclass(frozen=True, slots=True)
class TransferList:
    """A ``gettransfers`` answer, merged over the answering ranks."""

    handles: frozenset[int]
    numhandles: int
    numavailhandles: int
    cut: bool  # some rank had more matching handles than it was allowed to list


def parse_transfer_list(reply: Reply) -> TransferList:
    """The handles of a successful ``gettransfers`` reply; raises `ReplyError` for a failed or odd one."""
    if not reply.ok:
        raise ReplyError(f"gettransfers failed: {reply.describe()}")
    handles: set[int] = set()
    numhandles = numavail = 0
    cut = False
    seen = False
    for out in _outs(reply.ranks):
        if "handles" not in out:
            continue
        seen = True
        if not isinstance(out["handles"], str):
            raise ReplyError("out.handles is not a string", repr(out["handles"]))
        listed = parse_handles(out["handles"])
        handles.update(listed)
        rank_num = _uint(out["numhandles"], "numhandles") if "numhandles" in out else len(listed)
        rank_avail = _uint(out["numavailhandles"], "numavailhandles") if "numavailhandles" in out else rank_num
        cut = cut or rank_avail > max(rank_num, len(listed))
        numhandles = max(numhandles, rank_num)
        numavail = max(numavail, rank_avail)
    if not seen:
        raise ReplyError("gettransfers reply without out.handles")
    return TransferList(frozenset(handles), numhandles, numavail, cut)


@dataclass(frozen=True, slots=True)
class HandleInfo:
    """A ``getstatus`` answer (the first rank that answered)."""

    handle: int
    status: BBStatus
    jobid: str
    jobstepid: int
    tag: int
    contribid: int
    numcontrib: int
    numreportingcontribs: int
    total_transfer_size: int
    localstatus: BBStatus | None
    local_transfer_size: int


def parse_handle_info(reply: Reply) -> HandleInfo:
    """The status of one handle from a successful ``getstatus`` reply; raises `ReplyError` otherwise."""
    if not reply.ok:
        raise ReplyError(f"getstatus failed: {reply.describe()}")
    for out in _outs(reply.ranks):
        if "status" not in out or "handle" not in out:
            continue
        status = out["status"]
        if not isinstance(status, str):
            raise ReplyError("status is not a string", repr(status))
        local = out.get("localstatus")
        return HandleInfo(
            handle=_handle(out["handle"], repr(out["handle"])),
            status=parse_status(status),
            jobid=_text(out.get("jobid")),
            jobstepid=_uint(out.get("jobstepid", "0"), "jobstepid"),
            tag=_uint(out.get("tag", "0"), "tag"),
            contribid=_uint(out.get("contribid", "0"), "contribid"),
            numcontrib=_uint(out.get("numcontrib", "0"), "numcontrib"),
            numreportingcontribs=_uint(out.get("numreportingcontribs", "0"), "numreportingcontribs"),
            total_transfer_size=_uint(out.get("totalTransferSize", "0"), "totalTransferSize"),
            localstatus=parse_status(local) if isinstance(local, str) and local.strip() else None,
            local_transfer_size=_uint(out.get("localTransferSize", "0"), "localTransferSize"),
        )
    raise ReplyError("getstatus reply without out.status")


def _outs(ranks: Iterable[Mapping[str, object]]) -> Iterable[Mapping[str, object]]:
    for rank in ranks:
        out = rank.get("out")
        if isinstance(out, dict):
            yield out
