"""The engine's exit-code and verdict edges: a directory marker waiting on transfers keeps exit 3, and
the verdict's reason depends on the transfer's state, never on the wording of a backend's detail."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bbkit import Sim
from test_bb_wait import FAST, Job, invoke

from axlstateless.backends.base import TransferState, TransferStatus
from axlstateless.backends.bbcmd_reply import STATUS_VALUES
from axlstateless.errors import EXIT_TIMEOUT
from axlstateless.prestage import expand_sources, prestage
from axlstateless.verdict import Action, decide


@pytest.fixture
def bbsim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    sim = Sim(tmp_path, monkeypatch)
    yield sim
    sim.stop_all()


def test_a_created_directory_waiting_on_transfers_exits_3(tmp_path: Path, bbsim: Sim) -> None:
    """``prestage -r --handle H src C`` then ``finalize --backend ibmbb ... C`` while H is in transfer: 3,
    as without -r; the marker of C (created by pre-stage) waits on C's temporaries, not "left" (4)."""
    sim = bbsim
    job = Job(tmp_path, sim, rate=1e6)
    tree = job.src / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_bytes(b"a" * 10)
    (tree / "sub" / "b").write_bytes(b"b" * 10)
    handle = job.spool.get_handle(sim.jobid, 0, 1, [0])
    job.spool.update_injections(status={handle: STATUS_VALUES["BBINPROGRESS"]})
    target = job.dst / "C"
    pairs, dirs = expand_sources([bytes(tree)], bytes(target), recursive=True)
    prestage(pairs, handle=handle, dir_sources=dirs)
    code, stdout, _ = invoke("finalize", *job.bbcmd, *FAST, "--wait-timeout", "0.3", "--json", target)
    objs: list[dict[str, Any]] = [json.loads(line) for line in stdout.splitlines()]
    summary = objs.pop()
    assert code == EXIT_TIMEOUT, objs
    assert summary["exit_code"] == EXIT_TIMEOUT
    kinds = {(o["kind"], o["outcome"]) for o in objs}
    assert kinds == {("file", "left"), ("dir", "left")}  # the files in transfer, C's and sub's markers waiting
    assert sorted(os.listdir(target)) != []  # nothing committed


def test_the_reason_follows_the_state_not_the_detail_wording() -> None:
    # A backend that could not learn a state: noted, whatever its detail says (even "no transfer ...").
    for detail in ("no transfer status known for this one", "the BB does not list handle 7", ""):
        action, why = decide(TransferStatus(TransferState.UNKNOWN, detail), expected_size=1, actual_size=1)
        assert action is Action.COMMIT and why.startswith("verified by size alone"), detail
    # A backend that tracks no transfers (none): nothing to note, whatever its detail says.
    action, why = decide(TransferStatus(TransferState.OVER, "verified by size alone?"), expected_size=1, actual_size=1)
    assert (action, why) == (Action.COMMIT, "")
    action, why = decide(TransferStatus(TransferState.OVER, ""), expected_size=2, actual_size=1)
    assert action is Action.ABORT and "incomplete" in why
