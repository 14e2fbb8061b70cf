"""Orphan cleanup: only old temporaries whose transfer is over are taken; complete ones are
committed, incomplete and legacy ones deleted, unrecognised names never touched.

ctime cannot be set back, so a temporary is made "old" by passing the library a reference time `now`
in the future (what the age is measured from), or through the CLI with ``--older-than 0s``; the ages
the tests set with `os.utime` show which of mtime and ctime counts.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import NOBODY, is_root, needs_root, run_cli, run_cli_as, xattrs_supported

import axlstateless
from axlstateless import (
    CleanupOptions,
    Kind,
    LegacyName,
    Outcome,
    Record,
    Reporter,
    TempName,
    cleanup,
    parse_duration,
    status,
)
from axlstateless.backends.base import Backend, Progress, TransferState, TransferStatus
from axlstateless.cli import cli
from axlstateless.errors import UsageError
from axlstateless.nameformat import DirMarker
from axlstateless.orphan import DEFAULT_OLDER_THAN, format_duration

DAY = 86400.0
MTIME_NS = 1_500_000_000_123_456_789
LATER = time.time() + 2 * DAY  # a reference time from which everything made now is two days old
#: The smallest threshold the tests use through the CLI (0 is refused: a copy writing right now would be
#: taken), and the sleep that makes what a test just wrote older than it (ctime cannot be set back).
TINY = "0.01s"
AGED = 0.05

source_mod = importlib.import_module("axlstateless.source")


def temporary(directory: Path, final: str, data: bytes, *, size: int | None = None, mode: int = 0o640) -> Path:
    """A temporary as pre-stage names it, holding `data` (complete when `size` is None)."""
    name = TempName(final.encode(), mode, len(data) if size is None else size, MTIME_NS).encode()
    path = directory / os.fsdecode(name)
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def run(root: Path | list[Path], *, now: float | None = LATER, **options: Any) -> tuple[list[Record], int]:
    records: list[Record] = []
    reporter = Reporter("cleanup")

    def sink(record: Record) -> None:
        records.append(record)
        reporter(record)

    roots = root if isinstance(root, list) else [root]
    cleanup([os.fspath(r) for r in roots], sink, CleanupOptions(**options), now=now)
    return records, reporter.finish().exit_code


def by_name(records: list[Record]) -> dict[str, Record]:
    return {os.path.basename(os.fsdecode(r.path)).split("._AXL")[0]: r for r in records}


def invoke(*args: str | os.PathLike[str], code: int) -> tuple[str, str]:
    result = CliRunner().invoke(cli, [os.fspath(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}\n{result.stdout}\n{result.stderr}"
    return result.stdout, result.stderr


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, st.st_ctime_ns, data)
    return out


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", DAY), ("7d", 7 * DAY), ("1w", 7 * DAY), ("1h30m", 5400), ("0s", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "-5m", "5x", "1.5.2h", "24 h", "1e3s", "soon"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


@pytest.mark.parametrize("older_than", [-1.0, 0.0, float("nan")])
def test_library_refuses_a_threshold_that_is_not_a_duration(tmp_path: Path, older_than: float) -> None:
    temporary(tmp_path, "f", b"x")
    with pytest.raises(UsageError):
        run(tmp_path, older_than=older_than)
    assert len(list(tmp_path.iterdir())) == 1


def test_default_threshold_is_24h() -> None:
    assert parse_duration("24h") == DEFAULT_OLDER_THAN == CleanupOptions().older_than
    assert format_duration(DEFAULT_OLDER_THAN) == "24h"


# --- the policy ----------------------------------------------------------------------------------------


def test_young_temporaries_are_untouched_whatever_their_mtime(tmp_path: Path) -> None:
    complete = temporary(tmp_path, "complete", b"data")
    incomplete = temporary(tmp_path, "incomplete", b"da", size=4)
    three_days_ago = time.time() - 3 * DAY
    for p in (complete, incomplete):
        os.utime(p, (three_days_ago, three_days_ago))
    before = snapshot(tmp_path)
    # An old mtime does not make them orphans: their ctime (just now) is the newer time.
    records, code = run(tmp_path, now=None)
    assert code == 0
    assert {r.outcome for r in records} == {Outcome.SKIPPED}
    assert all(r.reason.startswith("younger than 24h") for r in records)
    assert all(r.extra and r.extra["orphan"] is False and r.extra["age_seconds"] < 60 for r in records)
    assert snapshot(tmp_path) == before


def test_a_future_mtime_keeps_a_temporary_young(tmp_path: Path) -> None:
    path = temporary(tmp_path, "f", b"data")
    future = LATER + 3600
    os.utime(path, (future, future))
    records, code = run(tmp_path)
    assert (records[0].outcome, code) == (Outcome.SKIPPED, 0)
    assert path.exists()
    assert records[0].extra is not None
    assert records[0].extra["age_seconds"] == pytest.approx(-3600, abs=1)


def test_old_complete_is_committed_old_incomplete_deleted(tmp_path: Path) -> None:
    complete = temporary(tmp_path, "complete", b"all of it", mode=0o444)
    temporary(tmp_path, "incomplete", b"part", size=100)
    (tmp_path / "incomplete").write_bytes(b"the old final file")
    records, code = run(tmp_path)
    got = by_name(records)
    assert got["complete"].outcome is Outcome.COMMITTED
    assert got["incomplete"].outcome is Outcome.ABORTED
    assert "incomplete: size 4, expected 100" in got["incomplete"].reason
    assert code == 1  # some data did not arrive
    final = tmp_path / "complete"
    assert final.read_bytes() == b"all of it"
    st = final.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o444, MTIME_NS)
    assert not complete.exists()
    assert (tmp_path / "incomplete").read_bytes() == b"the old final file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["complete", "incomplete"]
    # Idempotent: a second sweep finds nothing.
    assert run(tmp_path) == ([], 0)


def test_only_orphans_are_taken_at_the_threshold(tmp_path: Path) -> None:
    temporary(tmp_path, "f", b"x")
    records, _ = run(tmp_path, older_than=3 * DAY)  # two days old: not yet
    assert records[0].outcome is Outcome.SKIPPED
    assert "younger than 3d" in records[0].reason
    records, _ = run(tmp_path, older_than=DAY)
    assert records[0].outcome is Outcome.COMMITTED


def test_delete_only_deletes_complete_orphans_too(tmp_path: Path) -> None:
    temporary(tmp_path, "complete", b"all of it")
    temporary(tmp_path, "incomplete", b"part", size=100)
    young = temporary(tmp_path, "young", b"y")
    os.utime(young, (LATER, LATER))
    records, code = run(tmp_path, delete_only=True)
    got = by_name(records)
    assert got["complete"].outcome is Outcome.ABORTED
    assert "--delete-only" in got["complete"].reason
    assert got["incomplete"].outcome is Outcome.ABORTED
    assert got["young"].outcome is Outcome.SKIPPED
    assert code == 1
    assert [p.name for p in tmp_path.iterdir()] == [young.name]


@pytest.mark.parametrize("delete_only", [False, True])
def test_dry_run_changes_nothing(tmp_path: Path, delete_only: bool) -> None:
    temporary(tmp_path, "complete", b"all of it")
    temporary(tmp_path, "incomplete", b"part", size=100)
    (tmp_path / "legacy._AXL42").write_bytes(b"?")
    sub = tmp_path / "sub"
    sub.mkdir()
    temporary(sub, "deep", b"z")
    (tmp_path / os.fsdecode(DirMarker(b"sub", 0o555, MTIME_NS).encode())).write_bytes(b"")
    before = snapshot(tmp_path)
    records, code = run(tmp_path, dry_run=True, delete_only=delete_only, delete_legacy=True)
    assert snapshot(tmp_path) == before
    got = by_name(records)
    assert got["complete"].outcome is (Outcome.ABORTED if delete_only else Outcome.COMMITTED)
    assert got["incomplete"].outcome is Outcome.ABORTED
    assert got["legacy"].outcome is Outcome.ABORTED
    assert got["sub"].outcome is Outcome.COMMITTED
    assert code == 1


def test_legacy_temporaries_are_left_without_a_state_file(tmp_path: Path) -> None:
    """An AXL temporary that no state file names may be the only copy of complete data: reported, never
    deleted, however old (exit 4, so a cron job's log shows it)."""
    (tmp_path / "ckpt._AXL").write_bytes(b"complete? nobody can tell")
    (tmp_path / "done._AXL7").write_bytes(b"or a finished file named like a legacy temporary")
    before = snapshot(tmp_path)
    records, code = run(tmp_path)
    assert {(r.kind, r.outcome) for r in records} == {(Kind.LEGACY, Outcome.LEFT)}
    assert all("--axl-state" in r.reason for r in records)
    assert code == 4
    assert snapshot(tmp_path) == before


def test_legacy_temporaries_are_deleted_only_with_delete_legacy(tmp_path: Path) -> None:
    (tmp_path / "ckpt._AXL").write_bytes(b"complete? nobody can tell")
    (tmp_path / "ckpt2._AXL13456").write_bytes(b"")
    young = tmp_path / "young._AXL7"
    young.write_bytes(b"y")
    os.utime(young, (LATER, LATER))
    records, code = run(tmp_path, delete_legacy=True)
    got = by_name(records)
    assert {got[n].kind for n in got} == {Kind.LEGACY}
    assert (got["ckpt"].outcome, got["ckpt2"].outcome) == (Outcome.ABORTED, Outcome.ABORTED)
    assert got["ckpt2"].handle == 13456
    assert got["young"].outcome is Outcome.SKIPPED
    assert code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["young._AXL7"]  # no final name ever appears


def test_unrecognised_names_are_reported_never_touched(tmp_path: Path) -> None:
    names = ["f._AXL.v2.m0644", "g._AXL.v1.m0644.s1.t01", "._AXL"]
    for n in names:
        (tmp_path / n).write_bytes(b"?")
    before = snapshot(tmp_path)
    for delete_only in (False, True):
        records, code = run(tmp_path, delete_only=delete_only, older_than=1)
        assert code == 0
        assert sorted(os.fsdecode(os.path.basename(r.path)) for r in records) == sorted(names)
        assert {(r.kind, r.outcome) for r in records} == {(Kind.UNRECOGNISED, Outcome.SKIPPED)}
    assert snapshot(tmp_path) == before


def test_same_refusals_as_finalize(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"not yours")
    root = tmp_path / "root"
    root.mkdir()
    name = TempName(b"link", 0o4755, 9, MTIME_NS).encode()
    (root / os.fsdecode(name)).symlink_to(secret)
    linked = temporary(root, "linked", b"hardlink")
    os.link(linked, outside / "second-link")
    (root / "legacy._AXL").symlink_to(secret)
    os.mkfifo(root / os.fsdecode(TempName(b"fifo", 0o644, 0, MTIME_NS).encode()))
    bait = temporary(outside, "bait", b"reached through a symlinked directory")
    (root / "dirlink").symlink_to(outside)
    before = snapshot(outside)
    records, code = run(root, older_than=1)
    assert code == 4
    assert {r.outcome for r in records} == {Outcome.LEFT}
    assert len(records) == 4  # nothing below the symlinked directory was even listed
    reasons = " | ".join(r.reason for r in records)
    assert "symbolic link" in reasons and "hard links" in reasons and "not a regular file" in reasons
    assert secret.read_bytes() == b"not yours" and stat.S_IMODE(secret.stat().st_mode) == 0o644
    assert linked.exists() and bait.exists()
    assert snapshot(outside) == before


@pytest.mark.skipif(not is_root, reason="root only: a foreign-owned temporary is root's refusal to make")
def test_foreign_owned_temporary_is_refused_as_root(tmp_path: Path) -> None:
    if not xattrs_supported(tmp_path):
        pytest.skip("no user xattrs on this file system")
    path = temporary(tmp_path, "f", b"data")
    os.setxattr(path, "user.axl.meta", b"uid=4242")
    records, code = run(tmp_path)
    assert (records[0].outcome, code) == (Outcome.LEFT, 4)
    assert "foreign-owned" in records[0].reason
    assert path.exists()


def test_directory_marker_applied_only_when_nothing_below_waits(tmp_path: Path) -> None:
    for name in ("done", "busy"):
        d = tmp_path / name
        d.mkdir()
        temporary(d, "f", b"data")
        (tmp_path / os.fsdecode(DirMarker(name.encode(), 0o750, MTIME_NS).encode())).write_bytes(b"")
    busy = next((tmp_path / "busy").iterdir())
    os.utime(busy, (LATER + 60, LATER + 60))  # still "written to" as of the reference time
    records, code = run(tmp_path)
    markers = {os.fsdecode(r.final or b"").rsplit("/", 1)[-1]: r for r in records if r.kind is Kind.DIR}
    assert markers["done"].outcome is Outcome.COMMITTED
    assert markers["busy"].outcome is Outcome.SKIPPED
    assert "marker waits" in markers["busy"].reason
    assert code == 0
    st = (tmp_path / "done").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o750, MTIME_NS)
    assert stat.S_IMODE((tmp_path / "busy").stat().st_mode) != 0o750
    assert len(list(tmp_path.glob("busy._AXL*"))) == 1 and not list(tmp_path.glob("done._AXL*"))


