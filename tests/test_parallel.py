"""Parallel walks: --jobs changes the speed, never the outcome; open descriptors stay bounded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_filelist, run_cli, temporaries

from axlstateless.nameformat import TempName


def mixed_tree(tmp_path: Path) -> Path:
    """Pre-staged nested directories (with their markers), complete and truncated copies, a clash."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(24):
        d = src / f"timestep.{i % 4}" / ("deep/er" if i % 3 == 0 else "flat")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"data.{i}").write_bytes(b"x" * (i * 97))
        os.chmod(d / f"data.{i}", 0o640 if i % 2 else 0o444)
    for d in sorted(src.rglob("*"), reverse=True):
        if d.is_dir():
            os.chmod(d, 0o750)
    dst.mkdir()
    filelist = tmp_path / "files.txt"
    run_cli("prestage", "-r", src, dst, "--filelist", filelist, check=0)
    copy_filelist(filelist, truncate=lambda s: 5 if s.endswith(("data.5", "data.12")) else None)
    # Two temporaries for one final name are left for a person: the same in every worker.
    clash = dst / "src/timestep.1/flat"
    for size in (1, 2):
        (clash / TempName(b"twice", 0o644, size, 0).encode().decode()).write_bytes(b"")
    return dst


def records(root: Path, jobs: int, command: str = "finalize", *extra: str) -> tuple[int, list[dict[str, object]]]:
    proc = run_cli(command, root, "--json", "--jobs", str(jobs), *extra)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = lines.pop()
    assert summary["summary"] is True
    prefix = str(root)
    out = []
    for rec in lines:
        rec.pop("age_seconds", None)  # status and cleanup report it, and it moves with the clock
        out.append({k: (v.replace(prefix, "ROOT") if isinstance(v, str) else v) for k, v in rec.items()})
    return proc.returncode, sorted(out, key=lambda r: (str(r["path"]), str(r["kind"])))


@pytest.mark.parametrize("command", ["status", "finalize"])
def test_jobs_give_identical_outcomes(tmp_path: Path, command: str) -> None:
    one = mixed_tree(tmp_path / "one")
    four = tmp_path / "four"
    shutil.copytree(tmp_path / "one", four, symlinks=True)
    code1, recs1 = records(one, 1, command)
    code4, recs4 = records(four / "dst", 4, command)
    assert recs1 == recs4
    assert code1 == code4 == 4  # the clash is left (4 wins over the aborted truncated copies)
    outcomes = {r["outcome"] for r in recs1}
    assert {"committed", "aborted", "left"} <= outcomes
    assert any(r["kind"] == "dir" and r["outcome"] == "committed" for r in recs1) or command == "status"
    if command == "finalize":
        left = sorted(p.name for p in temporaries(one))
        assert left == sorted(p.name for p in temporaries(four / "dst"))


def test_cleanup_jobs_give_identical_outcomes(tmp_path: Path) -> None:
    one = mixed_tree(tmp_path / "one")
    four = tmp_path / "four"
    shutil.copytree(tmp_path / "one", four, symlinks=True)
    code1, recs1 = records(one, 1, "cleanup", "--older-than", "0s")
    code4, recs4 = records(four / "dst", 4, "cleanup", "--older-than", "0s")
    assert recs1 == recs4
    assert code1 == code4


# Python itself holds a few descriptors; 64 is far below the 1,500 directories of the tree.
NOFILE = 64
WRAPPER = (
    "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({n}, {n})); "
    "sys.argv = ['axl-stateless', *sys.argv[1:]]; runpy.run_module('axlstateless', run_name='__main__')"
)


@pytest.mark.parametrize("jobs", [1, 4])
def test_open_descriptors_stay_bounded(tmp_path: Path, jobs: int) -> None:
    """A chain 30 deep with 50 leaf directories at every level (1,530 directories, each holding a
    temporary) finalizes under RLIMIT_NOFILE=64: descriptors are held for the current path of each
    worker, not for every directory found."""
    root = tmp_path / "root"
    d = root
    name = TempName(b"data", 0o644, 3, 1_000_000_000).encode().decode()
    for level in range(30):
        d = d / f"l{level}"
        d.mkdir(parents=True)
        (d / name).write_bytes(b"abc")
        for leaf in range(50):
            (d / f"w{leaf}").mkdir()
            (d / f"w{leaf}" / name).write_bytes(b"abc")
    proc = run_cli_limited(root, jobs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not temporaries(root)
    assert sum(1 for _ in root.rglob("data")) == 30 * 51


def run_cli_limited(root: Path, jobs: int) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", WRAPPER.format(n=NOFILE), "finalize", str(root), "--jobs", str(jobs)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("jobs", [1, 3])
def test_streamed_directory_gives_the_same_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int) -> None:
    """A directory wider than walk.CHUNK is listed in chunks (bounded memory): clashes far apart in the
    listing, a legacy name, and a directory marker are judged as when it is held whole."""
    from axlstateless import walk
    from axlstateless.finalize import FinalizeOptions, finalize
    from axlstateless.report import Record

    def run(root: Path) -> list[Record]:
        got: list[Record] = []
        finalize([root], got.append, FinalizeOptions(jobs=jobs, dry_run=True))
        return sorted(got, key=lambda r: (r.path, r.kind.value))

    dst = mixed_tree(tmp_path)
    flat = dst / "src/timestep.1/flat"
    for r in range(40):
        (flat / TempName(b"more.%d" % r, 0o644, 0, 0).encode().decode()).write_bytes(b"")
    (flat / "more.3._AXL").write_bytes(b"")
    whole = run(dst)
    monkeypatch.setattr(walk, "CHUNK", 4)
    assert run(dst) == whole
    assert sum(r.reason == "2 temporaries for one final name" for r in whole) == 2


def test_default_jobs_follow_the_file_system(tmp_path: Path) -> None:
    """No --jobs: one worker where calls are CPU (threads only add GIL hand-offs), 16 where they wait."""
    from axlstateless.finalize import LOCAL_FILE_SYSTEMS, PARALLEL_JOBS, default_jobs, file_system_type

    local = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        kind = file_system_type(local)
        assert kind is not None
        assert default_jobs([local]) == (1 if kind in LOCAL_FILE_SYSTEMS else PARALLEL_JOBS)
        # With the native core, threads use the cores on a local file system too.
        cores = min(len(os.sched_getaffinity(0)), 8)
        assert default_jobs([local], native=True) == (cores if kind in LOCAL_FILE_SYSTEMS else PARALLEL_JOBS)
        assert file_system_type(proc) == "proc"
        assert default_jobs([local, proc]) == default_jobs([proc]) == default_jobs() == PARALLEL_JOBS
    finally:
        os.close(local)
        os.close(proc)
