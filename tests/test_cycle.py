"""The stateless cycle on a local file system: pre-stage, copy with any mover, finalize."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import copy_filelist, is_root, needs_root, run_cli, temporaries

from axlstateless.cli import cli


def invoke(*args: str | os.PathLike[str], code: int = 0) -> tuple[str, str]:
    result = CliRunner().invoke(cli, [os.fspath(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}\n{result.stdout}\n{result.stderr}"
    return result.stdout, result.stderr


def make_axl_tree(src: Path, seed: int = 7) -> list[Path]:
    """AXL's acceptance scenario: 50 files of 0..49 KiB (one empty) over 7 nested directories."""
    rng = random.Random(seed)
    dirs = [src / "a", src / "a/b", src / "a/b/c", src / "d", src / "d/e", src / "d/e/f", src / "d/e/f/g"]
    for d in dirs:
        d.mkdir(parents=True)
    files = []
    for i in range(50):
        f = dirs[i % 7] / f"file.{i}"
        f.write_bytes(rng.randbytes(i * 1024))
        os.chmod(f, rng.choice([0o644, 0o444, 0o400, 0o755, 0o640, 0o600]))
        os.utime(f, ns=(1_600_000_000_123_456_789 + i, 1_500_000_000_987_654_321 + i * 1_000_003))
        files.append(f)
    for n, d in enumerate(reversed(dirs)):
        os.chmod(d, [0o755, 0o555, 0o750, 0o700, 0o511, 0o775, 0o555][n])
        os.utime(d, ns=(1_400_000_000_000_000_000 + n, 1_450_000_000_111_111_111 + n))
    return files


