"""The edges a new user meets: every failure one ``Error:`` line and a documented exit code, signals that
stop at a temporary boundary, a closed or strict standard output, options that belong to a backend,
pre-stage input that no commit could honour, relative paths, and progress a person can read."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from bbkit import Scripted, listing
from conftest import CLI, run_cli, temporaries
from test_hostile import forge, snapshot

from axlstateless.nameformat import TempName
from axlstateless.report import Kind, Outcome, Record, Reporter

MTIME = 1_500_000_000_123_456_789


def tree(root: Path, dirs: int, per_dir: int) -> int:
    """`dirs` directories of `per_dir` complete (empty) temporaries: every one commits."""
    for d in range(dirs):
        sub = root / f"d{d:02d}"
        sub.mkdir(parents=True)
        fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(per_dir):
                name = TempName(b"f%d" % i, 0o644, 0, MTIME).encode()
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        finally:
            os.close(fd)
    return dirs * per_dir


def summary_of(text: str) -> dict[str, Any]:
    last: dict[str, Any] = json.loads(text.splitlines()[-1])
    assert last.get("summary") is True, last
    return last


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


# --- start-up failures change nothing: exit 2, one line, and a report saying why ---------------------------


def _no_exec(tmp_path: Path) -> str:
    path = tmp_path / "bbcmd"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing", "bbcmd command not found or not executable"),
        ("not executable", "bbcmd command not found or not executable"),
        ("unbalanced quote", "No closing quotation"),
        ("no job id", "no job id for bbcmd"),
    ],
)
def test_startup_failure_exits_2_with_a_report(tmp_path: Path, case: str, says: str) -> None:
    root = tmp_path / "dst"
    root.mkdir()
    forge(root, "a", b"abc", handle=101)
    before = snapshot(root)
    bbcmd = {
        "missing": str(tmp_path / "nowhere" / "bbcmd"),
        "not executable": _no_exec(tmp_path),
        "unbalanced quote": 'x "y',
        "no job id": "/bin/true",
    }[case]
    env = {k: v for k, v in os.environ.items() if k not in ("LSF_STAGE_JOBID", "LSB_JOBID")}
    args = ["finalize", "--backend", "ibmbb", "--bbcmd", bbcmd, "--report", tmp_path / "r.jsonl", root]
    if case != "no job id":
        args[1:1] = ["--jobid", "7"]
    proc = run_cli(*args, check=2, env=env)
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and says in proc.stderr, proc.stderr
    report = summary_of((tmp_path / "r.jsonl").read_text())
    assert report["exit_code"] == 2 and says in report["error"]
    assert snapshot(root) == before


def test_report_or_filelist_in_a_missing_directory_exit_2(tmp_path: Path) -> None:
    root = tmp_path / "dst"
    root.mkdir()
    forge(root, "a", b"abc")
    before = snapshot(root)
    proc = run_cli("finalize", "--report", tmp_path / "missing" / "r.jsonl", root, check=2)
    assert error_lines(proc.stderr) == [
        f"Error: {tmp_path}/missing/r.jsonl: cannot write the report: No such file or directory"
    ]
    assert snapshot(root) == before
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("prestage", "-r", tmp_path / "src", out, "--filelist", tmp_path / "missing" / "files", check=2)
    assert "cannot write the file list: its directory does not exist" in proc.stderr
    assert list(out.iterdir()) == []  # nothing was created before the refusal


def test_poststage_script_never_names_a_missing_report(tmp_path: Path) -> None:
    script = Path(__file__).parent.parent / "tools" / "lsf" / "axl-poststage"
    root = tmp_path / "run"
    root.mkdir()
    stub = tmp_path / "axl-stateless"
    stub.write_text("#!/bin/sh\necho 'Error: nothing' >&2\nexit 2\n")  # a finalize that wrote no report
    stub.chmod(0o755)
    env = dict(os.environ, AXL_STATELESS=str(stub), LSF_STAGE_JOBID="9")
    proc = subprocess.run(["bash", script, root], capture_output=True, text=True, env=env, check=False, timeout=60)
    assert proc.returncode == 2
    assert "no report was written" in proc.stderr
    named = [w for w in proc.stderr.split() if w.endswith(".jsonl") or w.endswith(".jsonl,")]
    assert all(Path(w.rstrip(",")).exists() for w in named), proc.stderr


# --- options of the ibmbb backend ------------------------------------------------------------------------


def test_ibmbb_option_selects_ibmbb_and_a_failed_transfer_is_aborted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--bbcmd` without `--backend`: the transfer states come from bbcmd, so BBFAILED data is deleted,
    never committed (its size verifies: the none backend would have committed it)."""
    scripted = Scripted(tmp_path, monkeypatch)
    scripted.play([("--matchstatus=BBFAILED ", [listing(102)]), ("--matchstatus=BBFULLSUCCESS ", [listing(101)])])
    root = tmp_path / "dst"
    root.mkdir()
    forge(root, "ok", b"abc", handle=101)
    forge(root, "failed", b"abc", handle=102)
    proc = run_cli("finalize", "--bbcmd", scripted.command, "--jobid", "42", "--poll-interval", "0.05", root, check=1)
    assert sorted(p.name for p in root.iterdir()) == ["ok"]
    assert "aborted" in proc.stdout and "BBFAILED" in proc.stdout
    assert scripted.calls()


