"""The ready-made integrations, run for real: the LSF second post-stage script (with bash, against
the simulator) and ``axl-stateless demo`` (as a subprocess)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bbkit import PACKAGE_ROOT, Sim
from conftest import run_cli, temporaries

from axlstateless.bbsim import FileEntry, Spool, start_copy
from axlstateless.prestage import StagePair, prestage

POSTSTAGE = Path(PACKAGE_ROOT) / "tools" / "lsf" / "axl-poststage"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def stage_root(root: Path, sim: Sim, spool: Spool, names: dict[str, bool]) -> list[int]:
    """Pre-stage one file per name under `root`, each with its own handle (returned); False: its copy fails."""
    handles = []
    src = root.parent / f"{root.name}.src"
    src.mkdir()
    root.mkdir()
    for name, ok in names.items():
        (src / name).write_bytes(os.urandom(20_000))
        handle = spool.get_handle(sim.jobid, 0, abs(hash((root.name, name))) % 10**6, [0])
        if not ok:
            spool.update_injections(fail={handle: 1000})
        staged = prestage([StagePair(bytes(src / name), bytes(root / name))], handle=handle)
        entry = FileEntry(str(src / name), os.fsdecode(staged.files[0].temporary), 0)
        start_copy(spool, sim.jobid, 0, 0, handle, [entry])
        handles.append(handle)
    return handles


def poststage(tmp_path: Path, args: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    shim = tmp_path / "axl-stateless"
    shim.write_text(
        f'#!/bin/sh\nPYTHONPATH={shlex.quote(PACKAGE_ROOT)} exec {shlex.quote(sys.executable)} -m axlstateless "$@"\n'
    )
    shim.chmod(0o755)
    full = {**os.environ, "AXL_STATELESS": str(shim), "AXL_FINALIZE_ARGS": "--poll-interval 0.05", **env}
    assert BASH is not None
    return subprocess.run(
        [BASH, str(POSTSTAGE), *map(str, args)], capture_output=True, text=True, env=full, timeout=60, check=False
    )


def outputs(root: Path, jobid: str) -> tuple[list[dict[str, object]], str]:
    (report,) = root.glob(f"axl-finalize.{jobid}.*.jsonl")
    (log,) = root.glob(f"axl-finalize.{jobid}.*.log")
    assert report.name.removesuffix(".jsonl") == log.name.removesuffix(".log")
    return [json.loads(line) for line in report.read_text().splitlines()], log.read_text()


@pytest.mark.parametrize("roots_from", ["arguments", "AXL_STAGE_ROOTS"])
def test_poststage_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, roots_from: str) -> None:
    sim = Sim(tmp_path, monkeypatch)
    spool = Spool(sim.spool)
    spool.ensure()
    spool.update_config(rate=100_000)  # copies of 0.2 s: the script may find them running
    first, second = tmp_path / "run42", tmp_path / "run42b"
    failing = roots_from == "arguments"  # one run with a failed transfer (exit 1), one without (exit 0)
    stage_root(first, sim, spool, {"a": True, "b": not failing})
    stage_root(second, sim, spool, {"c": True})
    env = {"AXL_BBCMD": str(sim.path), "LSF_STAGE_JOBID": sim.jobid}
    if roots_from == "arguments":
        done = poststage(tmp_path, [first, second], **env)
    else:
        done = poststage(tmp_path, [], AXL_STAGE_ROOTS=f"{first}:{second}", **env)
    expected = 1 if failing else 0
    assert done.returncode == expected, done.stderr
    assert f"finalize exited {expected}" in done.stderr
    records, log = outputs(first, sim.jobid)
    assert not list(second.glob("axl-finalize.*"))  # beside the data, in the first root only
    summary = records[-1]
    assert summary["summary"] is True
    assert summary["exit_code"] == expected
    assert (summary["committed"], summary["aborted"]) == ((2, 1) if failing else (3, 0))
    assert f"(exit {expected})" in log
    assert (first / "a").exists()
    assert (second / "c").exists()
    assert (first / "b").exists() is not failing
    assert temporaries(first) == temporaries(second) == []


def test_poststage_script_without_roots(tmp_path: Path) -> None:
    done = poststage(tmp_path, [], AXL_STAGE_ROOTS="")
    assert done.returncode == 2
    assert "no roots" in done.stderr
    done = poststage(tmp_path, [tmp_path / "missing"])
    assert done.returncode == 2
    assert "no such directory" in done.stderr
    # A finalizer that cannot be found is a usage error (2), not bash's 127.
    done = poststage(tmp_path, [tmp_path], AXL_STATELESS=str(tmp_path / "nowhere" / "axl-stateless"))
    assert done.returncode == 2
    assert "command not found (set AXL_STATELESS" in done.stderr
    assert not list(tmp_path.glob("axl-finalize.*"))


def test_poststage_script_passes_on_a_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = Sim(tmp_path, monkeypatch)
    spool = Spool(sim.spool)
    spool.ensure()
    root = tmp_path / "run"
    (handle,) = stage_root(root, sim, spool, {"a": True})
    spool.update_injections(status={handle: 0x2})  # the BB says BBINPROGRESS for as long as it takes
    env = {"AXL_BBCMD": str(sim.path), "LSF_STAGE_JOBID": sim.jobid, "AXL_WAIT_TIMEOUT": "0.2"}
    done = poststage(tmp_path, [root], **env)
    assert done.returncode == 3, done.stderr
    records, _ = outputs(root, sim.jobid)
    assert records[-1]["in_progress"] == 1
    assert len(temporaries(root)) == 1


# -- the demo ------------------------------------------------------------------------------------------------


def test_demo_runs_as_expected() -> None:
    proc = run_cli("demo", "--ranks", "8", check=0)
    assert "result: as expected" in proc.stdout
    assert "kept:" not in proc.stdout
    # The copies still run when the post-stage finalize starts, and it shows its waiting.
    assert "demo: waiting on " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_keep(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = run_cli("demo", "--ranks", "4", "--seed", "3", "--failures", "1", "--dir", work, "--keep", "-q", check=0)
    assert proc.stderr == ""  # -q: only the table
    assert f"kept: {work}" in proc.stdout
    assert {p.name for p in work.iterdir()} >= {"bb", "pfs", "spool", "finalize-report.jsonl"}
    summary = json.loads((work / "finalize-report.jsonl").read_text().splitlines()[-1])
    assert (summary["aborted"], summary["exit_code"]) == (1, 1)
    assert temporaries(work / "pfs") == []