def test_young_marker_waits(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / os.fsdecode(DirMarker(b"d", 0o700, MTIME_NS).encode())).write_bytes(b"")
    records, code = run(tmp_path, now=None)
    assert (records[0].kind, records[0].outcome, code) == (Kind.DIR, Outcome.SKIPPED, 0)
    assert "younger than" in records[0].reason


def test_written_to_while_being_judged_is_not_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The age is judged on the descriptor's fstat; a write between that and the unlink calls it off."""
    path = temporary(tmp_path, "f", b"part", size=100)
    original = source_mod.read_extras

    def write_then_read(fd: int) -> Any:
        with path.open("ab") as f:
            f.write(b"more")
        return original(fd)

    monkeypatch.setattr(source_mod, "read_extras", write_then_read)
    records, code = run(tmp_path)
    assert (records[0].outcome, code) == (Outcome.SKIPPED, 0)
    assert "written to while being judged" in records[0].reason
    assert path.read_bytes() == b"partmore"


_WRITER = """
import sys, time
with open(sys.argv[1], "ab", buffering=0) as f:
    print("ready", flush=True)
    while True:
        f.write(b"x")
        time.sleep(0.02)
"""


def test_a_temporary_being_appended_to_is_never_taken(tmp_path: Path) -> None:
    path = temporary(tmp_path, "growing", b"", size=10**9)
    old = time.time() - 30 * DAY
    os.utime(path, (old, old))
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 3
        runs = 0
        while time.monotonic() < deadline:
            records, code = run(tmp_path, now=None, older_than=1.0)
            assert [r.outcome for r in records] == [Outcome.SKIPPED], records
            assert code == 0
            proc = run_cli("cleanup", tmp_path, "--older-than", "1s", "--json", check=0)
            assert '"outcome": "skipped"' in proc.stdout
            runs += 1
        assert runs >= 2
        assert path.exists()
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    # Once the writer is gone for longer than the threshold, it is an orphan: incomplete, so deleted.
    size = path.stat().st_size
    assert size > 0
    time.sleep(1.2)
    records, code = run(tmp_path, now=None, older_than=1.0)
    assert (records[0].outcome, code) == (Outcome.ABORTED, 1)
    assert not path.exists()