@pytest.mark.parametrize("option", [["--bbcmd", "axl-bbsim"], ["--jobid", "5"], ["--poll-interval", "1"]])
def test_ibmbb_option_with_backend_none_is_refused(tmp_path: Path, option: list[str]) -> None:
    forge(tmp_path, "a", b"abc")
    before = snapshot(tmp_path)
    report = tmp_path.parent / f"{tmp_path.name}.jsonl"
    proc = run_cli("finalize", "--backend", "none", *option, "--report", report, tmp_path, check=2)
    assert error_lines(proc.stderr) == [f"Error: {option[0]}: only for --backend ibmbb, not --backend none"]
    assert snapshot(tmp_path) == before
    assert "only for --backend ibmbb" in summary_of(report.read_text())["error"]


# --- pre-stage refuses what no commit could honour, before any change ---------------------------------------


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"aaa")
    (src / "sub" / "b").write_bytes(b"bb")
    (tmp_path / "out" / "adir").mkdir(parents=True)
    os.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("how", "says"),
    [
        (["-r", "src", "."], "cannot copy a directory into itself"),
        (["-r", "src", "src"], "cannot copy a directory into itself"),
        (["-r", "src", "src/sub/deeper"], "cannot copy a directory into itself"),
        (b"src/a\tout/x\r\n", "line 1: ends in a carriage return (CRLF line ends)"),
        (b"src/a\t.\n", "names a directory, not a file"),
        (b"src/a\tout/new/\n", "names a directory, not a file"),
        (b"src/a\tout/adir\n", "is an existing directory"),
        (b"src/a\0\0", "pair 1: an empty DST field"),
        (b"\0out/x\0", "pair 1: an empty SRC field"),
    ],
)
def test_prestage_refuses_before_any_change(staging: Path, how: list[str] | bytes, says: str) -> None:
    before = snapshot(staging)
    if isinstance(how, bytes):
        (staging / "pairs").write_bytes(how)
        before = snapshot(staging)
        args = ["--from-list", "pairs", *(["-0"] if b"\t" not in how else [])]
    else:
        args = how
    proc = run_cli("prestage", *args, cwd=staging, check=2)
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and says in proc.stderr, proc.stderr
    assert snapshot(staging) == before


