"""The real AXL fixtures of tests/data/axl, extracted into a test's own directory.

Each scenario's state file records absolute paths under a 123-byte root that AXL ran in
(``/tmp/axlfix/PPP.../<id>``); `extract` unpacks the tar under any directory and rewrites that root
in every key and value of the state files to the new location (decoded and re-encoded with the
project's own kvtree code, so the CRC and sizes follow), so scenarios run in parallel anywhere.
"""

from __future__ import annotations

import functools
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from axlstateless import kvtree

DATA = Path(__file__).parent / "data" / "axl"
SCENARIOS = ("a1", "a2", "a3", "b1", "c1", "c2", "c3", "d1", "d2", "e1", "f1", "g1")
#: The scenarios in which AXL left a state file (the others ended in AXL_Free, which removes it).
WITH_STATE = ("a2", "a3", "b1", "c1", "c3", "d2", "e1", "f1", "g1")


def manifest(sid: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / f"{sid}.MANIFEST.json").read_text())
    return loaded


@functools.cache
def original_state(sid: str) -> bytes:
    """The state file exactly as AXL wrote it (the original root prefix, the original CRC)."""
    with tarfile.open(DATA / f"{sid}.tar.gz", "r:gz") as tar:
        member = tar.extractfile("state/axl.state")
        assert member is not None
        return member.read()


def relocate(tree: kvtree.KVTree, old: bytes, new: bytes) -> kvtree.KVTree:
    """`tree` with the prefix `old` of every key (values are keys too) replaced by `new`."""
    return {
        (new + key[len(old) :] if key.startswith(old) else key): relocate(child, old, new)
        for key, child in tree.items()
    }


def set_owner(tree: kvtree.KVTree, uid: int, gid: int) -> None:
    """Make every FILE entry of a decoded state file record `uid`:`gid` (AXL ran as root: 0:0)."""
    for entry in tree.get(b"FILE", {}).values():
        entry[b"UID"] = {str(uid).encode(): {}}
        entry[b"GID"] = {str(gid).encode(): {}}


def extract(sid: str, dest: Path, *, owner: tuple[int, int] | None = None) -> tuple[Path, dict[str, Any], list[Path]]:
    """Extract scenario `sid` into ``dest/sid`` and relocate its state files there.

    Returns ``(root, manifest, state_files)``: `root` holds ``dst/`` and ``state/``; the manifest's
    ``final``, ``temp`` and ``source`` names are relative to it. `owner` rewrites every entry's UID
    and GID (for a test that is not root). Python's tarfile sets the temporaries' mtimes to the
    microsecond only; no check needs them, since the expected times come from the state file.
    """
    info = manifest(sid)
    root = dest / sid
    root.mkdir(parents=True)
    with tarfile.open(DATA / f"{sid}.tar.gz", "r:gz") as tar:
        tar.extractall(root, filter="fully_trusted")  # noqa: S202 - our own tars, made by make_fixtures.py
    old = bytes.fromhex(info["root_hex"])
    new = os.fsencode(root)
    state_files = []
    for rel in info["state_files"]:
        path = root / rel
        tree = relocate(kvtree.loads(path.read_bytes()), old, new)
        if owner is not None:
            set_owner(tree, *owner)
        path.write_bytes(kvtree.dumps(tree))
        state_files.append(path)
    return root, info, state_files
