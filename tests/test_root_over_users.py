"""Root over users' trees: finalize as root over a tree that `nobody` owns and has
salted with attacker-made temporaries.

Whatever the attacker wrote: nothing outside the roots changes (checksum and full stat snapshot of a
canary area, ctime included), no set-uid or set-gid bit appears on a root-owned file (or on any file
with a group its owner is not in), ownership is never given away, and files of other users inside the
tree are never replaced.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xattr
from conftest import CLI, NOBODY, is_root
from test_hostile import MTIME, cli_json, forge, snapshot

from axlstateless import PrestageError, StagePair, TempName, prestage
from axlstateless.nameformat import DirMarker

pytestmark = pytest.mark.skipif(not is_root, reason="needs root: the finalizer under test runs as root")

OTHER_UID = 4321  # a user with no account: owns a file in the shared sticky directory


def as_user(uid: int, gid: int, action: Callable[[], None]) -> None:
    """Run `action` in a forked child that dropped to uid:gid for good: what it makes, the user made."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            action()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attacker's set-up failed"


@pytest.fixture
def scratch() -> Iterator[Path]:
    """World-traversable (pytest's tmp_path is under a 0700 directory nobody cannot enter)."""
    path = Path(tempfile.mkdtemp(prefix="axl-root-over-users-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def privileged_bits(root: Path) -> list[str]:
    """Files below `root` with a set-uid or set-gid bit that their owner could not have set themselves."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_mode & stat.S_ISUID and st.st_uid == 0:
                found.append(f"{name}: set-uid root")
            if st.st_mode & stat.S_ISGID and (st.st_gid == 0 or st.st_uid == 0 or st.st_gid != NOBODY):
                found.append(f"{name}: set-gid group {st.st_gid}")
    return found


@pytest.mark.parametrize("command", ["finalize", "cleanup", "status"])
def test_root_finalizes_a_hostile_user_tree(scratch: Path, command: str) -> None:
    """Finalize (the post-stage), cleanup (from cron) and status, as root over the same hostile tree."""
    canary = scratch / "canary"
    canary.mkdir()
    shadow = canary / "shadow"
    shadow.write_bytes(b"root:$6$secret:19000::::::\n")
    os.chmod(shadow, 0o600)
    tool = canary / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chmod(tool, 0o755)
    mine = canary / "nobody-owned"  # outside the roots, but the attacker's own file: it may link it
    mine.write_bytes(b"attacker data outside the roots\n")
    os.chown(mine, NOBODY, NOBODY)
    (canary / "etc").mkdir()

    home = scratch / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    shared = scratch / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    victim_root = shared / "root.dat"
    victim_root.write_bytes(b"root's file in a sticky directory\n")
    victim_other = shared / "other.dat"
    victim_other.write_bytes(b"another user's file\n")
    os.chown(victim_other, OTHER_UID, OTHER_UID)
    root_dir = home / "rootdir"  # a root-owned directory inside the user's tree
    root_dir.mkdir(mode=0o755)
    root_cfg = home / "root.cfg"  # a root-owned file inside the user's tree
    root_cfg.write_bytes(b"root's own\n")

    def attack() -> None:
        def temp(directory: Path, final: str, data: bytes, mode: int) -> Path:
            return forge(directory, final, data, mode=mode)

        # 1. a symlink named as a temporary, to a root-owned file outside the roots
        name = TempName(b"passwd", 0o4755, shadow.stat().st_size, MTIME).encode()
        os.symlink(shadow, os.path.join(os.fsencode(home), name))
        # 2. a hardlink to the attacker's own file outside the roots
        os.link(mine, home / os.fsdecode(TempName(b"linked", 0o4755, mine.stat().st_size, MTIME).encode()))
        # 3. forged xattrs: pre-staged "for root", or for group root
        t = temp(home, "forged-uid", b"x", 0o4755)
        xattr.setxattr(t, "user.axl.meta", b"uid=0;gid=0")
        t = temp(home, "forged-gid", b"x", 0o2755)
        xattr.setxattr(t, "user.axl.meta", b"uid=65534;gid=0")
        # 4. names asking for set-uid and set-gid on the user's own files: the user could chmod those
        temp(home, "own-suid", b"#!/bin/sh\n", 0o4755)
        temp(home, "own-sgid", b"#!/bin/sh\n", 0o2755)
        temp(home, "own-6777", b"#!/bin/sh\n", 0o6777)
        # 5. temporaries in the sticky directory that would replace other users' files
        temp(shared, "root.dat", b"pwned\n", 0o644)
        temp(shared, "other.dat", b"pwned\n", 0o644)
        # 6. a temporary over a root-owned file in the user's own directory
        temp(home, "root.cfg", b"pwned\n", 0o644)
        # 7. a marker asking to chmod a root-owned directory, and a world-writable set-uid one for its own
        for final, mode in ((b"rootdir", 0o7777), (b"own-dir", 0o6777), (b"group0-dir", 0o2777)):
            Path(os.fsdecode(os.path.join(os.fsencode(home), DirMarker(final, mode, MTIME).encode()))).touch()
        (home / "own-dir").mkdir()
        (home / "group0-dir").mkdir()
        # 8. a symlinked middle directory into the canary area, with a temporary beyond it
        (home / "etc").symlink_to(canary / "etc")
        # 9. a final name that is a symlink to the canary: the commit must replace the link, not the target
        (home / "motd").symlink_to(shadow)
        temp(home, "motd", b"hello\n", 0o644)
        # 10. a FIFO named as a temporary
        os.mkfifo(home / os.fsdecode(TempName(b"fifo", 0o644, 0, MTIME).encode()))
        # 11. an honest temporary, which must still be committed
        temp(home, "results.dat", b"42\n", 0o640)

    as_user(NOBODY, NOBODY, attack)
    # 12. a hardlink to root's secret (protected_hardlinks forbids it to nobody; a site may not have it)
    name = TempName(b"shadow-link", 0o4755, shadow.stat().st_size, MTIME).encode()
    os.link(shadow, home / os.fsdecode(name))
    # 13. the user's file in a group of root's (a set-gid directory of a root group would do this)
    own_group0 = forge(home, "group0-sgid", b"x", mode=0o2755)
    os.chown(own_group0, NOBODY, 0)
    os.chown(home / "group0-dir", NOBODY, 0)  # likewise a directory, whose marker asks for set-gid
    # 14. a root-owned temporary asking for set-uid (a root pre-stage of a set-uid source)
    forge(home, "root-suid", b"x", mode=0o6755)

    # 15. legacy AXL names (cleanup --delete-legacy deletes old ones): a hardlink to root's secret and a symlink to it
    os.link(shadow, home / "shadow2._AXL")
    (home / "shadow3._AXL77").symlink_to(shadow)
    os.lchown(home / "shadow3._AXL77", NOBODY, NOBODY)

    roots_owned_by_others = {
        p: snapshot_one(p) for p in (victim_root, victim_other, root_cfg, root_dir, shadow, tool, mine)
    }
    sealed = snapshot(canary)
    # The smallest positive threshold (0 is refused); --delete-legacy so that cleanup's refusals of the two
    # legacy names are put to the test.
    cleanup_args = ["--verbose", "--older-than", "0.01s", "--delete-legacy"]
    extra = {"finalize": ["--verbose"], "cleanup": cleanup_args, "status": []}[command]
    whole = snapshot(scratch)
    code, records, _ = cli_json(command, home, shared, *extra)
    if command == "status":
        assert code == 4
        assert snapshot(scratch) == whole, "status changed something"
        return
    assert code == 4
    outcome = {os.path.basename(r["final"] or r["path"]): (r["outcome"], r["reason"]) for r in records}

    assert snapshot(canary) == sealed, "the canary area outside the roots changed"
    for path, before in roots_owned_by_others.items():
        assert snapshot_one(path) == before, f"{path} changed"
    assert privileged_bits(scratch) == []

    left = {k for k, (o, _) in outcome.items() if o == "left"}
    assert left >= {
        "passwd",
        "linked",
        "shadow-link",
        "forged-uid",
        "forged-gid",
        "root.dat",
        "other.dat",
        "root.cfg",
        "rootdir",
        "fifo",
    }, outcome
    assert "symbolic link" in outcome["passwd"][1]
    # Legacy names: finalize never opens them (left, reported); cleanup --delete-legacy refuses these two.
    for legacy in ("shadow2", "shadow3"):
        assert outcome[legacy][0] == "left", outcome[legacy]
        if command == "cleanup":
            assert "refused" in outcome[legacy][1] or "hard links" in outcome[legacy][1], outcome[legacy]
    assert "hard links" in outcome["linked"][1]
    assert "hard links" in outcome["shadow-link"][1]
    assert "foreign-owned" in outcome["forged-uid"][1]
    assert "foreign group" in outcome["forged-gid"][1]
    assert "would replace" in outcome["root.dat"][1]
    assert "would replace" in outcome["other.dat"][1]
    assert "would replace" in outcome["root.cfg"][1]

    # The user's own files: committed, still the user's, with the bits the user could have set.
    for final, mode in (("own-suid", 0o4755), ("own-sgid", 0o2755), ("own-6777", 0o6777), ("results.dat", 0o640)):
        assert outcome[final][0] == "committed", outcome[final]
        st = (home / final).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, mode), final
    st = (home / "group0-sgid").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0, 0o755)
    st = (home / "root-suid").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    assert "set-uid/set-gid dropped" in outcome["root-suid"][1]
    st = (home / "own-dir").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o2777)  # its own group: set-gid kept
    # Regression: set-gid on a directory of group root would make everything created below inherit it.
    st = (home / "group0-dir").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0, 0o777)
    # A final name that was a symlink to root's secret: the link is replaced, the secret untouched.
    assert not (home / "motd").is_symlink()
    assert (home / "motd").stat().st_uid == NOBODY
    # Nothing was followed into the canary through the symlinked middle directory.
    assert (home / "etc").is_symlink()
    # No file in the user's tree was given to anyone: every file root did not make is still nobody's.
    made_by_root = {"rootdir", "root.cfg", "group0-sgid", "root-suid"}
    made_by_root |= {p.name for p in home.iterdir() if p.name.startswith("shadow-link")} | {"shadow2._AXL"}
    for p in home.iterdir():
        if p.name not in made_by_root:
            assert p.lstat().st_uid == NOBODY, p


def snapshot_one(path: Path) -> tuple[Any, ...]:
    st = path.lstat()
    data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, data)


def test_nobody_cannot_use_root_finalize_to_chown(scratch: Path) -> None:
    """A temporary whose xattrs name another group the owner is not in is refused; one naming the owner's
    own group is restored to it (the only chown root ever does, and only of the group)."""
    home = scratch / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    names: dict[str, Path] = {}

    def attack() -> None:
        names["ok"] = forge(home, "regroup", b"x", mode=0o2750)
        names["bad"] = forge(home, "steal", b"x", mode=0o2750)
        xattr.setxattr(names["ok"], "user.axl.meta", b"uid=65534;gid=65534")
        xattr.setxattr(names["bad"], "user.axl.meta", b"uid=65534;gid=42")  # shadow's group on Debian

    as_user(NOBODY, NOBODY, attack)
    for p in home.iterdir():
        os.chown(p, NOBODY, 100)  # as if the mover (running as root) had left group "users" on them
    code, records, _ = cli_json("finalize", home, "--verbose")
    assert code == 4
    by = {os.path.basename(r["final"]): r for r in records}
    assert by["regroup"]["outcome"] == "committed"
    st = (home / "regroup").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o2750)
    assert by["steal"]["outcome"] == "left"
    assert "foreign group" in by["steal"]["reason"]
    bad = next(p for p in home.iterdir() if p.name.startswith("steal._AXL"))
    assert (bad.stat().st_uid, bad.stat().st_gid) == (NOBODY, 100)


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "fifo"])
def test_report_file_planted_by_a_user_is_refused(scratch: Path, planted: str) -> None:
    """Root told to write --report into a directory the user can write: a name the user planted as a
    link to root's secret (or a FIFO) is refused, and the secret is neither truncated nor written."""
    home = scratch / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    canary = scratch / "canary"
    canary.mkdir()
    secret = canary / "shadow"
    secret.write_bytes(b"root:$6$secret:19000::::::\n")
    os.chmod(secret, 0o600)
    report = home / "axl-finalize.42.jsonl"
    if planted == "symlink":
        as_user(NOBODY, NOBODY, lambda: report.symlink_to(secret))
    elif planted == "fifo":
        as_user(NOBODY, NOBODY, lambda: os.mkfifo(report))
    else:
        os.link(secret, report)  # as a site without protected_hardlinks would let the user do
    sealed = snapshot(canary)
    proc = subprocess.run(
        [*CLI, "finalize", home, "--report", report], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2  # refused before anything was touched
    assert proc.stderr.startswith("Error: ") and "report" in proc.stderr
    assert snapshot(canary) == sealed


def test_filelist_part_file_planted_by_a_user_is_refused(scratch: Path) -> None:
    """Root pre-staging with --filelist into a user-writable directory: the file list's temporary name
    is predictable; planted as a symlink to root's secret, it is refused instead of written through."""
    src = scratch / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x")
    home = scratch / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    secret = scratch / "shadow"
    secret.write_bytes(b"root:$6$secret:19000::::::\n")
    filelist = home / "files.txt"
    part = Path(f"{filelist}.part{os.getpid()}")
    as_user(NOBODY, NOBODY, lambda: part.symlink_to(secret))
    before = snapshot_one(secret)
    with pytest.raises(PrestageError, match="file list"):
        prestage([StagePair(os.fsencode(src / "a"), os.fsencode(home / "out" / "a"))], filelist=os.fsencode(filelist))
    assert snapshot_one(secret) == before
    assert part.is_symlink()  # not ours: left as it was
    assert not filelist.exists()