def stat_tree(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


def test_axl_acceptance_scenario(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_axl_tree(src)
    dst.mkdir()
    filelist = tmp_path / "files.txt"
    invoke("prestage", "-r", src, dst, "--filelist", filelist)
    assert len(filelist.read_text().splitlines()) == 50
    assert all(p.stat().st_size == 0 for p in temporaries(dst) if p.is_file())
    copy_filelist(filelist)
    out, _ = invoke("finalize", dst, "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert records[-1]["summary"] and records[-1]["committed"] == 58 and records[-1]["exit_code"] == 0
    assert sum(r.get("kind") == "dir" for r in records) == 8  # src itself and its 7 directories
    assert temporaries(dst) == []
    subprocess.run(["diff", "-r", src, dst / "src"], check=True)
    assert stat_tree(dst / "src") == stat_tree(src)
    assert ((dst / "src").stat().st_mode, (dst / "src").stat().st_mtime_ns) == (
        src.stat().st_mode,
        src.stat().st_mtime_ns,
    )
    # Idempotent: a second run finds nothing to do.
    out, _ = invoke("finalize", dst, "--json")
    assert json.loads(out.splitlines()[-1])["committed"] == 0


@pytest.mark.parametrize("mode", [0o444, 0o400, 0o777, 0o640, 0o2755])
def test_modes_are_restored(tmp_path: Path, mode: int) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    f = src / "f"
    f.write_bytes(b"x" * 100)
    if is_root:  # set-gid is kept on a file whose owner belongs to its group, not on a root-owned one
        os.chown(f, 65534, 65534)
    os.chmod(f, mode)
    filelist = tmp_path / "l"
    invoke("prestage", f, dst, "--filelist", filelist)
    copy_filelist(filelist)
    invoke("finalize", dst)
    assert stat.S_IMODE((dst / "f").stat().st_mode) == mode
    assert (dst / "f").stat().st_mtime_ns == f.stat().st_mtime_ns


@needs_root
def test_setuid_root_owned_is_dropped_and_reported(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    f = src / "tool"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o4755)
    filelist = tmp_path / "l"
    invoke("prestage", f, dst, "--filelist", filelist)
    copy_filelist(filelist)
    out, _ = invoke("finalize", dst, "--json")
    record = json.loads(out.splitlines()[0])
    assert record["outcome"] == "committed"
    assert "set-uid" in record["reason"]
    assert stat.S_IMODE((dst / "tool").stat().st_mode) == 0o755


@pytest.mark.parametrize("cut", ["short", "long"])
def test_incomplete_copies_are_aborted_and_old_final_kept(tmp_path: Path, cut: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "ckpt").write_bytes(b"new" * 1000)
    (dst / "ckpt").write_bytes(b"old checkpoint")
    os.chmod(dst / "ckpt", 0o444)
    before = (dst / "ckpt").stat()
    filelist = tmp_path / "l"
    invoke("prestage", src / "ckpt", dst, "--filelist", filelist)
    copy_filelist(filelist)
    (temp,) = temporaries(dst)
    if cut == "short":
        os.truncate(temp, 1000)
    else:
        with temp.open("ab") as f:
            f.write(b"extra")
    out, _ = invoke("finalize", dst, "--json", code=1)
    record = json.loads(out.splitlines()[0])
    assert record["outcome"] == "aborted" and "size" in record["reason"]
    assert (dst / "ckpt").read_bytes() == b"old checkpoint"
    after = (dst / "ckpt").stat()
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (before.st_ino, before.st_mode, before.st_mtime_ns)
    assert temporaries(dst) == []


ODD_NAMES = [b"with space", b"new\nline", b"caf\xe9-latin1", b"-leading-dash", b"--help", b"data._AXL.txt", b"x._AXLy"]


def test_odd_names_round_trip(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    pairs = b""
    for n, name in enumerate(ODD_NAMES):
        Path(os.fsdecode(os.fsencode(src) + b"/" + name)).write_bytes(b"%d" % n * (n + 1))
        pairs += os.fsencode(src) + b"/" + name + b"\0" + os.fsencode(dst) + b"/" + name + b"\0"
    listing = tmp_path / "pairs"
    listing.write_bytes(pairs)
    invoke("prestage", "--from-list", listing, "-0")
    for temp in temporaries(dst):
        final = os.fsencode(temp.name).rsplit(b"._AXL", 1)[0]
        shutil.copyfile(os.path.join(os.fsencode(src), final), temp)
    invoke("finalize", dst)
    for n, name in enumerate(ODD_NAMES):
        assert Path(os.fsdecode(os.fsencode(dst) + b"/" + name)).read_bytes() == b"%d" % n * (n + 1)
    assert temporaries(dst) == []


def test_prestage_refusals(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "ok").write_bytes(b"1")
    (src / "x._AXL7").write_bytes(b"1")
    (src / ("y" * 240)).write_bytes(b"1")
    os.mkfifo(src / "fifo")
    (src / "link").symlink_to(src / "ok")
    (src / "sp ace").write_bytes(b"1")
    cases = [
        ([src / "x._AXL7", dst], "parses as a temporary"),
        ([src / ("y" * 240), dst], "NAME_MAX"),
        ([src / "missing", dst], "no such file"),
        ([src / "fifo", dst], "not a regular file"),
        ([src / "link", dst], "symbolic link"),
        ([src, dst], "is a directory"),
        ([src / "sp ace", dst, "--filelist", tmp_path / "fl"], "white space"),
    ]
    for args, message in cases:
        _, err = invoke("prestage", *args, code=2)
        assert message in err and err.startswith("Error: ") and err.count("\n") == 1, err
    assert list(dst.iterdir()) == []  # nothing created by a refused run
    invoke("prestage", "-L", src / "link", dst)  # following a symlink when asked
    assert len(temporaries(dst)) == 1


def test_prestage_replaces_earlier_temporary_and_keeps_final(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_bytes(b"one")
    (dst / "f").write_bytes(b"old")
    invoke("prestage", src / "f", dst)
    (src / "f").write_bytes(b"second version")
    invoke("prestage", src / "f", dst, "--handle", "42")
    (temp,) = temporaries(dst)
    assert temp.name.endswith(f".s14.t{(src / 'f').stat().st_mtime_ns}.h42")
    assert (dst / "f").read_bytes() == b"old"
    assert temp.stat().st_size == 0 and stat.S_IMODE(temp.stat().st_mode) == 0o600


def test_prestage_dry_run_creates_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_axl_tree(src)
    out, _ = invoke("prestage", "-r", src, dst / "new", "--dry-run", "--json")
    assert json.loads(out.splitlines()[-1])["temporaries"] == 50
    assert not dst.exists()


def test_dry_run_and_status_change_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_axl_tree(src)
    dst.mkdir()
    filelist = tmp_path / "l"
    invoke("prestage", "-r", src, dst, "--filelist", filelist)
    copy_filelist(filelist, truncate=lambda s: 10 if s.endswith("file.33") else None)
    snapshot = stat_tree(dst)
    out, _ = invoke("finalize", dst, "--dry-run", "--json", code=1)
    summary = json.loads(out.splitlines()[-1])
    assert (summary["committed"], summary["aborted"], summary["dry_run"]) == (57, 1, True)
    out, _ = invoke("status", dst, code=1)
    assert "delete" in out and "file.33._AXL" in out and "incomplete: size 10" in out
    assert stat_tree(dst) == snapshot


def test_report_file_and_json_lines(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(b"x" * i)
    filelist = tmp_path / "l"
    invoke("prestage", src / "f0", src / "f1", src / "f2", dst, "--filelist", filelist)
    copy_filelist(filelist)
    report = tmp_path / "report.jsonl"
    proc = run_cli("finalize", dst, "--report", report, check=0)
    lines = [json.loads(line) for line in report.read_text().splitlines() if '"log"' not in line]
    assert [r["outcome"] for r in lines[:-1]] == ["committed"] * 3
    assert lines[-1]["summary"] and lines[-1]["exit_code"] == 0
    assert "finalize: 3 temporaries: 3 committed" in proc.stdout


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("finalize", tmp_path / "nope", check=2)
    assert proc.stderr.startswith("Error: ") and "no such directory" in proc.stderr and "Traceback" not in proc.stderr


@needs_root
def test_file_system_without_user_xattrs(tmp_path: Path) -> None:
    """ramfs keeps modes and times but has no user xattrs: the name alone must suffice."""
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "ramfs", "ramfs", mnt], check=False, capture_output=True).returncode:
        pytest.skip("cannot mount ramfs here")
    try:
        from conftest import xattrs_supported

        assert not xattrs_supported(mnt)
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_bytes(b"data" * 10)
        os.chmod(src / "f", 0o440)
        filelist = tmp_path / "l"
        out, _ = invoke("prestage", src / "f", mnt, "--filelist", filelist)
        assert "no user xattrs" in out
        copy_filelist(filelist)
        invoke("finalize", mnt)
        st = (mnt / "f").stat()
        assert stat.S_IMODE(st.st_mode) == 0o440 and st.st_mtime_ns == (src / "f").stat().st_mtime_ns
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_directories_without_a_source_are_made_as_mkdir_p_would(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello\n")
    old = os.umask(0o022)
    try:
        invoke("prestage", tmp_path / "a.txt", tmp_path / "new" / "dir" / "a.txt")
    finally:
        os.umask(old)
    for d in (tmp_path / "new", tmp_path / "new" / "dir"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert not any("._AXL" in p.name for p in tmp_path.iterdir())  # no marker: no source mode to restore


def test_a_failed_run_prints_no_contradicting_summary(tmp_path: Path) -> None:
    proc = run_cli("finalize", tmp_path / "missing", "--json", check=2)
    (summary,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert summary["exit_code"] == 2 and "no such directory" in summary["error"]
    proc = run_cli("finalize", tmp_path / "missing", check=2)
    assert proc.stdout == ""
    assert proc.stderr.startswith("Error: ")