def test_prestage_refuses_a_directory_name_too_long_for_its_marker(tmp_path: Path) -> None:
    long_name = "d" * 240  # a valid directory name; its marker (name + ._AXL.v1.dir...) is not
    (tmp_path / "src" / long_name).mkdir(parents=True)
    (tmp_path / "src" / long_name / "f").write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("prestage", "-r", tmp_path / "src" / long_name, f"{out}/", check=2)
    assert "cannot be given a directory marker" in proc.stderr and "Traceback" not in proc.stderr
    assert list(out.iterdir()) == []


def test_prestage_closes_the_directory_when_marking_it_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from axlstateless.errors import PrestageError

    prestage_mod = sys.modules["axlstateless.prestage"]  # the package re-exports a function of that name

    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f").write_bytes(b"x")
    failed = []

    def broken_fchmod(fd: int, mode: int) -> None:
        failed.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(prestage_mod.os, "fchmod", broken_fchmod)
    pairs, dir_sources = prestage_mod.expand_sources([tmp_path / "src"], tmp_path / "out", recursive=True)
    fds = set(os.listdir("/proc/self/fd"))
    with pytest.raises(PrestageError):
        prestage_mod.prestage(pairs, dir_sources=dir_sources)
    assert failed, "the injected fchmod never fired"
    assert set(os.listdir("/proc/self/fd")) == fds


# --- the demo and the simulator with relative paths ------------------------------------------------------


def test_bbsim_copy_with_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"hello")
    (tmp_path / "b").write_bytes(b"")
    (tmp_path / "files").write_text("a b\n")
    bbsim = [sys.executable, "-m", "axlstateless.bbsim", "--spool", "spool", "--jobid", "7"]
    done = subprocess.run([*bbsim, "copy", "--filelist", "files", "--handle", "5"], cwd=tmp_path, check=False)
    assert done.returncode == 0
    subprocess.run([*bbsim, "wait", "--timeout", "30"], cwd=tmp_path, check=True)
    assert (tmp_path / "b").read_bytes() == b"hello"


def test_demo_with_a_relative_dir_and_a_rerun(tmp_path: Path) -> None:
    proc = run_cli("demo", "--dir", "dq", "--ranks", "2", "--failures", "1", "-q", cwd=tmp_path, check=0)
    assert "result: as expected" in proc.stdout
    proc = run_cli("demo", "--dir", "dq", "--ranks", "2", "-q", cwd=tmp_path, check=2)
    assert error_lines(proc.stderr) == [
        f"Error: {tmp_path}/dq: is not empty (an earlier demo's directory?): give a new or empty --dir"
    ]


