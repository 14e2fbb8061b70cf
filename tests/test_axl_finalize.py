"""AXL's own transfers, finished from its state files: every real AXL v0.9.0 scenario of tests/data/axl
against its manifest, with and without ``--axl-state``, and the state files cut at every length.

What a manifest says must happen (tests/data/axl/README.md): "commit" (the final has the source's content,
size, mode and times, the temporary is gone), "delete" (the temporary is gone, no final appears),
"report" (exactly as it was, and the exit code is not 0), "leave" (the final stays byte for byte),
"open" (g1: a complete temporary of a transfer AXL marked failed; this project commits it, see
docs/format.md), "none" (nothing on disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import pytest
from axlfixtures import SCENARIOS, WITH_STATE, extract
from axlmake import Entry, write_state
from click.testing import CliRunner
from conftest import run_cli

from axlstateless.axlsource import AxlIndex
from axlstateless.backends.base import Backend, Progress, TransferState, TransferStatus
from axlstateless.cli import cli
from axlstateless.errors import StateFileError, UsageError
from axlstateless.finalize import FinalizeOptions, finalize
from axlstateless.report import Outcome, Record, Reporter

Snapshot = dict[str, tuple[int, int, int, str]]


def snapshot(root: Path) -> Snapshot:
    """Every file below `root` (symlinks not followed): size, mode, mtime_ns, sha256; read without
    moving atimes (O_NOATIME), which the commits' checks compare too."""
    out: Snapshot = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mode, st.st_mtime_ns, _digest(path, st))
    return out


def _digest(path: str, st: os.stat_result) -> str:
    if not stat.S_ISREG(st.st_mode):
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_NOFOLLOW)
    except PermissionError:  # O_NOATIME needs the owner or root
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cli_json(*args: str | os.PathLike[str]) -> tuple[int, list[dict[str, Any]], dict[str, Any], str]:
    result = CliRunner().invoke(cli, [os.fspath(a) for a in args] + ["--json"], catch_exceptions=False)
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return result.exit_code, lines[:-1], lines[-1], result.stderr


def rel(entry: dict[str, Any] | None) -> str | None:
    return None if entry is None else os.fsdecode(bytes.fromhex(entry["hex"]))


def named(files: list[dict[str, Any]]) -> set[str]:
    """The relative paths a manifest speaks of (finals and temporaries)."""
    return {p for f in files for p in (rel(f["final"]), rel(f["temp"])) if p is not None}


def expect_exit(code: int, expected: str) -> None:
    if expected == "0":
        assert code == 0
    elif expected == "non-zero":
        assert code != 0
    else:
        assert code not in (0, 2), code  # "see README": never 0, never a usage error


def check_manifest(root: Path, info: dict[str, Any], before: Snapshot, after: Snapshot) -> None:
    """Each file as its manifest's action says, and nothing the manifest does not name changed."""
    for f in info["files"]:
        final, temp = rel(f["final"]), rel(f["temp"])
        assert final is not None
        action = f["action"]
        if action in ("commit", "open"):  # g1's "open": committed here (docs/format.md)
            got = after.get(final)
            assert got is not None, (final, action)
            size, mode, mtime_ns, digest = got
            assert (size, stat.S_IMODE(mode), mtime_ns, digest) == (
                f["size"],
                int(f["mode"], 8),
                f["mtime_ns"],
                f["sha256"],
            ), final
            assert os.stat(root / final).st_atime_ns == f["atime_ns"], final
            assert temp is None or temp not in after, temp
        elif action == "delete":
            assert temp is not None and temp not in after, temp
            assert after.get(final) == before.get(final), final  # absent, or (f1) the older final unchanged
        elif action in ("report", "leave"):
            for path in (final, temp):
                if path is not None:
                    assert after.get(path) == before.get(path), (path, action)
        else:
            assert action == "none"
            assert final not in after and (temp is None or temp not in after)
    spoken = named(info["files"]) | set(info["state_files"])
    assert {k: v for k, v in before.items() if k not in spoken} == {k: v for k, v in after.items() if k not in spoken}


