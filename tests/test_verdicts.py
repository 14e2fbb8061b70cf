"""The shared verdict, through the CLI, over every backend: `none`, `ibmbb` against the simulator,
and `ibmbb` against a scripted bbcmd that replays fixed replies.

One scenario: temporaries whose handle fully succeeded (complete: committed; truncated: aborted), whose
handle failed, was canceled, stopped or partially succeeded (aborted even though the size matches), whose
handle reports a status outside the known names, and temporaries with no handle or a handle the BB does
not know (judged by verification alone, and the record says so).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bbkit import ACTIVE, FIELD_FAILURE, Scripted, Sim, getstatus_reply, listing
from click.testing import CliRunner
from conftest import run_cli, temporaries

from axlstateless.backends.bbcmd_reply import STATUS_VALUES
from axlstateless.cli import cli
from axlstateless.prestage import StagePair, prestage

UNKNOWN_HANDLE = 77
MTIME_NS = 1_500_000_000_123_456_789


@dataclass(frozen=True)
class Case:
    name: str
    bb: str | None  # the handle's status as the BB tells it; None: no handle in the name
    complete: bool  # the temporary holds all its data


CASES = [
    Case("ok", "BBFULLSUCCESS", True),
    Case("truncated", "BBFULLSUCCESS", False),
    Case("failed", "BBFAILED", True),
    Case("canceled", "BBCANCELED", True),
    Case("stopped", "BBSTOPPED", True),
    Case("partial", "BBPARTIALSUCCESS", True),
    Case("undefined", "UNDEFINED (128)", True),
    Case("nohandle", None, True),
    Case("nohandle-truncated", None, False),
    Case("unknown", "unknown", True),
    Case("unknown-truncated", "unknown", False),
]
#: Handles of the scripted bbcmd; the simulator hands out its own.
SCRIPTED_HANDLES = {"ok": 101, "truncated": 102, "failed": 103, "canceled": 104, "stopped": 105, "partial": 106}
SCRIPTED_HANDLES |= {"undefined": 107, "unknown": UNKNOWN_HANDLE, "unknown-truncated": UNKNOWN_HANDLE}


def expected(backend: str, case: Case) -> tuple[str, Callable[[str], bool], str]:
    """(outcome, a check of the reason, a word the `transfer` field must hold)."""
    if not case.complete:
        return "aborted", lambda r: r.startswith("incomplete: size"), ""
    if backend == "none":
        return "committed", lambda r: r == "", "verification alone"
    if case.bb == "BBFULLSUCCESS":
        return "committed", lambda r: r == "", "BBFULLSUCCESS"
    if case.bb in ("BBFAILED", "BBCANCELED", "BBSTOPPED", "BBPARTIALSUCCESS"):
        return "aborted", lambda r: r == f"transfer failed ({case.bb})", case.bb
    if case.bb == "UNDEFINED (128)":
        return "committed", lambda r: r.startswith("verified by size alone") and "UNDEFINED (128)" in r, "UNDEFINED"
    if case.bb is None:
        return "committed", lambda r: r.startswith("verified by size alone (no handle in the name"), "no handle"
    return "committed", lambda r: r.startswith("verified by size alone") and "does not know handle 77" in r, "77"


@dataclass
class Scene:
    backend: str
    args: list[str]  # backend options for finalize
    dst: Path
    sources: dict[str, Path]


def make_scene(tmp_path: Path, backend: str, handles: dict[str, int]) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """Sources, and their pre-staged temporaries (empty) under dst/, one per case."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    sources, temps = {}, {}
    for i, case in enumerate(CASES):
        path = src / case.name
        path.write_bytes(os.urandom(1000 + 37 * i))
        path.chmod(0o640 if i % 2 else 0o444)
        os.utime(path, ns=(MTIME_NS, MTIME_NS + i))
        handle = None if case.bb is None else handles[case.name]
        staged = prestage([StagePair(bytes(path), bytes(dst / case.name))], handle=handle)
        sources[case.name] = path
        temps[case.name] = Path(os.fsdecode(staged.files[0].temporary))
    return dst, sources, temps