@needs_root
def test_one_file_system_is_the_default(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mnt], capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        inside = temporary(mnt, "f", b"data")
        records, _ = run(tmp_path)
        assert records == [] and inside.exists()
        records, code = run(tmp_path, one_file_system=False)
        assert ([r.outcome for r in records], code) == ([Outcome.COMMITTED], 0)
        assert (mnt / "f").read_bytes() == b"data"
    finally:
        subprocess.run(["umount", mnt], check=True)


@needs_root
def test_unprivileged_user_takes_only_its_own_orphans(nobody_dir: Path) -> None:
    mine = temporary(nobody_dir, "mine", b"data")
    os.chown(mine, NOBODY, NOBODY)
    roots = temporary(nobody_dir, "roots", b"data")  # root-owned, in nobody's directory
    time.sleep(AGED)  # the chown moved ctime: both must be older than TINY (a fork runs at once)
    code, out, err = run_cli_as(NOBODY, NOBODY, "cleanup", nobody_dir, "--older-than", TINY, "--json")
    assert code == 4, out + err
    got = {
        json.loads(line)["path"].rsplit("/", 1)[-1].split("._AXL")[0]: json.loads(line)
        for line in out.splitlines()[:-1]
    }
    assert got["mine"]["outcome"] == "committed"
    assert got["roots"]["outcome"] == "left" and "not by this user" in got["roots"]["reason"]
    assert (nobody_dir / "mine").read_bytes() == b"data" and roots.exists()


