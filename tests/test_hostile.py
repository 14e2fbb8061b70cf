"""Hostile and broken input: every case ends in an asserted outcome, with nothing
outside the roots touched, no hang and no traceback.

Temporaries are forged by hand here, exactly as an attacker who can write the tree would make them.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xattr
from click.testing import CliRunner
from conftest import CLI, NOBODY, is_root, needs_root, run_cli, run_cli_as

import axlstateless.metadata as metadata_mod
import axlstateless.walk as walk_mod
from axlstateless import FinalizeOptions, Outcome, Record, StagePair, TempName, fastpath, finalize, prestage
from axlstateless.cli import cli

# `axlstateless.finalize` the attribute is the function; the module is reached through importlib.
finalize_mod = importlib.import_module("axlstateless.finalize")

MTIME = 1_500_000_000_123_456_789


# --- helpers shared with test_root_over_users.py and test_concurrency.py ---------------------------------


def forge(
    directory: Path,
    final: str | bytes,
    data: bytes = b"payload\n",
    *,
    mode: int = 0o644,
    mtime_ns: int = MTIME,
    size: int | None = None,
    handle: int | None = None,
) -> Path:
    """Write a temporary for `final` with `data`, named as pre-stage would name it."""
    name = TempName(os.fsencode(final), mode, len(data) if size is None else size, mtime_ns, handle).encode()
    path = Path(os.fsdecode(os.path.join(os.fsencode(directory), name)))
    path.write_bytes(data)
    return path


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything an attack could change below `root`: type, mode, owner, size, times (ctime too: any
    chmod, chown or utime shows), link count, content hash, symlink target and xattrs."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content: str | None = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = None
            try:
                attrs = tuple(
                    sorted((k, xattr.getxattr(path, k, symlink=True)) for k in xattr.listxattr(path, symlink=True))
                )
            except OSError:
                attrs = ()
            out[os.path.relpath(path, root)] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_nlink,
                st.st_ino,
                content,
                attrs,
            )
    return out


def settle(*roots: Path | bytes, **options: Any) -> list[Record]:
    """Finalize in-process; the records, in the order they were reported."""
    records: list[Record] = []
    finalize([os.fsencode(r) for r in roots], records.append, FinalizeOptions(**options))
    return records


def by_name(records: list[Record]) -> dict[bytes, Record]:
    out: dict[bytes, Record] = {}
    for r in records:
        name = os.path.basename(r.path)
        assert name not in out, f"two records for {name!r}"
        out[name] = r
    return out


def cli_json(*args: str | os.PathLike[str], timeout: float = 60) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Run ``axl-stateless ARGS --json`` as a subprocess: exit code, records, summary. No traceback, ever."""
    proc = subprocess.run(
        [*CLI, *map(os.fspath, args), "--json"], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines, proc.stderr
    assert lines[-1].get("summary") is True, lines[-1]
    return proc.returncode, lines[:-1], lines[-1]


class Canary:
    """A canary area outside the roots, with a root-owned secret. `seal` records its snapshot once the
    attack is set up; after the test, the snapshot must be unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sealed: dict[str, tuple[Any, ...]] | None = None
        path.mkdir()
        secret = path / "secret"
        secret.write_bytes(b"root:x:0:0\n")
        os.chmod(secret, 0o600)
        (path / "f").write_bytes(b"canary final\n")
        (path / "inner").mkdir()
        forge(path / "inner", "victim", b"not yours\n")

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def seal(self) -> None:
        self.sealed = snapshot(self.path)

    def check(self) -> None:
        assert self.sealed is not None, "the test never sealed its canary area"
        assert snapshot(self.path) == self.sealed, "something outside the roots changed"


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Canary]:
    canary = Canary(tmp_path / "outside")
    yield canary
    canary.check()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


# --- symlinks ---------------------------------------------------------------------------------------------


def test_symlink_temporary_to_file_outside_is_refused(root: Path, outside: Canary) -> None:
    secret = outside / "secret"
    name = TempName(b"passwd", 0o4755, secret.stat().st_size, MTIME).encode()
    (root / os.fsdecode(name)).symlink_to(secret)
    outside.seal()
    code, records, _ = cli_json("finalize", root)
    assert code == 4
    assert [r["outcome"] for r in records] == ["left"]
    assert "symbolic link" in records[0]["reason"]
    assert not (root / "passwd").exists()
    assert (root / os.fsdecode(name)).is_symlink()


def test_symlink_middle_component_is_not_followed(root: Path, outside: Canary) -> None:
    (root / "d").symlink_to(outside / "inner")
    outside.seal()
    code, records, _ = cli_json("finalize", root)
    assert (code, records) == (0, [])


def test_final_name_that_is_a_symlink_is_replaced_not_followed(root: Path, outside: Canary) -> None:
    (root / "f").symlink_to(outside / "f")
    forge(root, "f", b"new\n", mode=0o600)
    outside.seal()
    code, _, _ = cli_json("finalize", root)
    assert code == 0
    assert not (root / "f").is_symlink()
    assert (root / "f").read_bytes() == b"new\n"


def _swap_for_symlink(directory: Path, target: Path) -> None:
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target)


def test_directory_swapped_for_symlink_before_commit(
    root: Path, outside: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk holds the directory's descriptor: a swap of its name after the listing cannot redirect
    the commit, which happens in the directory that was listed (now under its new name)."""
    d = root / "d"
    d.mkdir()
    forge(d, "f", b"mine\n")
    original = finalize_mod.FinalizeVisitor.visit
    swapped: list[bool] = []

    # Hooked where both paths pass, after the listing and before any temporary is opened (the native
    # core settles this one without calling settle_file).
    def swap_then_settle(self: finalize_mod.FinalizeVisitor, listing: walk_mod.Listing) -> bool:
        if not swapped and listing.path == os.fsencode(d):
            _swap_for_symlink(d, outside.path)
            swapped.append(True)
        return original(self, listing)

    monkeypatch.setattr(finalize_mod.FinalizeVisitor, "visit", swap_then_settle)
    outside.seal()
    records = settle(root)
    assert swapped
    assert [r.outcome for r in records] == [Outcome.COMMITTED]
    assert (root / "d.moved" / "f").read_bytes() == b"mine\n"
    (root / "d").unlink()


def test_directory_swapped_for_symlink_before_descent(
    root: Path, outside: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swapped after the parent was listed and before the walk opens it: O_NOFOLLOW refuses it."""
    d = root / "d"
    d.mkdir()
    forge(d, "f", b"mine\n")
    original = walk_mod.list_directory

    def list_then_swap(fd: int, path: bytes, **kwargs: Any) -> walk_mod.Listing:
        listing = original(fd, path, **kwargs)
        if path == os.fsencode(root):
            _swap_for_symlink(d, outside.path)
        return listing

    monkeypatch.setattr(walk_mod, "list_directory", list_then_swap)
    outside.seal()
    records = settle(root)
    assert [(r.outcome, os.path.basename(r.path)) for r in records] == [(Outcome.LEFT, b"d")]
    assert "cannot be read" in records[0].reason
    assert (root / "d.moved").is_dir()
    (root / "d").unlink()


def test_directory_swapped_by_a_racing_process(root: Path, outside: Canary) -> None:
    """A process swaps directories for symlinks to the canary area in a loop while finalize runs:
    whatever the interleaving, nothing outside changes and nothing is finalized there."""
    dirs = []
    for i in range(40):
        d = root / f"d{i}"
        d.mkdir()
        for j in range(10):
            forge(d, f"f{j}", b"x" * j)
        dirs.append(d)
    script = (
        "import os, sys, time\n"
        "dirs, target = sys.argv[1:-1], sys.argv[-1]\n"
        "end = time.monotonic() + 3\n"
        "while time.monotonic() < end:\n"
        "    for d in dirs:\n"
        "        try:\n"
        "            os.rename(d, d + '.moved'); os.symlink(target, d)\n"
        "            os.unlink(d); os.rename(d + '.moved', d)\n"
        "        except OSError:\n"
        "            pass\n"
    )
    outside.seal()
    racer = subprocess.Popen(["python3", "-c", script, *map(str, dirs), str(outside / "inner")])
    try:
        code, records, _ = cli_json("finalize", root, "--jobs", "4")
    finally:
        racer.wait(timeout=30)
    assert code in (0, 4)
    for d in dirs:  # the racer may have been stopped between its steps
        if d.is_symlink():
            d.unlink()
            d.with_name(d.name + ".moved").rename(d)
    # A listing taken mid-rename may name one directory twice (getdents is not atomic): a second worker
    # then finds its temporaries already done, which is "skipped", never an error.
    assert all(r["outcome"] in ("committed", "left", "skipped") for r in records)
    cli_json("finalize", root)
    for d in dirs:
        for j in range(10):
            assert (d / f"f{j}").read_bytes() == b"x" * j


# --- links and file types ---------------------------------------------------------------------------------


def test_hardlink_to_file_outside_is_refused(root: Path, outside: Canary) -> None:
    secret = outside / "secret"
    name = TempName(b"shadow", 0o644, secret.stat().st_size, MTIME).encode()
    os.link(secret, root / os.fsdecode(name))
    outside.seal()
    code, records, _ = cli_json("finalize", root)
    assert code == 4
    assert "2 hard links" in records[0]["reason"]
    assert not (root / "shadow").exists()


def _special_files(root: Path) -> dict[str, Callable[[Path], None]]:
    def fifo(p: Path) -> None:
        os.mkfifo(p)

    def sock(p: Path) -> None:
        # AF_UNIX paths are limited to 108 bytes: bind the short relative name from inside the directory.
        here = os.getcwd()
        os.chdir(p.parent)
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(p.name)
        finally:
            os.chdir(here)

    def device(p: Path) -> None:
        os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers

    def directory(p: Path) -> None:
        p.mkdir()

    makers = {"fifo": fifo, "socket": sock, "directory": directory}
    if is_root:
        makers["device"] = device
    return makers


def test_special_files_named_as_temporaries_are_refused(root: Path) -> None:
    makers = _special_files(root)
    for kind, make in makers.items():
        make(root / os.fsdecode(TempName(kind.encode(), 0o644, 0, MTIME).encode()))
    code, records, _ = cli_json("finalize", root, timeout=30)  # a FIFO opened for reading would block
    assert code == 4
    assert sorted(os.path.basename(r["final"]) for r in records) == sorted(makers)
    for r in records:
        assert r["outcome"] == "left"
        assert "refused" in r["reason"]
    assert sorted(p.name.partition("._AXL")[0] for p in root.iterdir()) == sorted(makers)


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory", "symlink"])
def test_file_swapped_for_special_file_after_listing(
    root: Path, outside: Canary, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The listing said "regular file"; by the open it is something else: the open neither blocks nor
    follows, and fstat on the descriptor refuses it."""
    if kind == "device" and not is_root:
        pytest.skip("mknod of a device needs root")
    temp = forge(root, "f", b"")
    original = finalize_mod.FinalizeVisitor.visit

    # After the listing, before the open, on both paths (the native core opens this one itself).
    def swap_then_settle(self: finalize_mod.FinalizeVisitor, listing: walk_mod.Listing) -> bool:
        temp.unlink()
        if kind == "symlink":
            temp.symlink_to(outside / "secret")
        else:
            _special_files(root)[kind](temp)
        return original(self, listing)

    monkeypatch.setattr(finalize_mod.FinalizeVisitor, "visit", swap_then_settle)
    outside.seal()
    records = settle(root)
    assert [r.outcome for r in records] == [Outcome.LEFT]
    assert not (root / "f").exists()


# --- names ------------------------------------------------------------------------------------------------

MALFORMED = [
    b"f._AXL.v1.m999.s1.t0",  # three mode digits
    b"f._AXL.v1.m0999.s1.t0",  # not octal
    b"f._AXL.v1.m07777.s1.t0",  # five mode digits
    b"f._AXL.v1.m0644.s99999999999999999999.t0",  # size over 2**63
    b"f._AXL.v1.m0644.s1.t99999999999999999999",  # mtime over 2**63
    b"f._AXL.v1.m0644.s1.t0.h99999999999999999999",  # handle over 2**64
    b"f._AXL.v1.m0644.s1.t0.h184467440737095516160",  # too many digits
    b"f._AXL.v1.m0644.s.t0",  # empty field
    b"f._AXL.v1.m.s1.t0",
    b"f._AXL.v1.m0644.s1.t",
    b"f._AXL.v1.m0644.s1.t0.h",
    b"f._AXL.v1.m0644.s1.t0.x1",  # extra field
    b"f._AXL.v1.m0644.s1.t0.h1.h2",
    b"f._AXL.v1.m0644.t0.s1",  # wrong order
    b"f._AXL.v1.s1.m0644.t0",
    b"f._AXL.v1.m0644.s01.t0",  # leading zero
    b"f._AXL.v1.m0644.s1.t-0",  # negative zero
    b"f._AXL.v1.m0644.s+1.t0",
    b"f._AXL.v1.m0644.s-1.t0",  # negative size
    b"f._AXL.V1.m0644.s1.t0",  # wrong case
    b"f._AXL.v2.m0644.s1.t0",  # unknown version
    b"f._AXL.v1.m0644.s1.t0.",  # trailing dot
    b"f._AXL.v1.m0644.s1.t0 ",  # trailing blank
    b"f._AXL.v1.m0644.s1.t0\n",  # trailing newline
    b"f._AXL.v1.dir.m0755",  # marker without its mtime
    b"f._AXLx",
    b"._AXL.v1.m0644.s1.t0",  # empty final name
    b"..._AXL.v1.m0644.s1.t0",  # final name ".."
    b"f._AXL.v1.m0644.s1.t0\xff",
]


def test_malformed_suffixes_are_never_touched(root: Path) -> None:
    for name in MALFORMED:
        (root / os.fsdecode(name)).write_bytes(b"x")
    code, records, summary = cli_json("finalize", root)
    names = {os.fsencode(os.path.basename(r["path"])): r for r in records}
    assert summary["committed"] == summary["aborted"] == 0
    for name in MALFORMED:
        assert names[name]["kind"] == "unrecognised", name
        assert names[name]["outcome"] == "skipped"
    assert code == 0
    assert sorted(os.fsencode(p.name) for p in root.iterdir()) == sorted(MALFORMED)
    assert not (root / "f").exists()


def test_names_of_255_bytes_non_utf8_and_newlines(root: Path) -> None:
    probe = TempName(b"x", 0o640, 3, MTIME).encode()
    long_final = b"L" * (255 - len(probe) + 1)
    finals = [long_final, b"caf\xe9\xff.dat", b"line\nbreak", b"-leading dash", b" sp ace "]
    for final in finals:
        forge(Path(os.fsdecode(root)), final, b"abc", mode=0o640)
    assert len(TempName(long_final, 0o640, 3, MTIME).encode()) == 255
    code, records, _ = cli_json("finalize", root, "--verbose")
    assert code == 0
    assert sorted(os.fsencode(os.path.basename(r["final"])) for r in records) == sorted(finals)
    for final in finals:
        path = os.path.join(os.fsencode(root), final)
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, MTIME)
    with pytest.raises(Exception, match="NAME_MAX"):
        TempName(long_final + b"L", 0o640, 3, MTIME).encode()


def test_human_output_of_a_newline_name_stays_on_one_line(root: Path) -> None:
    forge(root, "a\nb", b"abc", size=1)
    proc = run_cli("finalize", root, check=1)
    assert "Traceback" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 2  # one record, one summary


# --- final names ------------------------------------------------------------------------------------------


def test_final_name_existing_as_directory(root: Path) -> None:
    (root / "f").mkdir()
    (root / "f" / "inside").write_bytes(b"keep")
    temp = forge(root, "f")
    code, records, _ = cli_json("finalize", root)
    assert code == 4
    assert "is a directory" in records[0]["reason"]
    assert (root / "f" / "inside").read_bytes() == b"keep"
    assert temp.exists()


def test_two_temporaries_for_one_final_name(root: Path) -> None:
    (root / "f").write_bytes(b"old")
    a = forge(root, "f", b"one", mode=0o600)
    b = forge(root, "f", b"two", mode=0o644)
    code, records, _ = cli_json("finalize", root)
    assert code == 4
    assert [r["outcome"] for r in records] == ["left", "left"]
    assert all("2 temporaries for one final name" in r["reason"] for r in records)
    assert (root / "f").read_bytes() == b"old"
    assert a.exists() and b.exists()


# --- permissions and file-system limits -------------------------------------------------------------------


@needs_root
def test_read_only_directory_as_its_owner(nobody_dir: Path) -> None:
    d = nobody_dir / "ro"
    d.mkdir()
    temp = forge(d, "f", b"abc")
    for p in (d, temp):
        os.chown(p, NOBODY, NOBODY)
    os.chmod(d, 0o555)
    code, out, err = run_cli_as(NOBODY, NOBODY, "finalize", d, "--json")
    assert "Traceback" not in err
    assert code == 4
    rec = json.loads(out.splitlines()[0])
    assert rec["outcome"] == "left"
    assert "Permission denied" in rec["reason"]
    assert temp.exists()
    assert not (d / "f").exists()
    # Its owner makes the directory writable: a rerun finishes the job.
    os.chmod(d, 0o755)
    code, _, err = run_cli_as(NOBODY, NOBODY, "finalize", d)
    assert code == 0, err
    assert (d / "f").read_bytes() == b"abc"


@needs_root
def test_file_the_user_cannot_chmod_is_reported(nobody_dir: Path) -> None:
    d = nobody_dir / "mixed"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    theirs = forge(d, "theirs", b"abc", mode=0o4755)  # root-owned, in nobody's directory
    mine = forge(d, "mine", b"abc")
    os.chown(mine, NOBODY, NOBODY)
    before = theirs.stat()
    code, out, err = run_cli_as(NOBODY, NOBODY, "finalize", d, "--json")
    assert "Traceback" not in err
    assert code == 4
    recs = {os.path.basename(json.loads(line).get("final") or ""): json.loads(line) for line in out.splitlines()}
    assert recs["theirs"]["outcome"] == "left"
    assert "owned by uid 0" in recs["theirs"]["reason"]
    assert recs["mine"]["outcome"] == "committed"
    assert theirs.stat() == before


@needs_root
def test_immutable_temporary_is_left_and_a_rerun_commits(root: Path) -> None:
    temp = forge(root, "f", b"abc", mode=0o600)
    if subprocess.run(["chattr", "+i", temp], capture_output=True, check=False).returncode:
        pytest.skip("this file system has no immutable attribute")
    try:
        code, records, _ = cli_json("finalize", root)
        assert code == 4
        assert records[0]["outcome"] == "left"
        assert "not permitted" in records[0]["reason"]
        assert not (root / "f").exists()
    finally:
        subprocess.run(["chattr", "-i", temp], check=True)
    code, _, _ = cli_json("finalize", root)
    assert code == 0
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o600


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_xattr_write_out_of_space_at_prestage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(b"x" * i)
    dst = tmp_path / "dst"
    dst.mkdir()
    calls = []

    def full(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) >= 3:  # the second file's first attribute
            raise OSError(err, os.strerror(err))

    monkeypatch.setattr(metadata_mod.xattr, "setxattr", full)
    result = CliRunner().invoke(cli, ["prestage", "-r", os.fspath(src), os.fspath(dst)])
    assert result.exit_code == 4, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("Error: ")
    assert os.strerror(err) in result.stderr
    assert len(result.stderr.splitlines()) == 1
    # Nothing half-made is left for the failing file; a rerun (space freed) stages everything.
    assert not [p for p in (dst / "src").iterdir() if p.name.startswith("f1._AXL")]
    monkeypatch.undo()
    result = CliRunner().invoke(cli, ["prestage", "-r", os.fspath(src), os.fspath(dst)])
    assert result.exit_code == 0, result.output
    assert len([p for p in (dst / "src").iterdir() if "._AXL" in p.name]) == 3


@pytest.mark.parametrize(
    "failure",
    [errno.ENOTSUP, errno.ENODATA, errno.E2BIG, errno.ERANGE, "garbage", "huge"],
)
def test_missing_or_forged_xattrs_at_finalize(root: Path, monkeypatch: pytest.MonkeyPatch, failure: object) -> None:
    """No xattrs (or unusable ones) degrade nothing the name carries: mode and mtime still restored."""
    temp = forge(root, "f", b"abc", mode=0o640)
    calls: list[object] = []
    if failure == "garbage":
        xattr.setxattr(temp, "user.axl.meta", b"\xff;uid=;gid=x;atime=99999999999999999999999999;=;;")
    elif failure == "huge":
        xattr.setxattr(temp, "user.axl.meta", b"atime=1;" * 400)
    else:

        def broken(*args: Any, **kwargs: Any) -> bytes:
            calls.append(args)
            raise OSError(failure, os.strerror(failure))  # type: ignore[arg-type]

        # Where the engine reads the extras: os.getxattr on the open descriptor; and where the native
        # core does (its fgetxattr), when finalize runs it.
        monkeypatch.setattr(metadata_mod.os, "getxattr", broken)
        fastpath.inject("getxattr", 0, failure)  # type: ignore[arg-type]
    try:
        records = settle(root)
        native_calls = fastpath.counters().get("getxattr", 0)
    finally:
        fastpath.inject(None, -1)
    if isinstance(failure, int):
        assert calls or native_calls, "the injected getxattr failure never fired"
    assert [r.outcome for r in records] == [Outcome.COMMITTED]
    st = (root / "f").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, MTIME)