@pytest.mark.parametrize("sid", SCENARIOS)
def test_every_scenario_with_its_state_file(tmp_path: Path, sid: str) -> None:
    root, info, _ = extract(sid, tmp_path)
    before = snapshot(root)
    code, records, summary, err = cli_json("finalize", root / "dst", "--axl-state", root / "state")
    expect_exit(code, info["expect"]["with_state"])
    after = snapshot(root)
    check_manifest(root, info, before, after)
    assert summary["exit_code"] == code
    if info["expect"].get("state_file_after") == "removed":
        assert not (root / "state" / "axl.state").exists()
        assert "state file removed" in err
    # One record per state-file entry, whatever became of it (plus the names the walk listed).
    entries = {r["path"] for r in records if r["kind"] == "axl"}
    assert len(entries) >= sum(1 for f in info["files"] if f.get("state"))
    if sid == "e1":
        # The partial final written without the extension: reported, never deleted, the state file kept
        # as the only record that it is partial (so every rerun says so again).
        big = next(r for r in records if r["path"].endswith("ckpt/big0.dat"))
        assert big["outcome"] == "left" and "incomplete" in big["reason"]
        assert (root / "state" / "axl.state").exists()

    code2, _, summary2, _ = cli_json("finalize", root / "dst", "--axl-state", root / "state")
    expect_exit(code2, info["expect"]["rerun"])
    assert snapshot(root) == after  # a rerun changes nothing
    # Only e1 keeps its state file (a partial final); its never-started files are reported again.
    assert (summary2["committed"], summary2["aborted"]) == (0, 7 if sid == "e1" else 0)


@pytest.fixture(scope="module")
def aged_trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[Path, dict[str, Any]]]]:
    """Every scenario extracted once, its files' mtimes a day old, then more than a second waited (ctime
    cannot be set back: a second is the least `cleanup --older-than` accepts)."""
    base = tmp_path_factory.mktemp("aged")
    trees = {}
    day_ago = time.time() - 86400
    for sid in SCENARIOS:
        root, info, _ = extract(sid, base)
        for dirpath, _dirs, files in os.walk(root / "dst"):
            for name in files:
                os.utime(os.path.join(dirpath, name), (day_ago, day_ago), follow_symlinks=False)
        trees[sid] = (root, info)
    time.sleep(1.1)
    return base, trees


@pytest.mark.parametrize("sid", SCENARIOS)
def test_without_a_state_file_nothing_is_deleted_or_committed(
    aged_trees: tuple[Path, dict[str, tuple[Path, dict[str, Any]]]], sid: str
) -> None:
    root, info = aged_trees[1][sid]
    before = snapshot(root)
    code, records, _, _ = cli_json("finalize", root / "dst")
    expect_exit(code, info["expect"]["without_state"])
    legacy = [r for r in records if r["kind"] == "legacy"]
    assert all(r["outcome"] == "left" and "--axl-state" in r["reason"] for r in legacy)
    if legacy:
        assert code == 4  # never 0 while AXL temporaries are left
    code, _, _, _ = cli_json("cleanup", root / "dst", "--older-than", "1s")
    assert code == (4 if legacy else 0)
    code, _, _, _ = cli_json("status", root / "dst")
    assert snapshot(root) == before


@pytest.mark.parametrize("sid", SCENARIOS)
def test_delete_legacy_deletes_only_orphaned_legacy_temporaries(
    aged_trees: tuple[Path, dict[str, tuple[Path, dict[str, Any]]]], sid: str
) -> None:
    root, info = aged_trees[1][sid]
    before = snapshot(root)
    code, _, _, _ = cli_json("cleanup", root / "dst", "--older-than", "1s", "--delete-legacy")
    after = snapshot(root)
    gone = set(before) - set(after)
    temps = {rel(f["temp"]) for f in info["files"]} - {None}
    if sid == "f1":
        # What --delete-legacy's help warns of: done._AXL, done._AXL7 and x._AXL7 are finals of an earlier run,
        # but by AXL's own grammar they are legacy temporaries, and with no state file nothing tells them apart.
        assert gone == temps | {"dst/done._AXL", "dst/done._AXL7", "dst/x._AXL7"}
    else:
        assert gone == temps
    assert not set(after) - set(before)  # nothing committed
    assert {k: v for k, v in before.items() if k not in gone} == after
    assert code == (1 if gone else 0)


