"""The simulator's store: one spool directory of small JSON files, safe under concurrent invocations.

Layout (every file replaced by an atomic rename, so a reader never sees half of one)::

    <spool>/lock                         flock'ed for handle allocation and config/injection updates
    <spool>/config.json                  rate, delays (``axl-bbsim config``)
    <spool>/inject.json                  failure injections (``axl-bbsim inject``)
    <spool>/next-handle                  the handle counter
    <spool>/jobs/<jobid>/<handle>.json   one transfer handle: job, step, tag, contributors, cancel flags
    <spool>/jobs/<jobid>/<handle>.lock   flock'ed while that record is read-modified-written
    <spool>/jobs/<jobid>/<handle>.c<contrib>.files      the file list a ``copy`` was given
    <spool>/jobs/<jobid>/<handle>.c<contrib>.progress   written only by that copy's mover
    <spool>/mover.log                    the movers' stderr

A handle's status is derived when asked, from its record, its movers' progress files and whether those
movers are still alive, so a mover that was killed shows as failed instead of in progress forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .model import (
    DEFAULT_RATE,
    ENV_FAIL_HANDLES,
    ENV_FILE_DELAY,
    ENV_GARBAGE,
    ENV_HANG,
    ENV_RATE,
    ENV_START_DELAY,
    FIRST_HANDLE,
    SPAWN_GRACE,
    SPOOL_ENV,
    STATE_STATUS,
    Config,
    FileEntry,
    HandleView,
    Injections,
    SimError,
    handle_status,
)
from .process import process_alive


def default_spool() -> Path:
    """``$AXL_BBSIM_SPOOL``, else ``axl-bbsim-<uid>`` under ``$TMPDIR`` (or /tmp)."""
    env = os.environ.get(SPOOL_ENV)
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"axl-bbsim-{os.geteuid()}"


def _write_json(path: Path, obj: object) -> None:
    # Readers take no lock: write aside, then rename over, so they see the old file or the new one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class Spool:
    """One simulated burst buffer: its handles, its configuration, its injected failures."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        # Absolute from the start: the mover changes to / before it opens anything.
        self.path = (Path(path) if path is not None else default_spool()).absolute()

    # -- set-up ---------------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the spool (mode 0700) or check that an existing one is a directory of ours."""
        try:
            self.path.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            st = os.lstat(self.path)
            # The default spool sits in /tmp: refuse one that another user planted, or a symlink.
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise SimError(f"spool {self.path} is not a directory owned by uid {os.geteuid()}", "bbsim") from None
        (self.path / "jobs").mkdir(exist_ok=True)

    def _job_dir(self, jobid: str) -> Path:
        if not jobid or "/" in jobid or jobid in (".", ".."):
            raise SimError(f"invalid job id {jobid!r}", "BB_InitLibrary")
        return self.path / "jobs" / jobid

    # -- configuration and injections -----------------------------------------------------------------

    def load_config(self) -> Config:
        obj = _read_json(self.path / "config.json") or {}
        env = os.environ
        return Config(
            rate=float(env.get(ENV_RATE) or obj.get("rate", DEFAULT_RATE)),
            file_delay=float(env.get(ENV_FILE_DELAY) or obj.get("file_delay", 0.0)),
            start_delay=float(env.get(ENV_START_DELAY) or obj.get("start_delay", 0.0)),
            hang=float(env.get(ENV_HANG) or obj.get("hang", 0.0)),
            garbage=bool(env.get(ENV_GARBAGE, "") not in ("", "0") or obj.get("garbage", False)),
        )

    def update_config(self, *, reset: bool = False, **changes: float | bool | None) -> Config:
        with _locked(self.path / "lock"):
            obj = {} if reset else (_read_json(self.path / "config.json") or {})
            obj.update({k: v for k, v in changes.items() if v is not None})
            _write_json(self.path / "config.json", obj)
        return self.load_config()

    def load_injections(self) -> Injections:
        inj = Injections.from_json(_read_json(self.path / "inject.json") or {})
        for word in os.environ.get(ENV_FAIL_HANDLES, "").replace(",", " ").split():
            inj.fail.setdefault(int(word), None)
        return inj

    def update_injections(
        self,
        *,
        clear: bool = False,
        fail: Mapping[int, int | None] | None = None,
        status: Mapping[int, int] | None = None,
        hang_calls: int | None = None,
        hang_seconds: float | None = None,
        garbage_calls: int | None = None,
        error_calls: int | None = None,
    ) -> Injections:
        with _locked(self.path / "lock"):
            inj = Injections() if clear else Injections.from_json(_read_json(self.path / "inject.json") or {})
            inj.fail.update(fail or {})
            inj.status.update(status or {})
            if hang_calls is not None:
                inj.hang_calls = hang_calls
            if hang_seconds is not None:
                inj.hang_seconds = hang_seconds
            if garbage_calls is not None:
                inj.garbage_calls = garbage_calls
            if error_calls is not None:
                inj.error_calls = error_calls
            _write_json(self.path / "inject.json", inj.to_json())
        return self.load_injections()

    def take_call_fault(self) -> tuple[str, float] | None:
        """Consume one injected call-level fault: ("hang", seconds), ("garbage", 0), ("error", 0) or None."""
        config = self.load_config()
        if config.garbage:
            return ("garbage", 0.0)
        if config.hang > 0:
            return ("hang", config.hang)
        peek = Injections.from_json(_read_json(self.path / "inject.json") or {})
        if not (peek.hang_calls or peek.garbage_calls or peek.error_calls):
            return None  # the common case takes no lock
        with _locked(self.path / "lock"):
            inj = Injections.from_json(_read_json(self.path / "inject.json") or {})
            fault: tuple[str, float] | None = None
            if inj.hang_calls > 0:
                inj.hang_calls -= 1
                fault = ("hang", inj.hang_seconds or 3600.0)
            elif inj.garbage_calls > 0:
                inj.garbage_calls -= 1
                fault = ("garbage", 0.0)
            elif inj.error_calls > 0:
                inj.error_calls -= 1
                fault = ("error", 0.0)
            _write_json(self.path / "inject.json", inj.to_json())
        return fault

    # -- handles --------------------------------------------------------------------------------------

    def _record_path(self, jobid: str, handle: int) -> Path:
        return self._job_dir(jobid) / f"{handle}.json"

    def _load(self, jobid: str, handle: int) -> dict[str, Any] | None:
        obj = _read_json(self._record_path(jobid, handle))
        return obj if isinstance(obj, dict) else None

    def _find(self, jobid: str, jobstepid: int, handle: int, func: str) -> dict[str, Any]:
        record = self._load(jobid, handle)
        if record is None or (jobstepid and record["jobstepid"] != jobstepid):
            raise SimError(f"Transfer handle {handle} is not known for job {jobid} step {jobstepid}", func)
        return record

    def get_handle(self, jobid: str, jobstepid: int, tag: int, contribs: Sequence[int]) -> int:
        """The handle of (job, step, tag, contributors): the same one every time, as BB_GetTransferHandle."""
        self.ensure()
        job_dir = self._job_dir(jobid)
        job_dir.mkdir(exist_ok=True)
        key = [jobstepid, tag, sorted(set(contribs))]
        with _locked(self.path / "lock"):
            index_path = job_dir / "tags.json"
            index: dict[str, int] = _read_json(index_path) or {}
            existing = index.get(json.dumps(key))
            if existing is not None:
                return existing
            counter = _read_json(self.path / "next-handle") or FIRST_HANDLE
            handle = int(counter)
            _write_json(self.path / "next-handle", handle + 1)
            record = {
                "handle": handle,
                "jobid": jobid,
                "jobstepid": jobstepid,
                "tag": tag,
                "contribs": key[2],
                "canceled": False,
                "canceled_contribs": [],
                "transfers": {},
            }
            with _locked(job_dir / f"{handle}.lock"):
                _write_json(job_dir / f"{handle}.json", record)
            index[json.dumps(key)] = handle
            _write_json(index_path, index)
        return handle

    def add_transfer(self, jobid: str, jobstepid: int, contribid: int, handle: int, files: Sequence[FileEntry]) -> None:
        """Record contributor `contribid`'s file list on `handle`, its mover not started yet
        (`launch.start_copy` starts it). Raises `SimError` as ``BB_StartTransfer`` would."""
        self.ensure()
        job_dir = self._job_dir(jobid)
        job_dir.mkdir(exist_ok=True)
        with _locked(job_dir / f"{handle}.lock"):
            record = self._load(jobid, handle) or {
                "handle": handle,
                "jobid": jobid,
                "jobstepid": jobstepid,
                "tag": 0,
                "contribs": [contribid],
                "canceled": False,
                "canceled_contribs": [],
                "transfers": {},
            }
            if jobstepid and record["jobstepid"] != jobstepid:
                raise SimError(
                    f"Transfer handle {handle} belongs to job step {record['jobstepid']}", "BB_StartTransfer"
                )
            if contribid not in record["contribs"]:
                raise SimError(f"Contributor {contribid} is not a contributor of handle {handle}", "BB_StartTransfer")
            if str(contribid) in record["transfers"]:
                raise SimError(
                    f"Contributor {contribid} already started a transfer for handle {handle}", "BB_StartTransfer"
                )
            if record["canceled"]:
                raise SimError(f"Transfer handle {handle} was canceled", "BB_StartTransfer")
            _write_json(job_dir / f"{handle}.c{contribid}.files", [[f.source, f.destination, f.flags] for f in files])
            record["transfers"][str(contribid)] = {"started": time.time(), "pid": None, "pidstart": None}
            _write_json(job_dir / f"{handle}.json", record)

    def set_mover(self, jobid: str, handle: int, contribid: int, pid: int, pidstart: int | None) -> None:
        """Note the mover of a transfer `add_transfer` recorded, so its death can be told from /proc."""
        job_dir = self._job_dir(jobid)
        with _locked(job_dir / f"{handle}.lock"):
            latest = self._load(jobid, handle)
            if latest is not None:
                latest["transfers"][str(contribid)].update(pid=pid, pidstart=pidstart)
                _write_json(job_dir / f"{handle}.json", latest)

    def cancel(self, jobid: str, jobstepid: int, contribid: int, handle: int, scope: str) -> None:
        """Flag `handle` (BBSCOPETAG) or this contributor's part of it (BBSCOPETRANSFER) as canceled."""
        job_dir = self._job_dir(jobid)
        with _locked(job_dir / f"{handle}.lock"):
            record = self._find(jobid, jobstepid, handle, "BB_CancelTransfer")
            if scope == "BBSCOPETAG":
                record["canceled"] = True
            elif contribid not in record["canceled_contribs"]:
                record["canceled_contribs"].append(contribid)
            _write_json(job_dir / f"{handle}.json", record)

    def handles(self, jobid: str, jobstepid: int) -> list[int]:
        """Every handle of the job (of one step, unless `jobstepid` is 0), ascending."""
        try:
            names = os.listdir(self._job_dir(jobid))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            stem, _, ext = name.partition(".")
            if ext != "json" or not stem.isdigit():
                continue
            if jobstepid:
                record = self._load(jobid, int(stem))
                if record is None or record["jobstepid"] != jobstepid:
                    continue
            found.append(int(stem))
        return sorted(found)

    def view(self, jobid: str, jobstepid: int, handle: int) -> HandleView:
        """The state of `handle` as of now; raises `SimError` if the job does not know it."""
        record = self._find(jobid, jobstepid, handle, "BB_GetTransferInfo")
        contribs = tuple(record["contribs"])
        injected = self.load_injections().status.get(handle)
        local: dict[int, tuple[int, int]] = {}
        states = []
        moved_total = 0
        for key, transfer in record["transfers"].items():
            contrib = int(key)
            state, moved = self._transfer_state(jobid, handle, contrib, transfer)
            if state in ("queued", "running") and (record["canceled"] or contrib in record["canceled_contribs"]):
                state = "canceling"  # the mover has not noticed yet; it stays in progress until it stops
            states.append(state)
            moved_total += moved
            local[contrib] = (STATE_STATUS[state], moved)
        status = handle_status(states, len(contribs), canceled=record["canceled"], injected=injected)
        return HandleView(
            handle=handle,
            jobid=record["jobid"],
            jobstepid=record["jobstepid"],
            tag=record["tag"],
            contribs=contribs,
            status=status,
            reporting=len(states),
            moved=moved_total,
            local=local,
        )

    def _transfer_state(self, jobid: str, handle: int, contrib: int, transfer: Mapping[str, Any]) -> tuple[str, int]:
        progress = self.read_progress(jobid, handle, contrib) or {}
        state = str(progress.get("state", "queued"))
        moved = int(progress.get("moved", 0))
        if state in ("done", "failed", "canceled"):
            return state, moved
        pid = transfer.get("pid")
        if pid is None:
            if time.time() - float(transfer.get("started", 0)) > SPAWN_GRACE:
                return "failed", moved
            return state, moved
        if not process_alive(int(pid), transfer.get("pidstart")):
            # Read again: the mover may have written its last word between our two looks.
            progress = self.read_progress(jobid, handle, contrib) or {}
            state = str(progress.get("state", "failed"))
            return (state if state in ("done", "failed", "canceled") else "failed"), int(progress.get("moved", moved))
        return state, moved

    # -- what the mover uses --------------------------------------------------------------------------

    def record(self, jobid: str, handle: int) -> dict[str, Any] | None:
        return self._load(jobid, handle)

    def files(self, jobid: str, handle: int, contrib: int) -> list[FileEntry]:
        rows = _read_json(self._job_dir(jobid) / f"{handle}.c{contrib}.files") or []
        return [FileEntry(str(s), str(d), int(f)) for s, d, f in rows]

    def read_progress(self, jobid: str, handle: int, contrib: int) -> dict[str, Any] | None:
        obj = _read_json(self._job_dir(jobid) / f"{handle}.c{contrib}.progress")
        return obj if isinstance(obj, dict) else None

    def write_progress(self, jobid: str, handle: int, contrib: int, progress: Mapping[str, Any]) -> None:
        _write_json(self._job_dir(jobid) / f"{handle}.c{contrib}.progress", dict(progress))