@needs_root
def test_ramfs_without_xattrs_full_cycle(tmp_path: Path) -> None:
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "ramfs", "ramfs", mnt], capture_output=True, check=False).returncode:
        pytest.skip("cannot mount ramfs here")
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_bytes(b"hello")
        os.chmod(src / "a", 0o444)
        os.utime(src / "a", ns=(MTIME, MTIME))
        result = prestage([StagePair(os.fsencode(src / "a"), os.fsencode(mnt / "a"))])
        assert not result.xattrs
        Path(os.fsdecode(result.files[0].temporary)).write_bytes(b"hello")
        forge(mnt, "b", b"hi", mode=0o2750)
        records = settle(mnt)
        assert sorted(r.outcome.value for r in records) == ["committed", "committed"]
        st = (mnt / "a").stat()
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, (mnt / "a").read_bytes()) == (0o444, MTIME, b"hello")
        # Root-owned, group root: set-gid is never granted by a name alone.
        assert stat.S_IMODE((mnt / "b").stat().st_mode) == 0o750
    finally:
        subprocess.run(["umount", mnt], check=True)


# --- a broken bbcmd (the ibmbb backend, end to end through finalize) -------------------------------------

FAKE_BBCMD = Path(__file__).parent / "fakes" / "scripted_bbcmd.py"


