"""Waiting on the burst buffer at the finalize level: a finalize started while the simulated copies
still run waits for them, then commits exactly what succeeded and aborts exactly what failed; a wait
timeout exits 3 and leaves the transfers in progress for a rerun, which finishes the job; bbcmd failures
end in one ``Error:`` line and a documented exit code, never a traceback and never a commit on a guess;
the number of bbcmd calls grows with the polls, not with the handles."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from bbkit import ACTIVE, FIELD_FAILURE, GARBAGE, Scripted, Sim, listing
from click.testing import CliRunner
from conftest import run_cli, temporaries

from axlstateless.backends.bbcmd_reply import STATUS_VALUES
from axlstateless.bbsim import FileEntry, Spool, start_copy
from axlstateless.cli import cli
from axlstateless.errors import EXIT_ABORTED, EXIT_LEFT, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
from axlstateless.nameformat import TempName
from axlstateless.prestage import StagePair, prestage

FAST = ["--poll-interval", "0.05"]


def invoke(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [os.fspath(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def records(stdout: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """--json output: the file records by final name, and the summary."""
    objs = [json.loads(line) for line in stdout.splitlines()]
    summary = objs.pop()
    assert summary["summary"] is True
    return {Path(o["final"]).name: o for o in objs if o["kind"] == "file"}, summary


class Job:
    """Ranks' files pre-staged under dst/ with one handle each, copied by the simulator.

    Set up through the simulator's library (a bbcmd process per step would let the copies end before
    the finalize starts); the finalize itself talks to it through bbcmd's command line.
    """

    def __init__(self, tmp_path: Path, sim: Sim, *, rate: float, start_delay: float = 0.0) -> None:
        self.tmp, self.sim = tmp_path, sim
        self.spool = Spool(sim.spool)
        self.spool.ensure()
        self.spool.update_config(rate=rate, start_delay=start_delay)
        self.src, self.dst = tmp_path / "src", tmp_path / "dst"
        self.src.mkdir()
        self.dst.mkdir()
        self.handles: dict[str, int] = {}

    def rank(self, name: str, size: int, *, fail_after: int | None = None) -> int:
        """Write `name`, pre-stage it, start its copy; with `fail_after`, the copy fails after that many bytes."""
        source = self.src / name
        source.write_bytes(os.urandom(size))
        handle = self.spool.get_handle(self.sim.jobid, 0, len(self.handles) + 1, [0])
        staged = prestage([StagePair(bytes(source), bytes(self.dst / name))], handle=handle)
        if fail_after is not None:
            self.spool.update_injections(fail={handle: fail_after})
        temp = os.fsdecode(staged.files[0].temporary)
        start_copy(self.spool, self.sim.jobid, 0, 0, handle, [FileEntry(str(source), temp, 0)])
        self.handles[name] = handle
        return handle

    def hold(self, name: str) -> None:
        """Make the BB report `name`'s transfer in progress whatever its mover does, until `release`: on a
        loaded machine the bbcmd calls of a finalize can take longer than a copy, and a test of the
        timeout must not depend on that race."""
        self.spool.update_injections(status={self.handles[name]: STATUS_VALUES["BBINPROGRESS"]})

    def release(self) -> None:
        fail = self.spool.load_injections().fail
        self.spool.update_injections(clear=True, fail=fail)

    def running(self, name: str) -> bool:
        status = self.spool.view(self.sim.jobid, 0, self.handles[name]).status
        return status in (STATUS_VALUES["BBNOTSTARTED"], STATUS_VALUES["BBINPROGRESS"])

    @property
    def bbcmd(self) -> list[str]:
        return ["--backend", "ibmbb", "--bbcmd", str(self.sim.path), "--jobid", self.sim.jobid]

    def wait_over(self, *names: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            while self.running(name):
                assert time.monotonic() < deadline, f"{name} still in transfer"
                time.sleep(0.05)


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    sim = Sim(tmp_path, monkeypatch)
    yield sim
    sim.stop_all()


def test_finalize_waits_for_running_copies(tmp_path: Path, sim: Sim) -> None:
    job = Job(tmp_path, sim, rate=400_000, start_delay=0.5)
    for i in range(3):
        job.rank(f"ok{i}", 150_000 + i)
    job.rank("bad0", 150_000, fail_after=100_000)
    job.rank("bad1", 120_000, fail_after=0)
    assert all(job.running(name) for name in ("ok0", "ok1", "ok2", "bad0"))  # finalize starts mid-copy
    report = tmp_path / "report.jsonl"
    start = time.monotonic()
    code, stdout, stderr = invoke("finalize", *job.bbcmd, *FAST, "--json", "--report", report, job.dst)
    assert time.monotonic() - start >= 0.5  # it did wait for the copies
    recs, summary = records(stdout)
    assert {n for n, r in recs.items() if r["outcome"] == "committed"} == {"ok0", "ok1", "ok2"}
    assert {n for n, r in recs.items() if r["outcome"] == "aborted"} == {"bad0", "bad1"}
    assert all(recs[n]["reason"] == "transfer failed (BBFAILED)" for n in ("bad0", "bad1"))
    for i in range(3):
        assert (job.dst / f"ok{i}").read_bytes() == (job.src / f"ok{i}").read_bytes()
    assert not (job.dst / "bad0").exists()
    assert not (job.dst / "bad1").exists()
    assert temporaries(job.dst) == []
    assert code == summary["exit_code"] == EXIT_ABORTED
    # The progress line, on stderr and in the report (as a log entry, never in --json stdout).
    # (bad1 fails at its first byte: by the first poll it may be over already; on a loaded machine the
    # start-up may take so long that only the slowest copy is left to wait for.)
    waiting = re.compile(r"waiting on (1 transfer|[2-5] transfers): [0-9,]+ \([0-9]+s elapsed\)")
    assert waiting.search(stderr)
    logs = [json.loads(line).get("log", "") for line in report.read_text().splitlines()]
    assert any(waiting.fullmatch(line) for line in logs)
    assert "waiting on" not in stdout


def test_timeout_leaves_transfers_in_progress_then_a_rerun_finishes(tmp_path: Path, sim: Sim) -> None:
    job = Job(tmp_path, sim, rate=1_000_000)
    job.rank("done", 10_000)
    job.rank("broken", 10_000, fail_after=5_000)
    job.rank("slow", 600_000)  # 0.6 s at 1 MB/s, and held in progress until released
    job.hold("slow")
    job.wait_over("done", "broken")
    code, stdout, stderr = invoke("finalize", *job.bbcmd, *FAST, "--wait-timeout", "0.3", "--json", job.dst)
    recs, summary = records(stdout)
    assert code == summary["exit_code"] == EXIT_TIMEOUT
    assert (recs["done"]["outcome"], recs["broken"]["outcome"]) == ("committed", "aborted")
    assert (recs["slow"]["outcome"], recs["slow"]["reason"]) == ("left", "transfer still in progress")
    assert summary["in_progress"] == 1
    assert "gave up waiting after" in stderr
    (slow_temp,) = temporaries(job.dst)  # untouched, still being written
    assert slow_temp.name.startswith("slow._AXL")
    assert (job.dst / "done").read_bytes() == (job.src / "done").read_bytes()
    assert not (job.dst / "broken").exists()
    assert not (job.dst / "slow").exists()

    job.release()
    job.wait_over("slow")
    code, stdout, _ = invoke("finalize", *job.bbcmd, *FAST, "--wait-timeout", "10", "--json", job.dst)
    recs, summary = records(stdout)
    assert code == EXIT_OK  # what the rerun found all arrived
    assert list(recs) == ["slow"]
    assert recs["slow"]["outcome"] == "committed"
    assert (job.dst / "slow").read_bytes() == (job.src / "slow").read_bytes()
    assert temporaries(job.dst) == []


def test_rerun_after_a_timeout_reports_a_late_failure(tmp_path: Path, sim: Sim) -> None:
    """The rerun's exit code follows the data: a transfer that failed after the timeout exits 1."""
    job = Job(tmp_path, sim, rate=1_000_000)
    job.rank("late", 600_000, fail_after=400_000)
    job.hold("late")
    code, _, _ = invoke("finalize", *job.bbcmd, *FAST, "--wait-timeout", "0.2", job.dst)
    assert code == EXIT_TIMEOUT
    assert len(temporaries(job.dst)) == 1
    job.release()
    proc = run_cli("finalize", *job.bbcmd, *FAST, "--wait-timeout", "20", job.dst, check=EXIT_ABORTED)
    assert "1 aborted" in proc.stdout
    assert temporaries(job.dst) == []
    assert not (job.dst / "late").exists()


