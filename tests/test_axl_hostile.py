"""Root finalizing a user's AXL tree from a state file the user wrote: the user's word covers the user's own
files and nothing else. A record naming another user's file, a temporary that is a symbolic link (to a
file of root's), a record asking set-uid for a root-owned file, a DEST outside the roots or through a
symbolic link: refused or defused, and a canary outside the roots untouched."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from axlmake import Entry, write_state
from click.testing import CliRunner
from conftest import NOBODY, needs_root

from axlstateless.cli import cli

MTIME = 1_500_000_000_000_000_000
VICTIM = 4242  # another user (no passwd entry needed)

pytestmark = needs_root


def entry(dest: Path, data: bytes, *, mode: int = 0o100644, uid: int = NOBODY, gid: int = NOBODY) -> Entry:
    return Entry(os.fsencode(dest) + b".src", os.fsencode(dest), len(data), mode, MTIME, MTIME, uid, gid)


def fingerprint(path: Path) -> tuple[int, int, int, int, str]:
    st = os.lstat(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else os.readlink(path)
    return st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, digest


def finalize_json(*args: str | os.PathLike[str]) -> tuple[int, dict[str, dict[str, Any]]]:
    result = CliRunner().invoke(cli, ["finalize", *map(os.fspath, args), "--json"], catch_exceptions=False)
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()][:-1]
    return result.exit_code, {os.path.basename(r["path"]): r for r in lines}


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, the user's home below it, a canary directory outside the roots)."""
    os.chmod(tmp_path, 0o755)
    root = tmp_path / "scratch"
    home = root / "nobody"
    canary = tmp_path / "canary"
    home.mkdir(parents=True)
    canary.mkdir()
    os.chown(home, NOBODY, NOBODY)
    return root, home, canary


def test_a_users_state_file_speaks_only_for_the_users_files(tree: tuple[Path, Path, Path]) -> None:
    root, home, canary = tree
    secret = canary / "shadow"
    secret.write_bytes(b"root:secret\n")
    os.chmod(secret, 0o600)
    victim_dir = root / "victim"
    victim_dir.mkdir()
    os.chown(victim_dir, VICTIM, VICTIM)
    victim_temp = victim_dir / "private.dat._AXL"
    victim_temp.write_bytes(b"victim's data")
    os.chown(victim_temp, VICTIM, VICTIM)
    os.chmod(victim_temp, 0o600)
    # The user's own temporary (committed), a symlink to root's secret, a root-owned temporary asking
    # set-uid, a DEST outside the roots, a DEST through a symbolic link out of the roots.
    mine = home / "mine.dat._AXL"
    mine.write_bytes(b"mine")
    os.chown(mine, NOBODY, NOBODY)
    link = home / "link.dat._AXL"
    link.symlink_to(secret)
    os.lchown(link, NOBODY, NOBODY)
    (home / "out").symlink_to(canary)
    bait = canary / "bait._AXL"
    bait.write_bytes(b"bait")
    state = home / "rank0.state"
    write_state(
        state,
        [
            entry(mine, b"mine", mode=0o100640),
            entry(victim_temp, b"victim's data", mode=0o100777, uid=VICTIM, gid=VICTIM),
            entry(link, secret.read_bytes(), mode=0o100666),
            entry(canary / "bait._AXL", b"bait", mode=0o100777),
            entry(home / "out" / "bait._AXL", b"bait", mode=0o100777),
        ],
    )
    os.chown(state, NOBODY, NOBODY)
    before = {p: fingerprint(p) for p in (secret, victim_temp, bait, link)}
    code, records = finalize_json(root, "--axl-state", state)
    assert code == 4
    assert records["mine.dat._AXL"]["outcome"] == "committed"
    assert stat.S_IMODE((home / "mine.dat").stat().st_mode) == 0o640
    assert records["private.dat._AXL"]["outcome"] == "left"
    assert "belongs to uid" in records["private.dat._AXL"]["reason"]
    assert records["link.dat._AXL"]["outcome"] == "left" and "symbolic link" in records["link.dat._AXL"]["reason"]
    assert {p: fingerprint(p) for p in (secret, victim_temp, bait, link)} == before
    assert not (victim_dir / "private.dat").exists() and not (home / "link.dat").exists()
    assert not (canary / "bait").exists()
    outside = [r for r in records.values() if r["path"].endswith("bait._AXL")]
    assert outside and all(r["outcome"] in ("skipped", "left") for r in outside)
    assert state.exists()  # entries were refused: the state file stays


def test_root_never_grants_set_uid_from_a_record(tree: tuple[Path, Path, Path]) -> None:
    root, home, _ = tree
    temps = {}
    for name, owner in (("root-suid", 0), ("user-suid", NOBODY)):
        temp = home / f"{name}._AXL"
        temp.write_bytes(b"#!/bin/sh\n")
        os.chown(temp, owner, owner)
        temps[name] = (temp, owner)
    # A state file of root's (AXL ran as root), asking set-uid and set-gid for both.
    state = root / "root.state"
    write_state(state, [entry(t, b"#!/bin/sh\n", mode=0o106755, uid=o, gid=o) for t, o in temps.values()])
    code, records = finalize_json(root, "--axl-state", state)
    assert code == 0, records
    # Root-owned: neither bit (a set-uid root file from a record alone); the user's own: what the user
    # could have set on it (chown clears them in AXL's order; here the group is applied first).
    assert stat.S_IMODE((home / "root-suid").stat().st_mode) == 0o755
    assert "set-uid/set-gid dropped" in records["root-suid._AXL"]["reason"]
    user_mode = stat.S_IMODE((home / "user-suid").stat().st_mode)
    assert user_mode & 0o777 == 0o755 and (home / "user-suid").stat().st_uid == NOBODY
    assert not state.exists()


def test_a_record_never_gives_a_file_away(tree: tuple[Path, Path, Path]) -> None:
    root, home, _ = tree
    temp = home / "roots.dat._AXL"
    temp.write_bytes(b"data")  # root's, in the user's directory
    state = root / "root.state"
    write_state(state, [entry(temp, b"data", uid=NOBODY, gid=NOBODY)])
    code, records = finalize_json(root, "--axl-state", state)
    assert code == 4
    assert records["roots.dat._AXL"]["outcome"] == "left" and "foreign-owned" in records["roots.dat._AXL"]["reason"]
    assert temp.stat().st_uid == 0 and not (home / "roots.dat").exists()
