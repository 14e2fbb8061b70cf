"""bbcmd's commands against a simulated BB, and bbcmd's reply shape; the CLI only parses and prints.

The reply shape follows docs/ibm-bb.md: every value a string; ``rc`` at the top; with
``--target`` each rank's reply nested under its rank number; ``handles`` as one ``"(h1,h2)"`` string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from axlstateless.backends.bbcmd_reply import STATUS_VALUES, status_name

from .launch import start_copy
from .model import FileEntry, SimError, parse_filelist
from .spool import Spool

DEFAULT_NUMHANDLES: Final = 1024
BBALL: Final = 0xFFFF  # a match mask of every status bit
MAX_CONTRIBS: Final = 1 << 20
SCOPES: Final = ("BBSCOPETRANSFER", "BBSCOPETAG")
#: What a bbcmd prints when BB_InitLibrary cannot reach bbproxy (seen in the field; docs/ibm-bb.md).
FIELD_FAILURE: Final[Mapping[str, Any]] = {
    "id": "1",
    "rc": "-2",
    "env": {"configfile": "/etc/ibm/bb.cfg"},
    "error": {"text": "Unable to create bb.proxyconnection", "func": "BB_InitLibrary"},
}
GARBAGE: Final = 'bbcmd: *** simulated garbage ***\n{"rc":"0","0":{"out":{"handles":"(1,2'


def expand_ranges(text: str, low: int, high: int) -> list[int]:
    """bbcmd's range lists: ``0,1,4-7``; an open end (``0-``, ``-3``) stops at `low`/`high`."""
    ranks: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        try:
            if "-" in part:
                start, _, end = part.partition("-")
                lower = max(low, int(start)) if start else low
                upper = min(high, int(end)) if end else high
                ranks.extend(range(lower, upper + 1))
            else:
                ranks.append(int(part))
        except ValueError:
            raise SimError(f"range parameter error in '{part}'", "expandRangeString") from None
    return ranks


def match_mask(matchstatus: str) -> int:
    mask = 0
    for name in re.split(r"[, ]+", matchstatus.strip()):
        if name == "BBALL":
            mask |= BBALL
        elif name in STATUS_VALUES and name not in ("BBNONE", "BBNOTACONTRIB", "BBNOTREPORTED"):
            mask |= STATUS_VALUES[name]
        else:
            raise SimError(f"match status value of {name} is invalid.", "bbcmd_gettransfers")
    return mask


def gettransfers(spool: Spool, jobid: str, jobstepid: int, matchstatus: str, numhandles: int) -> dict[str, str]:
    if numhandles < 0:
        raise SimError(f"numhandles of {numhandles} is invalid", "bbcmd_gettransfers")
    mask = match_mask(matchstatus)
    matching = []
    for handle in spool.handles(jobid, jobstepid):
        try:
            status = spool.view(jobid, jobstepid, handle).status
        except SimError:
            continue  # removed or moved step between the listing and the look
        if status & mask:
            matching.append(handle)
    listed = matching[:numhandles]
    return {
        "numhandles": str(len(listed)),
        "numavailhandles": str(len(matching)),
        "handles": "(" + ",".join(map(str, listed)) + ")",
    }


def getstatus(spool: Spool, jobid: str, jobstepid: int, contribid: int, handle: int) -> dict[str, str]:
    view = spool.view(jobid, jobstepid, handle)
    local, local_moved = view.local_status(contribid)
    return {
        "handle": str(view.handle),
        "contribid": str(contribid),
        "jobid": view.jobid,
        "jobstepid": str(view.jobstepid),
        "tag": str(view.tag),
        "numcontrib": str(len(view.contribs)),
        "status": status_name(view.status),
        "numreportingcontribs": str(view.reporting),
        "totalTransferSize": str(view.moved),
        "localstatus": status_name(local),
        "localTransferSize": str(local_moved),
    }


def gethandle(spool: Spool, jobid: str, jobstepid: int, contribid: int, tag: int, contrib: str | None) -> int:
    contribs = expand_ranges(contrib, 0, MAX_CONTRIBS) if contrib else [contribid]
    return spool.get_handle(jobid, jobstepid, tag, contribs)


def copy(
    spool: Spool,
    jobid: str,
    jobstepid: int,
    contribid: int,
    filelist: str,
    handle: int | None,
    tag: int | None,
    contrib: str | None,
) -> dict[str, str]:
    """Start a transfer; returns at once with the mover running in the background."""
    if handle is not None and (tag is not None or contrib is not None):
        raise SimError("Mutually exclusive parameters 'handle' and 'tag'/'contrib'", "bbcmd_copy")
    out: dict[str, str] = {}
    if handle is None:
        if tag is None or contrib is None:
            raise SimError("Missing parameter 'handle'", "bbcmd_copy")
        handle = gethandle(spool, jobid, jobstepid, contribid, tag, contrib)
        out["transferHandle"] = str(handle)
    try:
        with open(filelist, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        raise SimError(f"Unable to open filelist for reading: {filelist}", "bbcmd_copy") from None
    # Relative names are the caller's, from the caller's directory: the mover runs from /.
    entries = [
        FileEntry(os.path.abspath(e.source), os.path.abspath(e.destination), e.flags)
        for e in parse_filelist(text, filelist)
    ]
    start_copy(spool, jobid, jobstepid, contribid, handle, entries)
    return out


def cancel(spool: Spool, jobid: str, jobstepid: int, contribid: int, handle: int, scope: str) -> None:
    if scope not in SCOPES:
        raise SimError(f"scope option of {scope} is invalid", "bbcmd_cancel")
    spool.cancel(jobid, jobstepid, contribid, handle, scope)


def single_reply(out: Mapping[str, str] | None, error: SimError | None) -> dict[str, Any]:
    """One rank's reply (or the whole reply without ``--target``)."""
    reply: dict[str, Any] = {"id": "1", "rc": str(error.rc if error else 0)}
    if error is not None:
        reply["error"] = {"text": error.text, "func": error.func}
    elif out:
        reply["out"] = dict(out)
    return reply


def nest(ranks: Sequence[int], per_rank: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``--target`` shape: each rank's reply under its number, ``rc`` (and firstFailRank) on top."""
    reply: dict[str, Any] = {}
    first_fail = next((r for r in ranks if per_rank[r]["rc"] != "0"), None)
    reply["rc"] = "0" if first_fail is None else per_rank[first_fail]["rc"]
    if first_fail is not None:
        reply["error"] = {"firstFailRank": str(first_fail)}
    for rank in ranks:
        reply[str(rank)] = dict(per_rank[rank])
    return reply


def flatten(obj: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``--pretty``: one ``key value`` line per leaf, keys joined with dots."""
    lines = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            lines.extend(flatten(value, name + "."))
        else:
            lines.append(f"{name} {value}")
    return lines