# -- bbcmd failing --------------------------------------------------------------------------------------


def complete_temporary(dst: Path, handle: int) -> Path:
    """A temporary whose data all arrived: only the BB's word decides it, and the BB is failing."""
    dst.mkdir(exist_ok=True)
    path = dst / os.fsdecode(TempName(b"data", 0o644, 5, 1_500_000_000_000_000_000, handle).encode())
    path.write_bytes(b"12345")
    return path


@pytest.mark.parametrize(
    ("reply", "extra", "says"),
    [
        (FIELD_FAILURE, [], "rc=-2: Unable to create bb.proxyconnection (BB_InitLibrary)"),
        (GARBAGE, [], "not JSON"),
        ({"sleep": 30, "stdout": listing()["stdout"]}, ["--bbcmd-timeout", "0.3"], "no answer within 0.3s; killed"),
        ({"stdout": "", "exit": 1}, [], "exit status 1"),
    ],
    ids=["rc-not-0", "garbage", "hang", "exit-1-no-output"],
)
def test_bbcmd_failure_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: dict[str, Any], extra: list[str], says: str
) -> None:
    scripted = Scripted(tmp_path, monkeypatch)
    scripted.play([], default=reply)
    temp = complete_temporary(tmp_path / "dst", 101)
    args = ["--backend", "ibmbb", "--bbcmd", scripted.command, "--jobid", "42", "--bbcmd-retries", "1", *FAST]
    report = tmp_path / "report.jsonl"
    start = time.monotonic()
    proc = run_cli("finalize", *args, *extra, "--report", report, tmp_path / "dst")
    assert time.monotonic() - start < 15
    assert proc.returncode == EXIT_LEFT
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]
    assert "bbcmd failed 2 times" in errors[0]
    assert "gettransfers --matchstatus=BBNOTSTARTED,BBINPROGRESS" in errors[0]  # the command, named
    assert str(Path(scripted.command.split()[-1])) in errors[0]
    assert says in errors[0]
    assert "bbcmd failed (attempt 1 of 2), retrying" in proc.stderr  # the retry was logged
    assert len(scripted.calls()) == 2
    assert temp.exists()  # never a commit on a guess
    assert temp.read_bytes() == b"12345"
    assert not (tmp_path / "dst" / "data").exists()
    summary = json.loads(report.read_text().splitlines()[-1])
    assert summary["summary"] is True
    assert "bbcmd failed 2 times" in summary["error"]