class StatesBackend(Backend):
    """A backend that knows a fixed state per handle (what `ibmbb` learns from bbcmd), and records its wait."""

    name = "test-states"
    uses_handles = True

    def __init__(self, states: dict[int, TransferState]) -> None:
        self.states = states
        self.waited: tuple[set[int], float] | None = None

    def wait(self, handles: AbstractSet[int], timeout: float, progress: Progress) -> bool:
        self.waited = (set(handles), timeout)
        return True

    def status(self, handle: int | None) -> TransferStatus:
        state = TransferState.UNKNOWN if handle is None else self.states.get(handle, TransferState.UNKNOWN)
        return TransferStatus(state, f"test: {state.value}")


def handled(directory: Path, final: str, data: bytes, handle: int) -> Path:
    name = TempName(final.encode(), 0o644, len(data), MTIME_NS, handle).encode()
    path = directory / os.fsdecode(name)
    path.write_bytes(data)
    return path


def test_a_transfer_in_progress_is_never_an_orphan(tmp_path: Path) -> None:
    running, failed, done = 1, 2, 3
    backend = StatesBackend(
        {running: TransferState.IN_PROGRESS, failed: TransferState.FAILED, done: TransferState.SUCCEEDED}
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    busy = handled(sub, "busy", b"complete by size", running)
    (tmp_path / os.fsdecode(DirMarker(b"sub", 0o500, MTIME_NS).encode())).write_bytes(b"")
    handled(tmp_path, "failed", b"complete by size", failed)
    handled(tmp_path, "done", b"complete", done)
    legacy_busy = tmp_path / f"lb._AXL{running}"
    legacy_busy.write_bytes(b"")
    (tmp_path / f"lf._AXL{failed}").write_bytes(b"")
    records, code = run(tmp_path, backend=backend, delete_legacy=True)
    assert backend.waited == ({running, failed, done}, 0.0)  # legacy handles asked too; no waiting
    got = by_name(records)
    assert (got["busy"].outcome, got["lb"].outcome) == (Outcome.SKIPPED, Outcome.SKIPPED)
    assert "transfer is still in progress" in got["busy"].reason
    assert got["sub"].outcome is Outcome.SKIPPED  # the marker waits for its busy directory
    assert (got["failed"].outcome, got["lf"].outcome) == (Outcome.ABORTED, Outcome.ABORTED)
    assert "transfer failed" in got["failed"].reason
    assert got["done"].outcome is Outcome.COMMITTED
    assert code == 1
    assert busy.exists() and legacy_busy.exists() and (tmp_path / "done").exists()
    assert not (tmp_path / "failed").exists()
    assert stat.S_IMODE(sub.stat().st_mode) != 0o500

    seen = status_records(tmp_path, backend=StatesBackend({running: TransferState.IN_PROGRESS}), now=LATER)
    assert (seen["busy"]["outcome"], seen["busy"]["cleanup"]) == ("left", "in transfer")
    assert seen["lb"]["cleanup"] == "would leave"  # cleanup leaves legacy temporaries without --delete-legacy
    assert seen["busy"]["age_seconds"] == pytest.approx(
        LATER - time.time(), abs=60
    )  # made just now; LATER is fixed at import


def test_against_the_simulated_ibm_bb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI and the bundled simulator as bbcmd: a copy in progress is skipped even with
    the smallest --older-than, a failed one deleted, and the first committed once its transfer is over."""
    monkeypatch.setenv("AXL_BBSIM_SPOOL", os.fspath(tmp_path / "spool"))
    monkeypatch.setenv("LSF_STAGE_JOBID", "42")
    bbcmd = tmp_path / "bbcmd"
    package_root = os.path.dirname(axlstateless.__path__[0])  # this checkout, installed or not
    python = shlex.quote(sys.executable)
    bbcmd.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(package_root)} exec {python} -m axlstateless.bbsim "$@"\n')
    bbcmd.chmod(0o755)

    def sim(*args: str) -> dict[str, Any]:
        done = subprocess.run([bbcmd, *args], capture_output=True, text=True, check=True, timeout=60)
        reply: dict[str, Any] = json.loads(done.stdout)
        return reply

    # 5 s for the slow copy: the first cleanup (three interpreter starts) must find it still running,
    # also on a loaded machine.
    sim("config", "--rate=5e5")
    dst = tmp_path / "dst"
    dst.mkdir()
    copies = []
    for tag, size in ((1, 2_500_000), (2, 100_000)):
        src = tmp_path / f"src{tag}"
        src.write_bytes(os.urandom(size))
        handle = int(sim("gethandle", f"--tag={tag}", "--contrib=0")["out"]["transferHandle"])
        temp = handled(dst, f"f{tag}", src.read_bytes(), handle)
        temp.write_bytes(b"")
        copies.append((handle, src, temp))
    (slow, slow_src, slow_temp), (failing, _, failing_temp) = copies
    sim("inject", f"--fail-handle={failing}")
    for handle, src, temp in copies:
        (tmp_path / f"list{handle}").write_text(f"{src} {temp} 0\n")
        sim("copy", f"--filelist={tmp_path / f'list{handle}'}", f"--handle={handle}")
    args = ["cleanup", dst, "--older-than", TINY, "--backend", "ibmbb", "--bbcmd", bbcmd, "--json"]

    # The BB reports the slow copy in progress until released: on a loaded machine a cleanup run can take
    # longer than the copy itself, and the test must not depend on that race.
    sim("inject", f"--set-status={slow}=BBINPROGRESS")
    seen: dict[str, str] = {}
    for line in run_cli(*args).stdout.splitlines()[:-1]:
        record = json.loads(line)
        seen.setdefault(f"{record['path']} {record['outcome']}", record["reason"])
    sim("inject", "--clear", f"--fail-handle={failing}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc = run_cli(*args)
        for line in proc.stdout.splitlines()[:-1]:
            record = json.loads(line)
            seen.setdefault(f"{record['path']} {record['outcome']}", record["reason"])
        if (dst / "f1").exists():
            break
        time.sleep(0.3)
    by_outcome = {key.rsplit(" ", 1)[1] + ":" + key.rsplit("/", 1)[-1][:2] for key in seen}
    assert "skipped:f1" in by_outcome  # taken only once its transfer was over
    assert "aborted:f2" in by_outcome and "committed:f1" in by_outcome
    assert not {"aborted:f1", "left:f1", "left:f2"} & by_outcome
    assert (dst / "f1").read_bytes() == slow_src.read_bytes()
    assert not failing_temp.exists() and not (dst / "f2").exists() and not slow_temp.exists()
    assert slow != failing


# --- the command line --------------------------------------------------------------------------------


def test_cli_threshold_decides(tmp_path: Path) -> None:
    complete = temporary(tmp_path, "complete", b"all")
    temporary(tmp_path, "incomplete", b"a", size=3)
    before = snapshot(tmp_path)
    out, _ = invoke("cleanup", tmp_path, "--older-than", "1h", code=0)
    # Temporaries that are not orphans are counted, and listed only with -v (cron over busy trees).
    assert out == out.splitlines()[-1] + "\n" and "2 skipped" in out
    out, _ = invoke("cleanup", tmp_path, "--older-than", "1h", "-v", code=0)
    assert out.count("skipped   ") == 2 and "younger than 1h" in out
    out, _ = invoke("cleanup", tmp_path, "-v", code=0)  # the default: 24h
    assert "younger than 24h" in out
    assert snapshot(tmp_path) == before
    time.sleep(AGED)
    out, _ = invoke("cleanup", tmp_path, "--older-than", TINY, "--dry-run", code=1)
    assert "would commit 1" in out
    assert snapshot(tmp_path) == before
    out, _ = invoke("cleanup", tmp_path, "--older-than", TINY, code=1)
    assert "aborted" in out and "cleanup: 2 temporaries: 1 committed, 1 aborted" in out
    assert not complete.exists() and (tmp_path / "complete").read_bytes() == b"all"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["complete"]


def test_cli_delete_only(tmp_path: Path) -> None:
    temporary(tmp_path, "complete", b"all")
    time.sleep(AGED)
    out, _ = invoke("cleanup", tmp_path, "--older-than", TINY, "--delete-only", code=1)
    assert "--delete-only" in out
    assert list(tmp_path.iterdir()) == []


def test_cli_json_shape(tmp_path: Path) -> None:
    temporary(tmp_path, "complete", b"all")
    temporary(tmp_path, "incomplete", b"a", size=3)
    (tmp_path / "x._AXL.bogus").write_bytes(b"")
    report = tmp_path.parent / f"{tmp_path.name}-report.jsonl"
    time.sleep(AGED)
    out, err = invoke("cleanup", tmp_path, "--older-than", TINY, "--json", "--report", report, code=1)
    lines = [json.loads(line) for line in out.splitlines()]
    records, summary = lines[:-1], lines[-1]
    assert {r["outcome"] for r in records} == {"committed", "aborted", "skipped"}
    for r in records:
        assert {"path", "kind", "outcome", "reason", "final", "mode", "size", "mtime_ns", "handle"} <= set(r)
        assert {"age_seconds", "orphan"} <= set(r)  # every record, even the unrecognised one: a stable shape
        if r["kind"] == "file":
            assert isinstance(r["age_seconds"], float) and r["age_seconds"] >= 0 and r["orphan"] is True
    assert summary["summary"] and summary["command"] == "cleanup"
    assert (summary["committed"], summary["aborted"], summary["skipped"], summary["exit_code"]) == (1, 1, 1, 1)
    assert [json.loads(line) for line in report.read_text().splitlines() if '"log"' not in line] == lines
    assert err == ""


@pytest.mark.parametrize("bad", ["5x", "24", "-1h", ""])
def test_cli_bad_duration_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    temporary(tmp_path, "f", b"x")
    result = CliRunner().invoke(cli, ["cleanup", os.fspath(tmp_path), "--older-than", bad])
    assert result.exit_code == 2
    assert "--older-than" in result.stderr
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("zero", ["0s", "0m", "0.0h", "0s0m"])
def test_cli_zero_threshold_is_a_usage_error(tmp_path: Path, zero: str) -> None:
    """0 would take a temporary that a copy (a live AXL process too) is writing right now."""
    temporary(tmp_path, "f", b"x", size=5)
    before = snapshot(tmp_path)
    time.sleep(AGED)
    result = CliRunner().invoke(cli, ["cleanup", os.fspath(tmp_path), "--older-than", zero])
    assert result.exit_code == 2, result.output
    assert "Error:" in result.stderr and "positive" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before


def test_cli_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("cleanup", tmp_path / "nope", "--older-than", TINY, check=2)
    assert "Error:" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_help_documents_durations_policy_and_exit_codes() -> None:
    out = CliRunner().invoke(cli, ["cleanup", "--help"]).stdout
    for word in ("90s", "24h", "7d", "NEWER of its mtime and ctime", "--delete-only", "legacy", "--one-file-system"):
        assert word in out
    for code in range(5):
        assert f"  {code}  " in out
    assert "cleanup" in CliRunner().invoke(cli, ["--help"]).stdout


def test_cli_as_subprocess(tmp_path: Path) -> None:
    temporary(tmp_path, "f", b"data")
    run_cli("cleanup", tmp_path, "--older-than", "1h", check=0)
    assert (tmp_path / "f").exists() is False
    proc = run_cli("cleanup", tmp_path, "--older-than", TINY, "-v", check=0)
    assert "committed" in proc.stdout and (tmp_path / "f").read_bytes() == b"data"


# --- status integration ------------------------------------------------------------------------------


def status_records(root: Path, **kwargs: Any) -> dict[str, dict[str, Any]]:
    records: list[Record] = []
    status([os.fspath(root)], records.append, **kwargs)
    return {os.path.basename(os.fsdecode(r.path)).split("._AXL")[0]: r.to_json() for r in records}


def test_status_shows_age_and_what_cleanup_would_do(tmp_path: Path) -> None:
    temporary(tmp_path, "complete", b"all")
    temporary(tmp_path, "incomplete", b"a", size=3)
    (tmp_path / "legacy._AXL").write_bytes(b"")
    (tmp_path / "odd._AXL.v9").write_bytes(b"")
    (tmp_path / "d").mkdir()
    (tmp_path / os.fsdecode(DirMarker(b"d", 0o755, MTIME_NS).encode())).write_bytes(b"")
    before = snapshot(tmp_path)

    now = status_records(tmp_path)  # default threshold, real clock: nothing is old
    assert {now[n]["cleanup"] for n in ("complete", "incomplete", "d")} == {"too young"}
    assert now["legacy"]["cleanup"] == "would leave"  # at any age, without --delete-legacy
    assert now["odd"]["cleanup"] == "never touched"
    assert 0 <= now["complete"]["age_seconds"] < 60
    # Finalize's verdict is unchanged by the annotation.
    assert (now["complete"]["outcome"], now["incomplete"]["outcome"], now["legacy"]["outcome"]) == (
        "committed",
        "aborted",
        "left",
    )

    later = status_records(tmp_path, now=LATER)
    assert later["complete"]["cleanup"] == "would commit"
    assert later["incomplete"]["cleanup"] == "would delete"
    assert later["legacy"]["cleanup"] == "would leave"
    assert later["d"]["cleanup"] == "would apply"
    assert later["complete"]["age_seconds"] == pytest.approx(
        LATER - time.time(), abs=60
    )  # made just now; LATER is fixed at import
    assert snapshot(tmp_path) == before


def test_status_cli_older_than(tmp_path: Path) -> None:
    temporary(tmp_path, "complete", b"all")
    temporary(tmp_path, "incomplete", b"a", size=3)
    out, _ = invoke("status", tmp_path, code=1)
    assert out.count("too young") == 2
    out, _ = invoke("status", tmp_path, "--older-than", "0s", code=1)
    assert "would commit" in out and "would delete" in out
    out, _ = invoke("status", tmp_path, "--older-than", "0s", "--json", code=1)
    records = [json.loads(line) for line in out.splitlines()[:-1]]
    assert sorted(r["cleanup"] for r in records) == ["would commit", "would delete"]
    assert all(isinstance(r["age_seconds"], float) for r in records)
    invoke("status", tmp_path, "--older-than", "soon", code=2)


def test_legacy_name_round_trip_sanity() -> None:
    # The legacy grammar the sweep relies on (nameformat owns it; this pins what cleanup deletes).
    from axlstateless import parse

    assert parse(b"f._AXL") == LegacyName(b"f", None)
    assert parse(b"f._AXL12") == LegacyName(b"f", 12)
