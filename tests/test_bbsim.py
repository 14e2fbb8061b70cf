"""The simulated burst buffer: bbcmd's command line and JSON shape, the mover, failures, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import axlstateless
from axlstateless.bbsim.cli import main

JOB = "4242"
PACKAGE_ROOT = str(Path(axlstateless.__path__[0]).parent)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def sim(spool: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Run ``axl-bbsim ARGS`` in-process; the movers it starts are real detached processes."""
    monkeypatch.setenv("AXL_BBSIM_SPOOL", str(spool))
    monkeypatch.setenv("LSF_STAGE_JOBID", JOB)
    for name in ("AXL_BBSIM_RATE", "AXL_BBSIM_FAIL_HANDLES", "AXL_BBSIM_HANG", "AXL_BBSIM_GARBAGE"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> Result:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


def run_script(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The simulator as a real process, as a user's script runs it."""
    full_env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "axlstateless.bbsim", *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
        timeout=60,
    )


def reply(result: Result) -> dict[str, Any]:
    obj = json.loads(result.stdout)
    assert isinstance(obj, dict)
    return obj


def all_strings(obj: object) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and all_strings(v) for k, v in obj.items())
    return isinstance(obj, str)


def gethandle(sim: Callable[..., Result], tag: int, contrib: str = "0") -> int:
    return int(reply(sim("gethandle", f"--tag={tag}", f"--contrib={contrib}"))["out"]["transferHandle"])


def status(sim: Callable[..., Result], handle: int, *extra: str) -> dict[str, str]:
    out = reply(sim("getstatus", f"--handle={handle}", *extra))["out"]
    assert isinstance(out, dict)
    return out