@pytest.mark.parametrize(
    ("bbcmd", "code", "says"),
    [
        ("{tmp}/missing/bbcmd", EXIT_USAGE, "bbcmd command not found or not executable"),
        ("no-such-bbcmd-anywhere", EXIT_USAGE, "bbcmd command not found on PATH"),
        ("", EXIT_USAGE, "the bbcmd command is empty"),
        ('x "y', EXIT_USAGE, "the bbcmd command cannot be split into words: No closing quotation"),
    ],
)
def test_missing_bbcmd_is_one_error_line(tmp_path: Path, bbcmd: str, code: int, says: str) -> None:
    temp = complete_temporary(tmp_path / "dst", 101)
    bbcmd = bbcmd.format(tmp=tmp_path)
    proc = run_cli("finalize", "--backend", "ibmbb", "--bbcmd", bbcmd, "--jobid", "42", tmp_path / "dst")
    assert proc.returncode == code
    assert proc.stderr.splitlines() == [f"Error: {bbcmd}: {says}" if bbcmd else f"Error: {says}"]
    assert proc.stdout == ""
    assert temp.exists()


def test_no_handles_no_bbcmd_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporaries without a handle are judged by verification alone: a failing BB does not stop them."""
    scripted = Scripted(tmp_path, monkeypatch)
    scripted.play([], default=FIELD_FAILURE)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / os.fsdecode(TempName(b"data", 0o644, 5, 1_500_000_000_000_000_000).encode())).write_bytes(b"12345")
    args = ["--backend", "ibmbb", "--bbcmd", scripted.command, "--jobid", "42", *FAST, "--json"]
    code, stdout, _ = invoke("finalize", *args, dst)
    recs, _ = records(stdout)
    assert code == EXIT_OK
    assert recs["data"]["outcome"] == "committed"
    assert recs["data"]["reason"].startswith("verified by size alone (no handle in the name")
    assert scripted.calls() == []


def test_bad_backend_numbers_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "dst").mkdir()
    code, _, stderr = invoke(
        "finalize", "--backend", "ibmbb", "--bbcmd", "/bin/true", "--jobid", "1", "--poll-interval", "60", tmp_path
    )
    assert code == EXIT_USAGE
    assert stderr.startswith("Error: the poll interval")
    code, _, stderr = invoke("finalize", "--bbcmd-timeout", "0", tmp_path)
    assert code == EXIT_USAGE
    assert "--bbcmd-timeout" in stderr


def test_bbcmd_removed_while_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bbcmd that vanishes after the backend found it: retried, then one error naming it, exit 4."""
    script = tmp_path / "bbcmd"
    script.write_text('#!/bin/sh\nrm -f "$0"\nexit 3\n')  # answers nothing, then is gone
    script.chmod(0o755)
    temp = complete_temporary(tmp_path / "dst", 7)
    proc = run_cli(
        "finalize",
        "--backend",
        "ibmbb",
        "--bbcmd",
        script,
        "--jobid",
        "1",
        "--bbcmd-retries",
        "2",
        *FAST,
        tmp_path / "dst",
    )
    assert proc.returncode == EXIT_LEFT
    assert "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "bbcmd failed 3 times" in error
    assert f"cannot run {script}" in error
    assert temp.exists()


