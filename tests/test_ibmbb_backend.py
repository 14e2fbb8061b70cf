"""The ibmbb backend: against a scripted bbcmd that replays fixed replies, and against the simulator."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bbkit import ACTIVE, FAKE, FIELD_FAILURE, GARBAGE, PACKAGE_ROOT, Scripted, getstatus_reply, listing

from axlstateless.backends.base import TransferState
from axlstateless.backends.ibmbb import DEFAULT_BBCMD, IbmBBBackend
from axlstateless.errors import BackendError


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Scripted:
    return Scripted(tmp_path, monkeypatch)


def backend(**kwargs: Any) -> IbmBBBackend:
    options: dict[str, Any] = {
        "bbcmd": shlex.join([sys.executable, str(FAKE)]),
        "jobid": "42",
        "poll_interval": 0.01,
        "max_poll_interval": 0.02,
        "report_interval": 0.0,
        "retries": 2,
        "call_timeout": 10.0,
    }
    options.update(kwargs)
    return IbmBBBackend(**options)


# -- against the scripted bbcmd ----------------------------------------------------------------------------


def test_waits_then_learns_each_state(scripted: Scripted) -> None:
    scripted.play(
        [
            (ACTIVE, [listing(101, 102, 900), listing(102, extra=True), listing(900)]),
            (r"matchstatus=BBFULLSUCCESS\b", [listing(101, 102, 103, extra=True)]),
            (r"matchstatus=BBFAILED\b", [listing(104)]),
            (r"matchstatus=BBCANCELED\b", [listing(105)]),
            (r"matchstatus=BBPARTIALSUCCESS\b", [listing(106)]),
            (r"getstatus --handle=107\b", [getstatus_reply(107, "UNDEFINED (128)")]),
            (r"getstatus --handle=108\b", [{"stdout": {"rc": "-1", "error": {"text": "no such handle"}}, "exit": 255}]),
        ]
    )
    lines: list[str] = []
    bb = backend(bbcmd=str(FAKE))  # the fake as a real executable, through its #! line
    assert bb.wait({101, 102, 103, 104, 105, 106, 107, 108}, timeout=30, progress=lines.append)
    assert bb.status(101).state is TransferState.SUCCEEDED
    assert bb.status(103).detail == "BBFULLSUCCESS"
    assert (bb.status(104).state, bb.status(104).detail) == (TransferState.FAILED, "BBFAILED")
    assert (bb.status(105).state, bb.status(105).detail) == (TransferState.FAILED, "BBCANCELED")
    assert (bb.status(106).state, bb.status(106).detail) == (TransferState.FAILED, "BBPARTIALSUCCESS")
    undefined = bb.status(107)
    assert undefined.state is TransferState.UNKNOWN
    assert "UNDEFINED (128)" in undefined.detail
    assert "verification alone" in undefined.detail
    assert bb.status(108).state is TransferState.UNKNOWN
    assert "does not know handle 108" in bb.status(108).detail
    assert bb.status(None).state is TransferState.UNKNOWN
    assert bb.status(900).state is TransferState.IN_PROGRESS  # not wanted, still running: as listed
    assert lines[0].startswith("waiting on 2 transfers: 101,102 (")
    assert lines[1].startswith("waiting on 1 transfer: 102 (")
    calls = scripted.calls()
    assert all(c[:3] == ["--jobid=42", "--jobstepid=0", "--target=0-"] for c in calls)
    assert sum("getstatus" in c for c in calls) == 2  # only the handles no list mentions


def test_field_failure_is_retried_then_named(scripted: Scripted) -> None:
    scripted.play([], default=FIELD_FAILURE)
    lines: list[str] = []
    with pytest.raises(BackendError) as info:
        backend(retries=2).wait({1}, timeout=30, progress=lines.append)
    message = str(info.value)
    assert "Unable to create bb.proxyconnection" in message
    assert "BB_InitLibrary" in message
    assert "gettransfers --matchstatus=BBNOTSTARTED,BBINPROGRESS" in message
    assert str(FAKE) in message
    assert len(scripted.calls()) == 3
    assert len(lines) == 2
    assert all(line.startswith("bbcmd failed (attempt ") for line in lines)


def test_transient_failures_recover(scripted: Scripted) -> None:
    scripted.play([(ACTIVE, [FIELD_FAILURE, GARBAGE, listing()]), (r"BBFULLSUCCESS", [listing(1)])])
    lines: list[str] = []
    bb = backend(retries=2)
    assert bb.wait({1}, timeout=30, progress=lines.append)
    assert bb.status(1).state is TransferState.SUCCEEDED
    assert len(lines) == 2
    assert "rc=-2" in lines[0]
    assert "not JSON" in lines[1]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (GARBAGE, "not JSON"),
        ({"stdout": '{"rc":"0","0":{"id":"1",', "crash": True}, "killed by signal 9"),
        ({"stdout": {"rc": "0", "0": {"rc": "0", "out": {"handles": "101,102"}}}}, "not of the form"),
        ({"stdout": "", "exit": 1}, "not JSON"),
    ],
)
def test_unusable_replies_raise_backend_error(scripted: Scripted, reply: dict[str, Any], expected: str) -> None:
    scripted.play([], default=reply)
    with pytest.raises(BackendError, match=expected):
        backend(retries=1).wait({1}, timeout=30, progress=lambda line: None)
    assert len(scripted.calls()) == 2


def test_hung_bbcmd_is_killed(scripted: Scripted) -> None:
    scripted.play([], default={"sleep": 30, "stdout": listing()["stdout"]})
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no answer within 0.5s"):
        backend(retries=1, call_timeout=0.5).wait({1}, timeout=30, progress=lambda line: None)
    assert time.monotonic() - start < 5


def test_cut_list_is_asked_again_with_room(scripted: Scripted) -> None:
    scripted.play(
        [
            (ACTIVE + r"--numhandles=1024\b", [listing(1, 2, avail=5)]),
            (ACTIVE, [listing(1, 2, 3, 4, 5), listing()]),
            (r"BBFULLSUCCESS", [listing(5)]),
        ]
    )
    lines: list[str] = []
    bb = backend()
    assert bb.wait({5}, timeout=30, progress=lines.append)
    assert lines[0].startswith("waiting on 1 transfer: 5 (")  # 5 was beyond the cut
    active = [c for c in scripted.calls() if "--matchstatus=BBNOTSTARTED,BBINPROGRESS" in c]
    sizes = [int(c[-1].removeprefix("--numhandles=")) for c in active]
    assert sizes[0] == 1024
    assert all(size >= 5 for size in sizes[1:])
    assert len(active) == 3  # the cut poll, its re-ask, the poll that found nothing
    assert bb.status(5).state is TransferState.SUCCEEDED


def test_list_still_cut_after_the_re_ask_is_an_error(scripted: Scripted) -> None:
    scripted.play([(ACTIVE, [listing(1, avail=10_000)])])
    with pytest.raises(BackendError, match="even with --numhandles"):
        backend().wait({1}, timeout=30, progress=lambda line: None)


def test_replies_from_several_ranks_and_without_nesting(scripted: Scripted) -> None:
    flat = {"stdout": {"id": "1", "rc": "0", "out": {"numhandles": "1", "numavailhandles": "1", "handles": "(7)"}}}
    scripted.play([(ACTIVE, [listing()]), (r"BBFULLSUCCESS", [listing(5, 6, ranks=3)]), (r"BBFAILED\b", [flat])])
    bb = backend()
    assert bb.wait({5, 6, 7}, timeout=30, progress=lambda line: None)
    assert [bb.status(h).state for h in (5, 6, 7)] == [TransferState.SUCCEEDED] * 2 + [TransferState.FAILED]


def test_calls_grow_with_time_not_with_handles(scripted: Scripted) -> None:
    handles = range(1, 1001)
    polls_with_work = 3
    scripted.play(
        [
            (ACTIVE, [listing(*handles)] * polls_with_work + [listing()]),
            (r"BBFULLSUCCESS", [listing(*range(1, 991))]),
            (r"BBFAILED\b", [listing(*range(991, 1001))]),
        ]
    )
    lines: list[str] = []
    bb = backend()
    assert bb.wait(set(handles), timeout=60, progress=lines.append)
    calls = scripted.calls()
    polls = polls_with_work + 1
    assert sum("--matchstatus=BBNOTSTARTED,BBINPROGRESS" in c for c in calls) == polls  # one call per poll
    assert len(calls) <= polls + 6  # plus a constant number to learn the final states
    assert not any("getstatus" in c for c in calls)
    assert sum(bb.status(h).state is TransferState.SUCCEEDED for h in handles) == 990
    assert all(bb.status(h).detail == "BBFAILED" for h in range(991, 1001))
    assert lines[0].startswith("waiting on 1000 transfers: 1,2,3,4,5,6,7,8,9,10,... (+990 more) (")


def test_timeout_returns_false_and_still_learns_states(scripted: Scripted) -> None:
    scripted.play([(ACTIVE, [listing(1, 2)]), (r"BBFULLSUCCESS", [listing(3)])])
    lines: list[str] = []
    bb = backend(poll_interval=0.05, max_poll_interval=0.1)
    assert not bb.wait({1, 2, 3}, timeout=0.3, progress=lines.append)
    assert bb.status(1).state is TransferState.IN_PROGRESS
    assert bb.status(3).state is TransferState.SUCCEEDED
    assert lines[-1].startswith("gave up waiting after")
    lines.clear()
    assert not backend().wait({1, 2, 3}, timeout=0, progress=lines.append)  # one look (status, cleanup)
    assert lines == ["2 transfers in progress, not waited for: 1,2"]
    assert len(scripted.calls()) < 20


def test_nothing_to_wait_for_asks_nothing(scripted: Scripted) -> None:
    scripted.play([], default=FIELD_FAILURE)
    bb = backend()
    assert bb.wait(set(), timeout=1, progress=lambda line: None)
    assert bb.status(None).state is TransferState.UNKNOWN
    assert scripted.calls() == []


def test_job_id_from_the_lsf_environment(scripted: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted.play([])
    monkeypatch.setenv("LSB_JOBID", "111")
    monkeypatch.setenv("LSF_STAGE_JOBID", "222")
    backend(jobid=None, jobstepid=3).wait({1}, timeout=1, progress=lambda line: None)
    assert scripted.calls()[0][:2] == ["--jobid=222", "--jobstepid=3"]
    monkeypatch.delenv("LSF_STAGE_JOBID")
    assert backend(jobid=None).jobid == "111"
    monkeypatch.delenv("LSB_JOBID")
    with pytest.raises(BackendError, match="LSF_STAGE_JOBID"):
        backend(jobid=None)


def test_bbcmd_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match="not found or not executable"):
        backend(bbcmd=str(tmp_path / "missing" / "bbcmd"))
    with pytest.raises(BackendError, match="no-such-bbcmd: bbcmd command not found on PATH"):
        backend(bbcmd="no-such-bbcmd")
    if os.path.exists(DEFAULT_BBCMD):
        pytest.skip("this machine has IBM's bbcmd")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BackendError, match=r"/opt/ibm/bb/bin/bbcmd nor bbcmd on PATH"):
        backend(bbcmd=None)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "bbcmd"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE))} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    assert backend(bbcmd=None).command == [str(wrapper)]


def test_binary_removed_after_start_is_retried_then_named(tmp_path: Path) -> None:
    script = tmp_path / "bbcmd"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    bb = backend(bbcmd=str(script), retries=1)
    script.unlink()
    with pytest.raises(BackendError, match="cannot run"):
        bb.wait({1}, timeout=5, progress=lambda line: None)


# -- against the simulator ---------------------------------------------------------------------------------


@pytest.fixture
def bbsim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """``axl-bbsim`` as a bbcmd on PATH-free terms: a wrapper script running this checkout's simulator."""
    spool = tmp_path / "spool"
    monkeypatch.setenv("AXL_BBSIM_SPOOL", str(spool))
    monkeypatch.setenv("LSF_STAGE_JOBID", "42")
    wrapper = tmp_path / "axl-bbsim"
    wrapper.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(PACKAGE_ROOT)} exec {shlex.quote(sys.executable)} "
        '-m axlstateless.bbsim "$@"\n'
    )
    wrapper.chmod(0o755)

    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run([str(wrapper), *args], capture_output=True, text=True, check=False, timeout=60)
        obj: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
        return obj

    run.path = str(wrapper)  # type: ignore[attr-defined]
    return run


