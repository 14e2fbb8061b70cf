"""The commit renames by name after checking a descriptor: a temporary's name recreated in between (a
pre-stage rerun unlinks it and creates a new, empty one) must never put the newcomer under the final
name, nor replace the old final with it.

The swap is made at two points the engine really passes through: right after the open (where it reads
the temporary's extras), before the identity check that precedes the rename; and inside the rename call
itself (`engine._renameat`), after that check, which only the check of the final name after the rename
can catch. These are the Python engine's steps, so the native core (fastpath.py) is set aside here.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest

from axlstateless import FinalizeOptions, Outcome, Record, TempName, finalize

engine_mod = importlib.import_module("axlstateless.engine")
fastpath_mod = importlib.import_module("axlstateless.fastpath")
source_mod = importlib.import_module("axlstateless.source")
MTIME = 1_500_000_000_000_000_000


def forge(root: Path, final: str, data: bytes) -> Path:
    path = root / os.fsdecode(TempName(final.encode(), 0o644, len(data), MTIME).encode())
    path.write_bytes(data)
    return path


def prestage_rerun(path: Path) -> None:
    """What a pre-stage rerun does to a temporary's name: unlink it, create a new empty file (O_EXCL)."""
    path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


@pytest.fixture(autouse=True)
def python_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath_mod, "settler", lambda settings, sink: None)


def run(root: Path) -> list[Record]:
    records: list[Record] = []
    finalize([root], records.append, FinalizeOptions())
    return records


def test_swap_before_the_check_leaves_the_old_final_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").write_bytes(b"the old final")
    temp = forge(tmp_path, "data", b"verified new content")
    original = source_mod.read_extras

    def swap_then_read(fd: int) -> Any:
        prestage_rerun(temp)
        return original(fd)

    monkeypatch.setattr(source_mod, "read_extras", swap_then_read)
    [record] = run(tmp_path)
    assert record.outcome is Outcome.LEFT and "replaced" in record.reason
    assert (tmp_path / "data").read_bytes() == b"the old final"
    assert temp.read_bytes() == b""  # the newcomer stays under the temporary's name, for a rerun to judge


def test_swap_inside_the_rename_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = forge(tmp_path, "data", b"verified new content")
    original = engine_mod._renameat

    def swap_then_rename(dfd: int, src: bytes, dst: bytes) -> None:
        prestage_rerun(temp)
        original(dfd, src, dst)

    monkeypatch.setattr(engine_mod, "_renameat", swap_then_rename)
    [record] = run(tmp_path)
    assert record.outcome is Outcome.LEFT and "moved back" in record.reason
    assert not (tmp_path / "data").exists()  # never an unverified (here empty) file under the final name
    assert temp.read_bytes() == b""
    monkeypatch.setattr(engine_mod, "_renameat", original)
    # A rerun judges the newcomer on its own: empty where 20 bytes are expected, so it is aborted.
    [again] = run(tmp_path)
    assert again.outcome is Outcome.ABORTED
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_without_a_swap_the_checks_change_nothing(tmp_path: Path) -> None:
    forge(tmp_path, "data", b"content")
    [record] = run(tmp_path)
    assert record.outcome is Outcome.COMMITTED
    assert (tmp_path / "data").read_bytes() == b"content"