def wait_status(sim: Callable[..., Result], handle: int, wanted: set[str], timeout: float = 20.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        out = status(sim, handle)
        if out["status"] in wanted or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def make_copy(tmp_path: Path, name: str, size: int, *, precreate: bool = True) -> tuple[Path, Path]:
    src = tmp_path / f"{name}.src"
    src.write_bytes(os.urandom(size))
    dst = tmp_path / f"{name}.dst"
    if precreate:
        dst.write_bytes(b"")
    return src, dst


def filelist(tmp_path: Path, pairs: list[tuple[Path, Path]], flags: str = "0") -> Path:
    path = tmp_path / f"filelist.{len(list(tmp_path.glob('filelist.*')))}"
    path.write_text("".join(f"{s} {d} {flags}\n" for s, d in pairs))
    return path


# -- command line and reply shape -------------------------------------------------------------------------


def test_help_of_every_command(sim: Callable[..., Result]) -> None:
    assert "AXL_BBSIM_RATE" in sim("--help").output
    for command in main.commands:
        assert "Usage" in sim(command, "--help").output


def test_gethandle_is_stable_per_tag_and_contributors(sim: Callable[..., Result]) -> None:
    first = gethandle(sim, 1, "0-3")
    assert gethandle(sim, 1, "0,1,2,3") == first
    assert gethandle(sim, 2, "0-3") != first
    assert first > 2**32  # handles look like the real, large ones


def test_gettransfers_shape_target_and_cut(sim: Callable[..., Result]) -> None:
    handles = [gethandle(sim, tag) for tag in (1, 2, 3)]
    plain = reply(sim("gettransfers"))
    assert plain["rc"] == "0"
    assert plain["out"] == {
        "numhandles": "3",
        "numavailhandles": "3",
        "handles": "(" + ",".join(map(str, handles)) + ")",
    }
    nested = reply(sim("--target=0-", "gettransfers", "--matchstatus=BBNOTSTARTED,BBINPROGRESS"))
    assert nested["rc"] == "0"
    assert set(nested) == {"rc", "0"}
    assert nested["0"]["out"]["numhandles"] == "3"
    cut = reply(sim("gettransfers", "--target=0,1", "--hostlist=a,b", "--numhandles", "2"))
    assert set(cut) == {"rc", "0", "1"}
    assert cut["1"]["out"] == {"numhandles": "2", "numavailhandles": "3", "handles": f"({handles[0]},{handles[1]})"}
    assert reply(sim("gettransfers", "--matchstatus=BBFULLSUCCESS"))["out"]["handles"] == "()"
    for obj in (plain, nested, cut):
        assert all_strings(obj)


def test_boost_style_options(sim: Callable[..., Result]) -> None:
    handle = gethandle(sim, 7)
    # Options after the command, a space instead of '=', and unambiguous prefixes, as CAST's scripts write.
    out = reply(sim("gettransfers", "--match=BBNOTSTARTED", "--numh=5", "--jobi", JOB, "--jobstep=0"))
    assert out["out"]["handles"] == f"({handle})"
    assert status(sim, handle, "--jobid", JOB)["status"] == "BBNOTSTARTED"
    ambiguous = sim("gettransfers", "--job=1", ok=False)  # --jobid or --jobstepid: refused, as Boost does
    assert ambiguous.exit_code != 0
    assert reply(sim("--jobid=999", "gettransfers"))["out"]["handles"] == "()"  # handles are per job


def test_getstatus_fields(sim: Callable[..., Result]) -> None:
    handle = gethandle(sim, 5, "0-1")
    nested = reply(sim("--target=0-", "--contribid=1", "getstatus", f"--handle={handle}"))
    out = nested["0"]["out"]
    assert all_strings(nested)
    assert out == {
        "handle": str(handle),
        "contribid": "1",
        "jobid": JOB,
        "jobstepid": "0",
        "tag": "5",
        "numcontrib": "2",
        "status": "BBNOTSTARTED",
        "numreportingcontribs": "0",
        "totalTransferSize": "0",
        "localstatus": "BBNOTREPORTED",
        "localTransferSize": "0",
    }


def test_pretty_prints_key_value_lines(sim: Callable[..., Result]) -> None:
    handle = gethandle(sim, 1)
    lines = sim("--pretty", "--target=0-", "getstatus", f"--handle={handle}").output.splitlines()
    assert "rc 0" in lines
    assert "0.out.status BBNOTSTARTED" in lines


def test_errors_have_rc_error_object_and_exit_status(
    sim: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = sim("getstatus", "--handle=12345", ok=False)
    assert unknown.exit_code != 0
    obj = reply(unknown)
    assert obj["rc"] != "0"
    assert obj["error"]["text"]
    assert obj["error"]["func"] == "BB_GetTransferInfo"
    nested = reply(sim("--target=0-", "getstatus", "--handle=12345", ok=False))
    assert nested["rc"] != "0"
    assert nested["error"]["firstFailRank"] == "0"
    assert nested["0"]["error"]["text"]
    assert sim("--xml", "gettransfers", ok=False).exit_code != 0
    assert reply(sim("gettransfers", "--matchstatus=BBBOGUS", ok=False))["rc"] != "0"
    assert reply(sim("cancel", "--handle=1", "--scope=BBSCOPEALL", ok=False))["rc"] != "0"
    monkeypatch.delenv("LSF_STAGE_JOBID")
    monkeypatch.delenv("LSB_JOBID", raising=False)
    assert reply(sim("gettransfers", ok=False))["error"]["func"] == "BB_InitLibrary"


# -- the mover -----------------------------------------------------------------------------------------


def test_copy_into_precreated_file_keeps_inode_mode_and_xattrs(sim: Callable[..., Result], tmp_path: Path) -> None:
    src, dst = make_copy(tmp_path, "a", 300_000)
    src.chmod(0o644)
    dst.chmod(0o600)
    old_mtime = time.time() - 3600
    os.utime(dst, (old_mtime, old_mtime))
    has_xattrs = True
    try:
        os.setxattr(dst, "user.axl.test", b"kept")
    except OSError:
        has_xattrs = False
    inode = dst.stat().st_ino
    new_src, new_dst = make_copy(tmp_path, "b", 10, precreate=False)
    new_src.chmod(0o640)
    handle = gethandle(sim, 1)
    result = sim("copy", f"--filelist={filelist(tmp_path, [(src, dst), (new_src, new_dst)])}", "--handle", str(handle))
    assert reply(result) == {"id": "1", "rc": "0"}
    assert wait_status(sim, handle, {"BBFULLSUCCESS", "BBFAILED"})["status"] == "BBFULLSUCCESS"
    st = dst.stat()
    assert dst.read_bytes() == src.read_bytes()
    assert st.st_ino == inode
    assert st.st_mode & 0o7777 == 0o600  # the mode is passed only when the file is created
    assert st.st_mtime > old_mtime + 1800  # the copy's time: the finalizer must restore it
    if has_xattrs:
        assert os.getxattr(dst, "user.axl.test") == b"kept"
    assert new_dst.read_bytes() == new_src.read_bytes()
    assert new_dst.stat().st_mode & 0o777 == 0o640 & ~current_umask()
    out = status(sim, handle)
    assert out["totalTransferSize"] == str(300_010)
    assert out["numreportingcontribs"] == "1"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_recursive_flag_creates_parents(sim: Callable[..., Result], tmp_path: Path) -> None:
    src, _ = make_copy(tmp_path, "r", 100, precreate=False)
    dst = tmp_path / "new" / "dir" / "r.dst"
    handle = gethandle(sim, 1)
    sim("copy", f"--filelist={filelist(tmp_path, [(src, dst)], flags='1')}", f"--handle={handle}")
    assert wait_status(sim, handle, {"BBFULLSUCCESS", "BBFAILED"})["status"] == "BBFULLSUCCESS"
    assert dst.read_bytes() == src.read_bytes()


def test_status_goes_notstarted_inprogress_fullsuccess(sim: Callable[..., Result], tmp_path: Path) -> None:
    sim("config", "--rate=1e6", "--start-delay=0.4")
    pair = make_copy(tmp_path, "s", 600_000)
    handle = gethandle(sim, 1)
    sim("copy", f"--filelist={filelist(tmp_path, [pair])}", f"--handle={handle}")
    seen = [status(sim, handle)["status"]]
    while seen[-1] not in ("BBFULLSUCCESS", "BBFAILED"):
        time.sleep(0.05)
        now = status(sim, handle)["status"]
        if now != seen[-1]:
            seen.append(now)
    assert seen == ["BBNOTSTARTED", "BBINPROGRESS", "BBFULLSUCCESS"]
    assert pair[1].read_bytes() == pair[0].read_bytes()


def test_copy_with_tag_and_contrib_returns_the_handle(sim: Callable[..., Result], tmp_path: Path) -> None:
    pair = make_copy(tmp_path, "t", 10)
    out = reply(sim("copy", f"--filelist={filelist(tmp_path, [pair])}", "--tag=9", "--contrib=0"))
    assert int(out["out"]["transferHandle"]) == gethandle(sim, 9)


def test_fail_handle_leaves_a_truncated_file(sim: Callable[..., Result], tmp_path: Path) -> None:
    pairs = [make_copy(tmp_path, f"f{i}", 100_000) for i in range(4)]
    handle = gethandle(sim, 1)
    sim("inject", f"--fail-handle={handle}")
    sim("copy", f"--filelist={filelist(tmp_path, pairs)}", f"--handle={handle}")
    out = wait_status(sim, handle, {"BBFULLSUCCESS", "BBFAILED"})
    assert out["status"] == "BBFAILED"
    assert out["totalTransferSize"] == "200000"
    sizes = [dst.stat().st_size for _, dst in pairs]
    assert sizes[:2] == [100_000, 100_000]
    assert sizes[2] == 0  # opened with O_TRUNC, then the failure hit
    assert any(size < 100_000 for size in sizes)
    assert reply(sim("gettransfers", "--matchstatus=BBFAILED"))["out"]["handles"] == f"({handle})"


def test_fail_after_bytes(sim: Callable[..., Result], tmp_path: Path) -> None:
    pair = make_copy(tmp_path, "n", 50_000)
    handle = gethandle(sim, 1)
    sim("inject", f"--fail-handle={handle}", "--fail-after-bytes=12345")
    sim("copy", f"--filelist={filelist(tmp_path, [pair])}", f"--handle={handle}")
    assert wait_status(sim, handle, {"BBFULLSUCCESS", "BBFAILED"})["status"] == "BBFAILED"
    assert pair[1].stat().st_size == 12345


def test_missing_source_fails_the_handle(sim: Callable[..., Result], tmp_path: Path) -> None:
    handle = gethandle(sim, 1)
    sim("copy", f"--filelist={filelist(tmp_path, [(tmp_path / 'nope', tmp_path / 'x')])}", f"--handle={handle}")
    assert wait_status(sim, handle, {"BBFULLSUCCESS", "BBFAILED"})["status"] == "BBFAILED"


def test_cancel_stops_the_mover(sim: Callable[..., Result], tmp_path: Path) -> None:
    sim("config", "--rate=500000")
    pair = make_copy(tmp_path, "c", 5_000_000)
    handle = gethandle(sim, 1)
    sim("copy", f"--filelist={filelist(tmp_path, [pair])}", f"--handle={handle}")
    assert wait_status(sim, handle, {"BBINPROGRESS"})["status"] == "BBINPROGRESS"
    sim("cancel", f"--handle={handle}", "--scope=BBSCOPETAG")
    assert wait_status(sim, handle, {"BBCANCELED"}, timeout=5)["status"] == "BBCANCELED"
    size = pair[1].stat().st_size
    time.sleep(0.3)
    assert pair[1].stat().st_size == size < 5_000_000


def test_forced_status_and_undefined(sim: Callable[..., Result]) -> None:
    stopped, odd = gethandle(sim, 1), gethandle(sim, 2)
    sim("inject", f"--set-status={stopped}=BBSTOPPED", f"--set-status={odd}=128")
    assert status(sim, stopped)["status"] == "BBSTOPPED"
    assert status(sim, odd)["status"] == "UNDEFINED (128)"
    assert reply(sim("gettransfers", "--matchstatus=BBSTOPPED"))["out"]["handles"] == f"({stopped})"


def test_injected_call_faults(sim: Callable[..., Result]) -> None:
    sim("inject", "--garbage-calls=1", "--error-calls=1")
    with pytest.raises(json.JSONDecodeError):
        json.loads(sim("gettransfers").stdout)
    failed = sim("gettransfers", ok=False)
    assert failed.exit_code != 0
    assert reply(failed) == {
        "id": "1",
        "rc": "-2",
        "env": {"configfile": "/etc/ibm/bb.cfg"},
        "error": {"text": "Unable to create bb.proxyconnection", "func": "BB_InitLibrary"},
    }
    assert reply(sim("gettransfers"))["rc"] == "0"
    sim("inject", "--hang-calls=1", "--hang-seconds=0.5")
    start = time.monotonic()
    assert reply(sim("gettransfers"))["rc"] == "0"
    assert time.monotonic() - start >= 0.5


# -- real processes: detachment, concurrency ---------------------------------------------------------------


def test_mover_outlives_the_caller_and_is_not_its_child(spool: Path, tmp_path: Path) -> None:
    env = {"AXL_BBSIM_SPOOL": str(spool), "LSF_STAGE_JOBID": JOB, "AXL_BBSIM_RATE": "1e6"}
    pair = make_copy(tmp_path, "d", 2_000_000)
    done = run_script("copy", f"--filelist={filelist(tmp_path, [pair])}", "--handle=77", env=env)
    assert done.returncode == 0, done.stderr
    # The caller has exited and the 2 s copy goes on.
    assert json.loads(run_script("getstatus", "--handle=77", env=env).stdout)["out"]["status"] == "BBINPROGRESS"
    assert _wait_file(spool, "77")
    progress = json.loads((spool / "jobs" / JOB / "77.c0.progress").read_text())
    pid = int(progress["pid"])
    assert _ppid(pid) != os.getpid()
    deadline = time.monotonic() + 20
    while json.loads(run_script("getstatus", "--handle=77", env=env).stdout)["out"]["status"] != "BBFULLSUCCESS":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert pair[1].read_bytes() == pair[0].read_bytes()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child of ours is left, zombie or not


@pytest.mark.parametrize("threads", [False, True], ids=["forked", "exec-from-a-threaded-caller"])
def test_mover_started_in_process_is_detached(spool: Path, tmp_path: Path, threads: bool) -> None:
    """A caller that starts copies itself (the demo, a test) keeps no child: forked without exec when it
    runs one thread, a fresh interpreter when it runs more."""
    import threading

    from axlstateless.bbsim import FileEntry, Spool, start_copy

    sim = Spool(spool)
    sim.ensure()
    sim.update_config(rate=1e6)
    src, dst = make_copy(tmp_path, "p", 300_000)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait) if threads else None
    if other is not None:
        other.start()
    try:
        start_copy(sim, JOB, 0, 0, 91, [FileEntry(str(src), str(dst), 0)])
    finally:
        stop.set()
        if other is not None:
            other.join()
    pid = sim.record(JOB, 91)["transfers"]["0"]["pid"]  # type: ignore[index]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert (b"axlstateless.bbsim.mover" in f.read()) is threads  # which of the two ways
    assert _ppid(pid) != os.getpid()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child of ours is left, zombie or not
    deadline = time.monotonic() + 20
    while sim.view(JOB, 0, 91).status != 0x8:  # BBFULLSUCCESS
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert dst.read_bytes() == src.read_bytes()
    assert (spool / "mover.log").read_text() == ""  # nothing went wrong in the mover


def _wait_file(spool: Path, handle: str) -> bool:
    path = spool / "jobs" / JOB / f"{handle}.c0.progress"
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except OSError:
        return -1


def test_killed_mover_shows_as_failed(sim: Callable[..., Result], spool: Path, tmp_path: Path) -> None:
    sim("config", "--rate=100000")
    pair = make_copy(tmp_path, "k", 5_000_000)
    handle = gethandle(sim, 1)
    sim("copy", f"--filelist={filelist(tmp_path, [pair])}", f"--handle={handle}")
    assert _wait_file(spool, str(handle))
    pid = json.loads((spool / "jobs" / JOB / f"{handle}.c0.progress").read_text())["pid"]
    os.kill(pid, 9)
    assert wait_status(sim, handle, {"BBFAILED"}, timeout=5)["status"] == "BBFAILED"


def test_concurrent_invocations(spool: Path, tmp_path: Path) -> None:
    env = {"AXL_BBSIM_SPOOL": str(spool), "LSF_STAGE_JOBID": JOB}
    ranks = 8
    # Every rank asks for the same handle at once, then starts its own part of the transfer.
    with ThreadPoolExecutor(ranks) as pool:
        got = list(
            pool.map(lambda _: run_script("gethandle", "--tag=3", f"--contrib=0-{ranks - 1}", env=env), range(ranks))
        )
    handles = {json.loads(r.stdout)["out"]["transferHandle"] for r in got}
    assert len(handles) == 1
    handle = handles.pop()
    pairs = [make_copy(tmp_path, f"rank{r}", 20_000) for r in range(ranks)]
    lists = [filelist(tmp_path, [pair]) for pair in pairs]
    with ThreadPoolExecutor(ranks) as pool:
        copies = list(
            pool.map(
                lambda r: run_script(
                    f"--contribid={r}", "copy", f"--filelist={lists[r]}", f"--handle={handle}", env=env
                ),
                range(ranks),
            )
        )
    assert all(c.returncode == 0 for c in copies), [c.stdout for c in copies]
    deadline = time.monotonic() + 20
    while True:
        out = json.loads(run_script("getstatus", f"--handle={handle}", env=env).stdout)["out"]
        if out["status"] == "BBFULLSUCCESS" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out["status"] == "BBFULLSUCCESS"
    assert out["numreportingcontribs"] == str(ranks)
    assert all(dst.read_bytes() == src.read_bytes() for src, dst in pairs)
    # Distinct tags at once get distinct handles.
    with ThreadPoolExecutor(ranks) as pool:
        got = list(pool.map(lambda t: run_script("gethandle", f"--tag={100 + t}", env=env), range(ranks)))
    assert len({json.loads(r.stdout)["out"]["transferHandle"] for r in got}) == ranks