def start_copy(tmp_path: Path, bbsim: Callable[..., dict[str, Any]], tag: int, size: int) -> tuple[int, Path, Path]:
    src = tmp_path / f"src{tag}"
    src.write_bytes(os.urandom(size))
    dst = tmp_path / f"dst{tag}"
    dst.write_bytes(b"")
    flist = tmp_path / f"list{tag}"
    flist.write_text(f"{src} {dst} 0\n")
    handle = int(bbsim("gethandle", f"--tag={tag}", "--contrib=0")["out"]["transferHandle"])
    assert bbsim("copy", f"--filelist={flist}", f"--handle={handle}")["rc"] == "0"
    return handle, src, dst


def test_against_the_simulator(tmp_path: Path, bbsim: Callable[..., dict[str, Any]]) -> None:
    bbsim("config", "--rate=2e6")
    failed = int(bbsim("gethandle", "--tag=2")["out"]["transferHandle"])
    bbsim("inject", f"--fail-handle={failed}")
    failed, _, failed_dst = start_copy(tmp_path, bbsim, 2, 100_000)
    canceled, _, _ = start_copy(tmp_path, bbsim, 3, 4_000_000)
    bbsim("cancel", f"--handle={canceled}")
    stopped = int(bbsim("gethandle", "--tag=4")["out"]["transferHandle"])
    odd = int(bbsim("gethandle", "--tag=5")["out"]["transferHandle"])
    bbsim("inject", f"--set-status={stopped}=BBSTOPPED", f"--set-status={odd}=128")
    ok, src, dst = start_copy(tmp_path, bbsim, 1, 3_000_000)
    lines: list[str] = []
    bb = backend(bbcmd=bbsim.path, poll_interval=0.1, max_poll_interval=0.2, report_interval=0.3)  # type: ignore[attr-defined]
    assert bb.wait({ok, failed, canceled, stopped, odd, 77}, timeout=30, progress=lines.append)
    assert lines  # the 1.5 s copy was still running when the wait began
    assert lines[0].startswith("waiting on ")
    assert bb.status(ok).state is TransferState.SUCCEEDED
    assert dst.read_bytes() == src.read_bytes()
    assert (bb.status(failed).state, bb.status(failed).detail) == (TransferState.FAILED, "BBFAILED")
    assert failed_dst.stat().st_size < 100_000
    assert (bb.status(canceled).state, bb.status(canceled).detail) == (TransferState.FAILED, "BBCANCELED")
    assert (bb.status(stopped).state, bb.status(stopped).detail) == (TransferState.FAILED, "BBSTOPPED")
    assert bb.status(odd).state is TransferState.UNKNOWN
    assert "UNDEFINED (128)" in bb.status(odd).detail
    assert bb.status(77).state is TransferState.UNKNOWN
    assert "does not know handle 77" in bb.status(77).detail