def bb_listing(*handles: int) -> dict[str, Any]:
    out = {"numhandles": str(len(handles)), "numavailhandles": str(len(handles))}
    out["handles"] = "(" + ",".join(map(str, handles)) + ")"
    return {"stdout": {"rc": "0", "0": {"id": "1", "rc": "0", "out": out}}}


def finalize_with_bbcmd(
    tmp_path: Path, root: Path, rules: list[tuple[str, dict[str, Any]]], default: dict[str, Any] | None
) -> tuple[int, list[dict[str, Any]], dict[str, Any], str, float]:
    script = {"rules": [{"match": m, "replies": [r]} for m, r in rules]}
    if default is not None:
        script["default"] = default
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = dict(os.environ, SCRIPTED_BBCMD_SCRIPT=str(tmp_path / "script.json"))
    env["SCRIPTED_BBCMD_LOG"] = str(tmp_path / "calls.log")
    args = ["finalize", root, "--json", "--backend", "ibmbb", "--jobid", "42", "--poll-interval", "0.01"]
    args += ["--bbcmd", f"{sys.executable} {FAKE_BBCMD}", "--bbcmd-timeout", "1", "--bbcmd-retries", "1"]
    args += ["--wait-timeout", "5"]
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, *map(os.fspath, args)], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    elapsed = time.monotonic() - started
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, lines[:-1], lines[-1], proc.stderr, elapsed