# --- signals stop at a temporary boundary, with the summary written -------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_between_temporaries_and_a_rerun_finishes(tmp_path: Path, sig: signal.Signals) -> None:
    """The signal arrives while finalize is blocked writing to a full pipe, mid-tree: it must stop at
    the next boundary with every settled temporary reported, exit 128+N, and a rerun finishes."""
    root = tmp_path / "dst"
    total = tree(root, 4, 500)
    report = tmp_path / "r.jsonl"
    with subprocess.Popen(
        [*CLI, "finalize", root, "--json", "--report", report],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()  # it is running; stop reading so that its next writes block
        assert json.loads(first)["outcome"] == "committed"
        time.sleep(0.5)
        proc.send_signal(sig)
        # Not communicate(): it reads the pipe itself and would skip what readline() already buffered.
        out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "Aborted!" not in err
    assert error_lines(err) == [
        f"Error: interrupted by {sig.name}: stopped between two temporaries; a rerun finishes the work"
    ]
    records = [json.loads(line) for line in (first + out).splitlines()]
    summary = records.pop()
    assert summary["interrupted"] is True and summary["signal"] == sig.name and summary["exit_code"] == 128 + sig
    assert 0 < summary["committed"] == len(records) < total
    assert summary_of(report.read_text()) == summary
    assert len(temporaries(root)) == total - len(records)
    again = run_cli("finalize", root, "--json", check=0)
    assert summary_of(again.stdout)["committed"] == total - len(records)
    assert temporaries(root) == []


def test_signal_while_waiting_on_the_burst_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = Scripted(tmp_path, monkeypatch)
    scripted.play([(r"--matchstatus=BBNOTSTARTED,BBINPROGRESS ", [listing(101)])])
    root = tmp_path / "dst"
    root.mkdir()
    temp = forge(root, "a", b"abc", handle=101)
    args = ["--bbcmd", scripted.command, "--jobid", "42", "--poll-interval", "5", "--report", tmp_path / "r.jsonl"]
    proc = subprocess.Popen([*CLI, "finalize", *args, root], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not scripted.calls() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # in its sleep between two polls
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 3  # not at the end of the 5 s poll interval
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in out
    assert summary_of((tmp_path / "r.jsonl").read_text())["interrupted"] is True
    assert temp.exists()


def test_signal_stops_prestage_between_temporaries(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4000):
        (src / f"f{i}").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_on_a_terminal(
        [*CLI, "prestage", "-r", src, out], until="temporar", then=signal.SIGINT, cwd=tmp_path
    )
    assert code == 130, err
    assert "Error: interrupted by SIGINT" in err and "Traceback" not in err
    made = len(temporaries(out))
    assert 0 < made < 4000
    run_cli("prestage", "-r", src, out, check=0)  # the rerun replaces what was made and finishes
    assert len(temporaries(out)) == 4000 + 1  # and the marker of the directory it created


# --- standard output that closes or cannot encode ----------------------------------------------------------


def test_closed_stdout_finishes_the_work(tmp_path: Path) -> None:
    """``finalize -v | head -1``: the reader goes away; the work goes on to the end (the report has every
    record), no "Error: : Broken pipe", and the exit code is the work's."""
    root = tmp_path / "dst"
    total = tree(root, 2, 300)
    report = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [*CLI, "finalize", "-v", root, "--report", report], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"committed")
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Error" not in err and b"Traceback" not in err and b"Exception ignored" not in err
    assert b"standard output was closed" in err
    assert temporaries(root) == []
    assert summary_of(report.read_text())["committed"] == total


def test_undecodable_name_on_a_strict_utf8_stdout(tmp_path: Path) -> None:
    forge(tmp_path, b"bad\xffname", b"abc")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = run_cli("finalize", "-v", tmp_path, env=env, check=0)
    assert "Traceback" not in proc.stderr
    assert "bad\\udcffname" in proc.stdout  # escaped, not lost
    assert (tmp_path / os.fsdecode(b"bad\xffname")).read_bytes() == b"abc"


# --- progress a person can read ------------------------------------------------------------------------


def run_on_a_terminal(
    argv: list[Any], *, until: str | None = None, then: int | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run `argv` with stderr on a pseudo-terminal (stdout a pipe); with `until`, send `then` once
    the terminal shows that text. Returns the exit code, stdout and what the terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [os.fspath(a) for a in argv], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd
    )
    os.close(slave)
    seen = b""
    sent = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if until is not None and then is not None and not sent and until.encode() in seen:
            proc.send_signal(then)
            sent = True
        if not ready and proc.poll() is not None:
            break
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=30), out, seen.decode(errors="replace")


@pytest.mark.parametrize("command", ["finalize", "cleanup", "status"])
def test_live_progress_line_on_a_terminal(tmp_path: Path, command: str) -> None:
    root = tmp_path / "dst"
    tree(root, 2, 50)
    extra = ["--older-than", "0.01s"] if command == "cleanup" else []
    time.sleep(0.05)  # older than that
    code, out, terminal = run_on_a_terminal([*CLI, command, root, *extra])
    assert code == 0, terminal
    assert "\r" in terminal and "\x1b[K" in terminal  # a line redrawn in place, then erased
    line = terminal.split("\r")[1]
    assert f"{command}: " in line and "/s, " in line and " elapsed" in line and "temporar" in line
    summary = out.splitlines()[-1]
    assert summary.startswith(f"{command}: 100 temporaries: ") and "/s)" in summary


