"""Non-root behaviour, in a child process that has dropped to `nobody`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import NOBODY, copy_filelist, run_cli_as, temporaries


def test_nobody_prestages_and_finalizes_own_tree(nobody_dir: Path) -> None:
    src, dst = nobody_dir / "src", nobody_dir / "dst"
    sub = src / "ts.0"
    sub.mkdir(parents=True)
    for i in range(5):
        (sub / f"data.{i}").write_bytes(b"x" * 100 * i)
    os.chmod(sub / "data.1", 0o400)
    os.chmod(sub, 0o555)  # a read-only source directory: its copy must still be writable during the copy
    for p in [src, sub, *sub.iterdir()]:
        os.lchown(p, NOBODY, NOBODY)
    filelist = nobody_dir / "files"
    code, out, err = run_cli_as(NOBODY, NOBODY, "prestage", "-r", src, dst, "--filelist", filelist)
    assert code == 0, err
    assert all(p.stat().st_uid == NOBODY for p in temporaries(dst))
    copy_filelist(filelist)

    # Someone else's temporary in the same tree: reported and left, the run goes on.
    foreign = dst / "ts.0" / "other._AXL.v1.m0644.s0.t0"
    foreign.write_bytes(b"")
    code, out, err = run_cli_as(NOBODY, NOBODY, "finalize", dst, "--json")
    records = [json.loads(line) for line in out.splitlines()]
    summary = records[-1]
    assert code == 4, err
    assert (summary["committed"], summary["left"]) == (5, 3)  # the foreign one, ts.0 and dst above it
    left = {Path(r["path"]).name: r["reason"] for r in records[:-1] if r["outcome"] == "left"}
    assert "owned by uid 0" in left[foreign.name]
    assert foreign.exists()
    for i in range(5):
        assert (dst / "ts.0" / f"data.{i}").read_bytes() == b"x" * 100 * i
    assert (dst / "ts.0" / "data.1").stat().st_mode & 0o7777 == 0o400

    foreign.unlink()
    code, out, err = run_cli_as(NOBODY, NOBODY, "finalize", dst)
    assert code == 0, out + err
    assert (dst / "ts.0").stat().st_mode & 0o7777 == 0o555
    assert temporaries(dst) == []
    assert temporaries(nobody_dir) == []  # dst's own marker, beside it, was applied and removed
    assert dst.stat().st_mode == src.stat().st_mode


def test_nobody_cannot_read_source(nobody_dir: Path) -> None:
    secret = nobody_dir / "secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0o600)
    code, _, err = run_cli_as(NOBODY, NOBODY, "prestage", secret, nobody_dir / "out")
    assert code == 2, err
    assert err.startswith("Error: ") and "cannot be read" in err


def test_root_that_cannot_be_opened_is_a_usage_error(nobody_dir: Path) -> None:
    """Every root is opened before anything is done: one it may not open (here root's 0700 directory)
    stops the run with exit 2 and one Error line naming it, and the other root is left as it was."""
    mine = nobody_dir / "mine"
    mine.mkdir()
    temp = mine / "f._AXL.v1.m0644.s0.t0"
    temp.write_bytes(b"")
    for p in (mine, temp):
        os.lchown(p, NOBODY, NOBODY)
    locked = nobody_dir / "locked"
    locked.mkdir(mode=0o700)
    for command in ("finalize", "cleanup", "status"):
        code, out, err = run_cli_as(NOBODY, NOBODY, command, mine, locked)
        assert code == 2, (command, out, err)
        lines = err.strip().splitlines()
        assert lines[-1].startswith("Error: ") and str(locked) in lines[-1], err
        assert sorted(p.name for p in mine.iterdir()) == [temp.name]