BROKEN_BBCMD = {
    "hangs": {"sleep": 30, "stdout": bb_listing()["stdout"]},
    "crashes": {"crash": True},
    "garbage": {"stdout": "Segmentation fault? core dumped\n\x00\x01"},
    "partial JSON": {"stdout": '{"rc":"0","0":{"id":"1","rc":"0","out":{"handles":"(101,'},
    "fails": {"stdout": "", "exit": 255},
}


@pytest.mark.parametrize("kind", sorted(BROKEN_BBCMD))
def test_broken_bbcmd_changes_nothing(tmp_path: Path, root: Path, kind: str) -> None:
    """Whatever bbcmd does, nothing is committed or aborted on a guess: one Error line, exit 4, every
    temporary left as it was, and a hung bbcmd is killed within its timeout."""
    temps = [forge(root, "a", b"abc", handle=101), forge(root, "b", b"ab", size=3, handle=102)]
    before = snapshot(root)
    code, records, summary, err, elapsed = finalize_with_bbcmd(tmp_path, root, [], BROKEN_BBCMD[kind])
    assert code == 4, err
    assert records == []
    assert summary.get("error"), summary
    assert err.count("Error: ") == 1, err
    assert snapshot(root) == before
    assert all(t.exists() for t in temps)
    assert elapsed < 20