def test_simulator_timeout_and_retry(tmp_path: Path, bbsim: Callable[..., dict[str, Any]]) -> None:
    bbsim("config", "--rate=100000")
    slow, _, _ = start_copy(tmp_path, bbsim, 1, 2_000_000)
    bbsim("inject", "--error-calls=1")
    lines: list[str] = []
    bb = backend(bbcmd=bbsim.path, poll_interval=0.1, max_poll_interval=0.2)  # type: ignore[attr-defined]
    assert not bb.wait({slow}, timeout=1.0, progress=lines.append)
    assert any("Unable to create bb.proxyconnection" in line for line in lines)  # retried, then went on
    assert bb.status(slow).state is TransferState.IN_PROGRESS
    bbsim("cancel", f"--handle={slow}")  # stop the mover rather than leave it running past the test


def test_a_hanging_bbcmd_cannot_push_finalize_past_the_settle_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LSF kills the stage-out script at 600 s: after the wait's timeout, bbcmd gets `settle_budget`
    seconds in all, retries included, however long one call may take."""
    scripted = Scripted(tmp_path, monkeypatch)
    scripted.play([], default={"sleep": 30, "stdout": listing()["stdout"]})
    backend = IbmBBBackend(
        bbcmd=scripted.command, jobid="42", poll_interval=0.05, call_timeout=30.0, retries=3, settle_budget=1.0
    )
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"time to wait on it is over|no answer within"):
        backend.wait({101}, 0.2, lambda _line: None)
    assert time.monotonic() - start < 5  # not 4 calls x 30 s