def fill(temp: Path, source: Path, complete: bool) -> None:
    """Play the mover: the whole source, or its first half (the copy stopped part-way)."""
    data = source.read_bytes()
    with open(temp, "r+b") as out:
        out.truncate(0)
        out.write(data if complete else data[: len(data) // 2])


def scene_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Scene:
    dst, sources, temps = make_scene(tmp_path, "none", SCRIPTED_HANDLES)
    for case in CASES:
        fill(temps[case.name], sources[case.name], case.complete)
    return Scene("none", ["--backend", "none"], dst, sources)


def scene_scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Scene:
    scripted = Scripted(tmp_path, monkeypatch)
    h = SCRIPTED_HANDLES
    scripted.play(
        [
            # The field failure once (retried, then the BB answers), then nothing in transfer.
            (ACTIVE, [FIELD_FAILURE, listing()]),
            # A list cut at --numhandles (the backend must ask again with room), then the whole list, with
            # a handle of another rank and keys the parser must ignore.
            (r"matchstatus=BBFULLSUCCESS --numhandles=1024\b", [listing(h["ok"], avail=3)]),
            (r"matchstatus=BBFULLSUCCESS\b", [listing(h["ok"], 555, h["truncated"], extra=True)]),
            (r"matchstatus=BBFAILED\b", [listing(h["failed"], ranks=2)]),
            (r"matchstatus=BBCANCELED\b", [listing(h["canceled"], extra=True)]),
            (r"matchstatus=BBSTOPPED\b", [listing(h["stopped"])]),
            (r"matchstatus=BBPARTIALSUCCESS\b", [listing(h["partial"])]),
            (rf"getstatus --handle={h['undefined']}\b", [getstatus_reply(h["undefined"], "UNDEFINED (128)")]),
            (
                rf"getstatus --handle={UNKNOWN_HANDLE}\b",
                [{"stdout": {"rc": "-1", "error": {"text": "Transfer handle 77 is not known"}}, "exit": 255}],
            ),
        ]
    )
    dst, sources, temps = make_scene(tmp_path, "scripted", h)
    for case in CASES:
        fill(temps[case.name], sources[case.name], case.complete)
    return Scene("ibmbb", ["--backend", "ibmbb", "--bbcmd", scripted.command, "--jobid", "42"], dst, sources)


def scene_bbsim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, console_script: bool = False) -> Scene:
    sim = Sim(tmp_path, monkeypatch)
    handles = {c.name: sim.gethandle(i) for i, c in enumerate(CASES) if c.bb not in (None, "unknown")}
    handles |= {"unknown": UNKNOWN_HANDLE, "unknown-truncated": UNKNOWN_HANDLE}
    dst, sources, temps = make_scene(tmp_path, "bbsim", handles)
    # The simulator's own mover copies `ok`, and `failed` to its last byte before failing it; the other
    # statuses are injected and the temporaries filled here.
    failed_size = sources["failed"].stat().st_size
    injected = {"truncated": "BBFULLSUCCESS", "canceled": "BBCANCELED", "stopped": "BBSTOPPED"}
    injected |= {"partial": "BBPARTIALSUCCESS"}
    sim.lib.update_injections(
        fail={handles["failed"]: failed_size},
        status={handles[n]: STATUS_VALUES[s] for n, s in injected.items()} | {handles["undefined"]: 128},
    )
    for name in ("ok", "failed"):
        sim.copy(handles[name], [(sources[name], temps[name])])
    for case in CASES:
        if case.name not in ("ok", "failed"):
            fill(temps[case.name], sources[case.name], case.complete)
    spool_arg = f"{'axl-bbsim' if console_script else sim.path} --spool {sim.spool}"
    return Scene("ibmbb", ["--backend", "ibmbb", "--bbcmd", spool_arg, "--jobid", sim.jobid], dst, sources)


SCENES = {"none": scene_none, "ibmbb-scripted": scene_scripted, "ibmbb-bbsim": scene_bbsim}


def finalize_records(scene: Scene, how: str) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any], str]:
    # An ibmbb option with --backend none is refused: only the ibmbb scenes poll.
    poll = ["--poll-interval", "0.05"] if scene.backend != "none" else []
    args = ["finalize", *scene.args, *poll, "--wait-timeout", "60", "--json", str(scene.dst)]
    if how == "cli":
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    else:
        proc = run_cli(*args)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    assert "Traceback" not in stderr
    objs = [json.loads(line) for line in stdout.splitlines()]
    summary = objs.pop()
    assert summary["summary"] is True
    records = {Path(o["final"]).name: o for o in objs if o["kind"] == "file"}
    return code, records, summary, stderr