def test_bbcmd_listing_handles_no_temporary_has(tmp_path: Path, root: Path) -> None:
    """Handles the BB lists but no temporary names (other jobs', or forged) are ignored; each temporary
    gets the verdict of its own handle, and a "success" whose size does not verify is still aborted."""
    forge(root, "ok", b"abc", handle=101)
    forge(root, "failed", b"abc", handle=102)
    forge(root, "short", b"ab", size=3, handle=103)
    rules = [
        ("--matchstatus=BBFULLSUCCESS", bb_listing(101, 103, 999, 12345)),
        ("--matchstatus=BBFAILED", bb_listing(102, 777)),
        ("--matchstatus=", bb_listing()),
    ]
    code, records, _, err, _ = finalize_with_bbcmd(tmp_path, root, rules, None)
    assert code == 1, err
    got = {os.path.basename(r["final"]): r["outcome"] for r in records}
    assert got == {"ok": "committed", "failed": "aborted", "short": "aborted"}
    assert (root / "ok").read_bytes() == b"abc"
    assert sorted(p.name for p in root.iterdir()) == ["ok"]


def test_tree_deeper_than_the_descriptor_limit(root: Path) -> None:
    """A tree deeper than the open-file limit: the walk reports the directory it could not open (exit
    4), neither crashes nor hangs, and a run with room finishes the job."""
    import resource

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(300):  # built through descriptors: the path soon passes what a path string may hold
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    name = TempName(b"deep", 0o644, 1, MTIME).encode()
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    with open(os.open(name, os.O_WRONLY, dir_fd=fd), "wb") as f:
        f.write(b"x")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    proc = subprocess.run(
        [*CLI, "finalize", root, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=low_limit,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 4
    records = [json.loads(line) for line in proc.stdout.splitlines()[:-1]]
    assert [r["outcome"] for r in records] == ["left"]
    assert "Too many open files" in records[0]["reason"]
    assert os.stat(name, dir_fd=fd).st_size == 1  # untouched
    code, records2, _ = cli_json("finalize", root, "--verbose")
    assert code == 0
    assert [r["outcome"] for r in records2] == ["committed"]
    assert os.stat(b"deep", dir_fd=fd).st_mtime_ns == MTIME
    os.close(fd)