def test_the_final_names_a_state_file_names_are_not_legacy_temporaries(tmp_path: Path) -> None:
    """f1: x._AXL7._AXL is the temporary of x._AXL7 (AXL splits at the last ._AXL), and x._AXL7 itself,
    which the state file names as a final, is neither committed nor deleted as a temporary."""
    root, _, _ = extract("f1", tmp_path)
    code, records, _, _ = cli_json(
        "cleanup", root / "dst", "--older-than", "1s", "--delete-legacy", "--axl-state", root / "state", "--dry-run"
    )
    by_path = {os.path.relpath(r["path"], root): r for r in records}
    assert by_path["dst/x._AXL7._AXL"]["kind"] == "axl"
    assert by_path["dst/x._AXL7"]["outcome"] == "skipped" and "final name" in by_path["dst/x._AXL7"]["reason"]
    assert by_path["dst/done._AXL7"]["kind"] == "legacy"
    assert code in (0, 1, 4)


def test_status_reports_from_the_state_file_and_changes_nothing(tmp_path: Path) -> None:
    root, _, _ = extract("b1", tmp_path)
    before = snapshot(root)
    code, records, summary, _ = cli_json("status", root / "dst", "--axl-state", root / "state")
    assert snapshot(root) == before
    outcomes = [r["outcome"] for r in records if r["kind"] == "axl"]
    assert outcomes.count("committed") == 22 and outcomes.count("aborted") == 8
    assert code == 1 and summary["exit_code"] == 1


def test_cleanup_settles_old_axl_temporaries_from_the_state_file(
    aged_trees: tuple[Path, dict[str, tuple[Path, dict[str, Any]]]], tmp_path: Path
) -> None:
    root, info, _ = extract("a2", tmp_path)
    young = snapshot(root)
    code, _, summary, _ = cli_json("cleanup", root / "dst", "--axl-state", root / "state", "--older-than", "1h")
    assert (code, summary["committed"]) == (0, 0) and snapshot(root) == young  # too young: not orphans
    time.sleep(1.1)
    code, _, summary, _ = cli_json("cleanup", root / "dst", "--axl-state", root / "state", "--older-than", "1s")
    assert (code, summary["committed"]) == (0, 30)
    check_manifest(root, info, young, snapshot(root))
    assert not (root / "state" / "axl.state").exists()


# --- state files that cannot be read whole -------------------------------------------------------------


