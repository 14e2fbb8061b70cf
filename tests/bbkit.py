"""Burst-buffer test kit shared by the ibmbb, verdict and waiting tests: the scripted bbcmd stand-in,
bbcmd's reply shapes, and the simulator as a bbcmd that needs no console script on PATH."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import axlstateless
from axlstateless.backends.bbcmd_reply import status_name
from axlstateless.bbsim import FileEntry, Spool, start_copy

FAKE = Path(__file__).parent / "fakes" / "scripted_bbcmd.py"
PACKAGE_ROOT = str(Path(axlstateless.__path__[0]).parent)
ACTIVE = r"--matchstatus=BBNOTSTARTED,BBINPROGRESS "
#: The failure seen in the field when bbcmd cannot reach bbproxy (docs/ibm-bb.md), verbatim.
FIELD_FAILURE: dict[str, Any] = {
    "stdout": {
        "id": "1",
        "rc": "-2",
        "env": {"configfile": "/etc/ibm/bb.cfg"},
        "error": {"text": "Unable to create bb.proxyconnection", "func": "BB_InitLibrary"},
    },
    "exit": 254,
}
GARBAGE: dict[str, Any] = {"stdout": 'Segmentation fault? {"rc":"0","0":{"out":{"handles":"(1,', "exit": 0}


def listing(*handles: int, avail: int | None = None, ranks: int = 1, extra: bool = False) -> dict[str, Any]:
    """A gettransfers reply as bbcmd writes it with --target=0-; `avail` larger than the list: a cut list."""
    out = {
        "numhandles": str(len(handles)),
        "numavailhandles": str(len(handles) if avail is None else avail),
        "handles": "(" + ",".join(map(str, handles)) + ")",
    }
    rank: dict[str, Any] = {"id": "1", "rc": "0", "out": out}
    if extra:
        out["newfield"] = "ignored"
        rank["dft"] = {"whatever": "1"}
    reply: dict[str, Any] = {"rc": "0", **{str(r): rank for r in range(ranks)}}
    if extra:
        reply["syscall"] = "x"
    return {"stdout": reply}


def getstatus_reply(handle: int, status: str) -> dict[str, Any]:
    out = {
        "handle": str(handle),
        "contribid": "0",
        "jobid": "42",
        "jobstepid": "0",
        "tag": "0",
        "numcontrib": "1",
        "status": status,
        "numreportingcontribs": "1",
        "totalTransferSize": "10",
        "localstatus": status,
        "localTransferSize": "10",
    }
    return {"stdout": {"rc": "0", "0": {"id": "1", "rc": "0", "out": out}}}


class Scripted:
    """Writes the fake's script and reads back its call log."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.script = tmp_path / "script.json"
        self.log = tmp_path / "calls.log"
        monkeypatch.setenv("SCRIPTED_BBCMD_SCRIPT", str(self.script))
        monkeypatch.setenv("SCRIPTED_BBCMD_LOG", str(self.log))
        #: The fake as a bbcmd command line (--bbcmd), run by this interpreter.
        self.command = shlex.join([sys.executable, str(FAKE)])

    def play(self, rules: list[tuple[str, list[dict[str, Any]]]], default: dict[str, Any] | None = None) -> None:
        script: dict[str, Any] = {"rules": [{"match": m, "replies": r} for m, r in rules]}
        if default is None:
            # Lists a test does not name are empty.
            script["rules"].append({"match": r"--matchstatus=", "replies": [listing()]})
        else:
            script["default"] = default
        self.script.write_text(json.dumps(script))

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.log.read_text().splitlines()]


class Sim:
    """The simulator in spool `spool`, as a bbcmd wrapper script (`path`) and as a helper to drive it."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobid: str = "42") -> None:
        self.spool = tmp_path / "spool"
        self.jobid = jobid
        monkeypatch.setenv("AXL_BBSIM_SPOOL", str(self.spool))
        monkeypatch.setenv("LSF_STAGE_JOBID", jobid)
        for name in ("AXL_BBSIM_RATE", "AXL_BBSIM_FAIL_HANDLES", "AXL_BBSIM_HANG", "AXL_BBSIM_GARBAGE"):
            monkeypatch.delenv(name, raising=False)
        for name in ("AXL_BBSIM_START_DELAY", "AXL_BBSIM_FILE_DELAY"):
            monkeypatch.delenv(name, raising=False)
        self.path = tmp_path / "axl-bbsim"
        # Console scripts may not be on PATH (CI): the simulator of this checkout, through this interpreter.
        self.path.write_text(
            f"#!/bin/sh\nPYTHONPATH={shlex.quote(PACKAGE_ROOT)} exec {shlex.quote(sys.executable)} "
            '-m axlstateless.bbsim "$@"\n'
        )
        self.path.chmod(0o755)

    def __call__(self, *args: str) -> dict[str, Any]:
        done = subprocess.run([str(self.path), *args], capture_output=True, text=True, check=False, timeout=60)
        obj: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
        return obj

    # Set-up through the simulator's library: a bbcmd process per step costs ~0.5 s on a loaded machine,
    # and lets copies end before the finalize under test starts. The finalize talks to `path`.

    @property
    def lib(self) -> Spool:
        spool = Spool(self.spool)
        spool.ensure()
        return spool

    def gethandle(self, tag: int) -> int:
        return self.lib.get_handle(self.jobid, 0, tag, [0])

    def copy(self, handle: int, pairs: list[tuple[Path, Path]]) -> None:
        start_copy(self.lib, self.jobid, 0, 0, handle, [FileEntry(str(s), str(d), 0) for s, d in pairs])

    def status(self, handle: int) -> str:
        return status_name(self.lib.view(self.jobid, 0, handle).status)

    def stop_all(self) -> None:
        """Cancel every handle still moving data, so no mover outlives the test by long."""
        spool = self.lib
        for handle in spool.handles(self.jobid, 0):
            if self.status(handle) in ("BBNOTSTARTED", "BBINPROGRESS"):
                spool.cancel(self.jobid, 0, 0, handle, "BBSCOPETAG")