# -- the number of bbcmd calls -----------------------------------------------------------------------------


def test_calls_for_1000_handles_stay_within_a_bound_per_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n, polls_with_work = 1000, 3
    dst = tmp_path / "dst"
    dst.mkdir()
    for h in range(1, n + 1):
        name = TempName(b"data.%d" % h, 0o644, 0, 1_500_000_000_000_000_000, h).encode()
        (dst / os.fsdecode(name)).write_bytes(b"")
    scripted = Scripted(tmp_path, monkeypatch)
    scripted.play(
        [
            (ACTIVE, [listing(*range(1, n + 1))] * polls_with_work + [listing()]),
            (r"matchstatus=BBFULLSUCCESS\b", [listing(*range(1, 991))]),
            (r"matchstatus=BBFAILED\b", [listing(*range(991, n + 1))]),
        ]
    )
    args = ["--backend", "ibmbb", "--bbcmd", scripted.command, "--jobid", "42", *FAST, "--json"]
    code, stdout, stderr = invoke("finalize", *args, dst)
    recs, summary = records(stdout)
    assert code == EXIT_ABORTED
    assert (summary["committed"], summary["aborted"], summary["left"]) == (990, 10, 0)
    assert recs["data.991"]["reason"] == "transfer failed (BBFAILED)"
    calls = scripted.calls()
    polls = sum("--matchstatus=BBNOTSTARTED,BBINPROGRESS" in c for c in calls)
    assert polls == polls_with_work + 1  # one call per poll, whatever the number of handles
    assert len(calls) <= polls + 6  # and a constant number to learn the final states
    assert not any("getstatus" in c for c in calls)
    assert "waiting on 1000 transfers: 1,2,3,4,5,6,7,8,9,10,... (+990 more)" in stderr