def test_prestage_live_line_on_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    code, out, terminal = run_on_a_terminal([*CLI, "prestage", "-r", tmp_path / "src", tmp_path / "out"])
    assert code == 0, terminal
    assert "\rprestage: 1 temporary created, " in terminal and " elapsed" in terminal
    assert out.startswith("prestage: pre-staged 1 temporary, created 1 directory in ")


def test_progress_line_in_a_log_has_the_figures() -> None:
    log = io.StringIO()
    reporter = Reporter("finalize", log_streams=[log], progress_every=0.0)
    for i in range(3):
        reporter(Record(path=b"t%d" % i, kind=Kind.FILE, outcome=Outcome.COMMITTED))
    lines = log.getvalue().splitlines()
    assert lines[-1].startswith("finalize: 3 temporaries settled (3 committed), ")
    assert lines[-1].endswith(" elapsed") and "/s, " in lines[-1]
    assert lines[0].startswith("finalize: 1 temporary settled")


@pytest.mark.parametrize("command", ["finalize", "cleanup", "status", "prestage"])
def test_quiet_prints_the_summary_only(tmp_path: Path, command: str) -> None:
    root = tmp_path / "dst"
    root.mkdir()
    forge(root, "a", b"abc", size=5)  # incomplete: listed without -q
    if command == "prestage":
        (tmp_path / "s").write_bytes(b"x")
        args = [tmp_path / "s", root / "new"]
    else:
        args = [root, *(["--older-than", "0.01s"] if command == "cleanup" else [])]
        time.sleep(0.05)
    proc = run_cli(command, "-q", *args)
    assert proc.returncode in (0, 1), proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and proc.stdout.startswith(f"{command}: ")
    assert proc.stderr == ""
    proc = run_cli(command, "-q", "--json", *args)
    assert [json.loads(line)["summary"] for line in proc.stdout.splitlines()] == [True]


def test_dry_run_says_would(tmp_path: Path) -> None:
    forge(tmp_path, "done", b"abc")
    forge(tmp_path, "short", b"a", size=3)
    proc = run_cli("finalize", "--dry-run", "-v", tmp_path, check=1)
    lines = proc.stdout.splitlines()
    assert any(line.startswith("would commit ") for line in lines)
    assert any(line.startswith("would delete ") for line in lines)
    assert lines[-1].startswith("finalize: 2 temporaries: would commit 1, would delete 1 in ")


def test_status_has_a_header_and_names_as_typed(tmp_path: Path) -> None:
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    run_cli("prestage", "-r", "src", "out/run", cwd=tmp_path, check=0)
    proc = run_cli("status", "out/run", cwd=tmp_path, check=1)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NOW", "KIND", "MODE", "SIZE", "HANDLE", "AGE", "CLEANUP", "PATH"]
    column = lines[0].index("PATH")
    paths = [line[column:].split()[0] for line in lines[1:-1]]
    assert paths and all(p.startswith(("out/run/", "out/run._AXL")) for p in paths), paths
    assert any(p.startswith("out/run._AXL.v1.dir.") for p in paths)  # the root's own marker, too


def test_singular_and_plural(tmp_path: Path) -> None:
    forge(tmp_path, "one", b"abc")
    proc = run_cli("finalize", tmp_path, check=0)
    assert proc.stdout.startswith("finalize: 1 temporary: 1 committed in ")


def test_every_help_lists_the_signal_exit_code() -> None:
    for command in ("prestage", "finalize", "status", "cleanup", "demo"):
        out = run_cli(command, "--help", check=0).stdout
        assert "128+N" in out and "130" in out and "143" in out, command
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "| 128+N |" in readme


def test_demo_output_into_a_closed_pipe(tmp_path: Path) -> None:
    with subprocess.Popen(
        [*CLI, "demo", "--ranks", "2", "--failures", "1", "--dir", tmp_path / "d", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the table is printed
        err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert b"Error" not in err and b"Traceback" not in err and b"Exception ignored" not in err