@pytest.mark.parametrize("how", ["cli", "subprocess"])
@pytest.mark.parametrize("scene_name", sorted(SCENES))
def test_shared_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scene_name: str, how: str) -> None:
    scene = SCENES[scene_name](tmp_path, monkeypatch)
    code, records, summary, stderr = finalize_records(scene, how)
    assert sorted(records) == sorted(c.name for c in CASES)
    for case in CASES:
        outcome, reason_ok, transfer_word = expected(scene.backend, case)
        record = records[case.name]
        assert record["outcome"] == outcome, (case, record)
        assert reason_ok(record["reason"]), (case, record)
        assert transfer_word in (record["transfer"] or ""), (case, record)
        final = scene.dst / case.name
        if outcome == "committed":
            assert final.read_bytes() == scene.sources[case.name].read_bytes()
            assert final.stat().st_mode & 0o7777 == scene.sources[case.name].stat().st_mode & 0o7777
            assert final.stat().st_mtime_ns == scene.sources[case.name].stat().st_mtime_ns
        else:
            assert not final.exists()
    assert temporaries(scene.dst) == []
    aborted = sum(expected(scene.backend, c)[0] == "aborted" for c in CASES)
    assert (summary["committed"], summary["aborted"], summary["left"]) == (len(CASES) - aborted, aborted, 0)
    assert code == summary["exit_code"] == 1
    if scene_name == "ibmbb-scripted":
        assert "bbcmd failed (attempt 1 of 4), retrying" in stderr
        assert "Unable to create bb.proxyconnection" in stderr


@pytest.mark.skipif(shutil.which("axl-bbsim") is None, reason="the axl-bbsim console script is not on PATH")
def test_shared_verdict_through_the_console_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--bbcmd "axl-bbsim --spool DIR"``, as a user rehearsing on an installed package writes it."""
    scene = scene_bbsim(tmp_path, monkeypatch, console_script=True)
    assert scene.args[3].startswith("axl-bbsim --spool ")
    code, records, _, _ = finalize_records(scene, "cli")
    assert code == 1
    for case in CASES:
        assert records[case.name]["outcome"] == expected("ibmbb", case)[0], case


def test_all_complete_exits_0_over_the_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = Sim(tmp_path, monkeypatch)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    handle = sim.gethandle(1)
    pairs = []
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(5000 * i))
        staged = prestage([StagePair(bytes(src / f"f{i}"), bytes(dst / f"f{i}"))], handle=handle)
        pairs.append((src / f"f{i}", Path(os.fsdecode(staged.files[0].temporary))))
    sim.copy(handle, pairs)
    args = ["--backend", "ibmbb", "--bbcmd", str(sim.path), "--poll-interval", "0.05", str(dst)]
    proc = run_cli("finalize", *args, check=0)
    assert "3 committed" in proc.stdout
    assert [p.name for p in sorted(dst.iterdir())] == ["f0", "f1", "f2"]