def test_a_corrupt_state_file_is_one_error_the_rest_of_the_run_goes_on(tmp_path: Path) -> None:
    good, good_info, _ = extract("a2", tmp_path)
    bad, _, bad_states = extract("d2", tmp_path)
    data = bad_states[0].read_bytes()
    bad_states[0].write_bytes(data[: len(data) // 2])
    before_bad = snapshot(bad)
    before_good = snapshot(good)
    roots = [os.fspath(good / "dst"), os.fspath(bad / "dst")]
    states = ["--axl-state", os.fspath(good / "state"), "--axl-state", os.fspath(bad / "state")]
    result = CliRunner().invoke(cli, ["finalize", *roots, *states])
    assert result.exit_code == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {bad_states[0]}: {errors[0].split(': ', 2)[2]}"]
    assert "Traceback" not in result.stderr
    assert snapshot(bad) == before_bad  # its temporaries untouched, the state file kept
    check_manifest(good, good_info, before_good, snapshot(good))  # the rest of the run unaffected
    assert not (good / "state" / "axl.state").exists()


def test_a_missing_state_path_is_a_usage_error_a_removed_one_is_not(tmp_path: Path) -> None:
    root, _, states = extract("a3", tmp_path)
    with pytest.raises(UsageError):
        AxlIndex.load([tmp_path / "no" / "such" / "dir"], [])
    code, _, _, _ = cli_json("finalize", root / "dst", "--axl-state", states[0])
    assert code == 0 and not states[0].exists()
    # A rerun naming the state file that the first run removed finishes (nothing left to do).
    code, _, _, _ = cli_json("finalize", root / "dst", "--axl-state", states[0])
    assert code == 0


@pytest.mark.parametrize("sid", WITH_STATE)
def test_truncated_state_files_are_never_used(tmp_path: Path, sid: str) -> None:
    """Cuts of the state file: an error naming the file (never a traceback, never a partial transfer)
    through the engine's loader; a spread of them through a whole finalize changes nothing.

    Every length of f1's (and every length of every state file at the parse level, in
    test_axlstate.py); of the larger ones, every 61st length and the last 100 (the CRC and the file size
    field's boundary), to keep this test to seconds."""
    root, _, states = extract(sid, tmp_path)
    whole = states[0].read_bytes()
    lengths = (
        range(len(whole)) if sid == "f1" else sorted({*range(0, len(whole), 61), *range(len(whole) - 100, len(whole))})
    )
    cuts = tmp_path / "cuts"
    cuts.mkdir()
    dst = os.fsencode(root / "dst")
    roots = [(dst, os.open(dst, os.O_RDONLY | os.O_DIRECTORY))]
    try:
        for length in lengths:
            # A new file per length: truncating one in place makes ext4 flush it each time (auto_da_alloc).
            cut = cuts / f"cut{length}"
            cut.write_bytes(whole[:length])
            index = AxlIndex.load([cut], roots)
            assert not index.dirs and not index.state_files and not index.outside, length
            assert [(type(e), e.path) for e in index.errors] == [(StateFileError, os.fsdecode(cut))], length
            cut.unlink()
        assert len(AxlIndex.load([states[0]], roots).state_files) == 1
    finally:
        os.close(roots[0][1])
    before = snapshot(root)
    for length in range(0, len(whole), max(1, len(whole) // 5)):
        states[0].unlink()
        states[0].write_bytes(whole[:length])
        records: list[Record] = []
        finalize([root / "dst"], records.append, FinalizeOptions(axl_state=[root / "state"]))
        assert not [r for r in records if r.outcome in (Outcome.COMMITTED, Outcome.ABORTED)], length
        assert snapshot(root) == {**before, "state/axl.state": snapshot(root)["state/axl.state"]}


# --- IBM BB transfers: AXL's handle is waited on like ours ---------------------------------------------


class HandleStates(Backend):
    """A backend with a fixed state per handle (what `ibmbb` learns from bbcmd), recording its wait."""

    name = "test-handles"
    uses_handles = True

    def __init__(self, states: dict[int, TransferState]) -> None:
        self.states = states
        self.waited: set[int] | None = None

    def wait(self, handles: AbstractSet[int], timeout: float, progress: Progress) -> bool:
        self.waited = set(handles)
        return True

    def status(self, handle: int | None) -> TransferStatus:
        state = TransferState.UNKNOWN if handle is None else self.states[handle]
        return TransferStatus(state, state.value)


def test_axl_bb_handles_are_waited_on_and_only_success_commits(tmp_path: Path) -> None:
    running, failed, done = 101, 102, 103
    dst, state_dir = tmp_path / "dst", tmp_path / "state"
    dst.mkdir()
    state_dir.mkdir()
    for handle in (running, failed, done):
        temp = dst / f"rank{handle}.dat._AXL{handle}"  # AXL's BBAPI temporary: <final>._AXL<handle>
        temp.write_bytes(b"complete")
        entries = [
            Entry(b"/src/%d" % handle, os.fsencode(temp), 8, 0o100640, 10**18, 10**18, os.geteuid(), os.getegid())
        ]
        write_state(state_dir / f"{handle}.state", entries, handle=handle, status=2)
    backend = HandleStates(
        {running: TransferState.IN_PROGRESS, failed: TransferState.FAILED, done: TransferState.SUCCEEDED}
    )
    records: list[Record] = []
    reporter = Reporter("finalize")

    def sink(record: Record) -> None:
        records.append(record)
        reporter(record)

    finalize([dst], sink, FinalizeOptions(backend=backend, axl_state=[state_dir]))
    assert backend.waited == {running, failed, done}
    got = {os.path.basename(r.path).split(b"._AXL")[0].decode(): r for r in records}
    assert (got[f"rank{running}.dat"].outcome, got[f"rank{running}.dat"].in_progress) == (Outcome.LEFT, True)
    assert got[f"rank{failed}.dat"].outcome is Outcome.ABORTED and "failed" in got[f"rank{failed}.dat"].reason
    assert got[f"rank{done}.dat"].outcome is Outcome.COMMITTED
    assert sorted(p.name for p in dst.iterdir()) == sorted([f"rank{done}.dat", f"rank{running}.dat._AXL{running}"])
    assert sorted(p.name for p in state_dir.iterdir()) == [f"{running}.state"]  # the rest settled, removed
    assert reporter.finish().exit_code == 3  # the one still in transfer: rerun


def test_a_handle_in_the_name_that_differs_from_the_state_file_is_refused(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    temp = dst / "x._AXL7"
    temp.write_bytes(b"data")
    entries = [Entry(b"/src/x", os.fsencode(temp), 4, 0o100644, 10**18, 10**18, os.geteuid(), os.getegid())]
    state = write_state(tmp_path / "s.state", entries, handle=8)
    records: list[Record] = []
    finalize([dst], records.append, FinalizeOptions(axl_state=[state]))
    assert [(r.outcome, "handle" in r.reason) for r in records] == [(Outcome.LEFT, True)]
    assert temp.read_bytes() == b"data" and state.exists()


def test_lsf_poststage_script_takes_axl_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bbkit import Sim
    from test_poststage import BASH, outputs, poststage

    if BASH is None:
        pytest.skip("needs bash")
    sim = Sim(tmp_path, monkeypatch)
    owner = None if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    root, info, states = extract("a2", tmp_path / "fixture", owner=owner)
    before = snapshot(root)
    env = {"AXL_BBCMD": str(sim.path), "LSF_STAGE_JOBID": sim.jobid, "AXL_STATE_DIR": f"{root / 'state'}"}
    done = poststage(tmp_path, [root / "dst"], **env)
    assert done.returncode == 0, done.stderr
    records, log = outputs(root / "dst", sim.jobid)
    assert records[-1]["committed"] == 30 and "state file removed" in log
    spoken = {p for p in snapshot(root) if p.startswith("dst/axl-finalize.")}
    check_manifest(root, info, before, {k: v for k, v in snapshot(root).items() if k not in spoken})
    assert not states[0].exists()


def test_dry_run_changes_nothing_and_keeps_the_state_file(tmp_path: Path) -> None:
    root, _, states = extract("b1", tmp_path)
    before = snapshot(root)
    code, _, summary, err = cli_json("finalize", root / "dst", "--axl-state", root / "state", "--dry-run")
    assert snapshot(root) == before and states[0].exists()
    assert (summary["committed"], summary["aborted"], code) == (22, 8, 1)
    assert "removed" not in err


def test_help_says_what_the_options_risk() -> None:
    out = CliRunner().invoke(cli, ["cleanup", "--help"]).stdout
    assert "--delete-legacy" in out and "only copy of complete data" in " ".join(out.split())
    for command in ("finalize", "cleanup", "status"):
        assert "--axl-state" in CliRunner().invoke(cli, [command, "--help"]).stdout


def test_axl_state_is_refused_with_mpi_before_anything_changes(tmp_path: Path) -> None:
    root, _, _ = extract("a2", tmp_path)
    before = snapshot(root)
    with pytest.raises(UsageError, match="--mpi"):
        finalize([root / "dst"], [].append, FinalizeOptions(axl_state=[root / "state"], mpi=object()))  # type: ignore[arg-type]
    assert snapshot(root) == before


def test_other_kvtree_files_in_a_state_directory_are_skipped(tmp_path: Path) -> None:
    """SCR keeps kvtree files of its own beside AXL's: a directory search passes them over; one the user
    names explicitly is an error (it is not an AXL state file)."""
    from axlstateless import kvtree

    root, _, _ = extract("a2", tmp_path)
    other = root / "state" / "scr.index"
    other.write_bytes(kvtree.dumps({b"DSET": {b"1": {}}}))
    code, _, summary, err = cli_json("finalize", root / "dst", "--axl-state", root / "state", "--dry-run")
    assert (code, summary["committed"]) == (0, 30) and "Error" not in err
    code, _, _, err = cli_json("finalize", root / "dst", "--axl-state", other, "--dry-run")
    assert code == 4 and f"Error: {other}" in err


def test_a_truncated_state_file_through_the_console_script(tmp_path: Path) -> None:
    root, _, states = extract("g1", tmp_path)
    whole = states[0].read_bytes()
    before = snapshot(root)
    for length in (0, 19, 20, len(whole) // 2, len(whole) - 1):
        states[0].unlink()
        states[0].write_bytes(whole[:length])
        proc = run_cli("finalize", root / "dst", "--axl-state", states[0])
        assert proc.returncode == 4, proc.stderr
        assert "Traceback" not in proc.stderr
        assert [line for line in proc.stderr.splitlines() if line.startswith("Error:")] == [
            next(line for line in proc.stderr.splitlines() if line.startswith(f"Error: {states[0]}: "))
        ]
        after = snapshot(root)
        assert {k: v for k, v in after.items() if k != "state/axl.state"} == {
            k: v for k, v in before.items() if k != "state/axl.state"
        }
