"""AXL temporaries finished from state files, with finalize SIGKILLed at random instants and rerun: no
final name ever holds partial content or a wrong mode, and the last run ends where an uninterrupted one
would (its state files removed, a rerun with nothing to do).

2,000 files in 500 state files of 4 entries (one per rank), as AXL leaves them when killed in its Wait:
most temporaries complete, some cut short or over-long (deleted), some replacing an older final file.
The watcher and the kill are test_crash.py's.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

from axlmake import Entry, write_state
from conftest import CLI
from test_crash import SOAK, Expect, check_final_state, kill_then_finish, sha, watching

MODES = [0o644, 0o600, 0o444, 0o400, 0o755, 0o640]
OLD_MTIME = 1_234_567_890_000_000_000


def build(base: Path, seed: int, ranks: int, per_rank: int) -> tuple[Path, Path, list[Expect]]:
    rng = random.Random(seed)
    dst, state = base / "dst", base / "state"
    state.mkdir()
    expects: list[Expect] = []
    for rank in range(ranks):
        directory = dst / f"ckpt.{rank // 50}" / f"rank.{rank}"
        directory.mkdir(parents=True)
        entries = []
        for j in range(per_rank):
            data = rng.randbytes(rng.choice([0, 1, 100, 4096, 10_000]) + rng.randrange(50))
            mode = rng.choice(MODES)
            mtime = 1_500_000_000_000_000_000 + rng.randrange(10**17)
            final = directory / f"f{j}.dat"
            old = None
            if rng.random() < 0.3:
                old_data = b"old " + rng.randbytes(20)
                final.write_bytes(old_data)
                os.chmod(final, 0o644)
                os.utime(final, ns=(OLD_MTIME, OLD_MTIME))
                old = (sha(old_data), 0o644, OLD_MTIME)
            roll = rng.random()
            if roll < 0.1 and data:
                fill, outcome = data[: rng.randrange(len(data))], "abort"
            elif roll < 0.15:
                fill, outcome = data + b"+", "abort"
            else:
                fill, outcome = data, "commit"
            temp = directory / f"f{j}.dat._AXL"
            temp.write_bytes(fill)  # as AXL leaves it: 0666 & ~umask, the copy time
            entries.append(
                Entry(
                    source=os.fsencode(base / "src" / f"rank.{rank}" / f"f{j}.dat"),
                    dest=os.fsencode(temp),
                    size=len(data),
                    mode=0o100000 | mode,
                    mtime_ns=mtime,
                    atime_ns=mtime + 1,
                    uid=os.geteuid(),
                    gid=os.getegid(),
                )
            )
            expects.append(Expect(str(final), outcome, (sha(data), mode, mtime), old))
        write_state(state / f"rank.{rank}.state", entries)
    return dst, state, expects


def test_sigkill_at_random_instants_with_state_files(tmp_path: Path) -> None:
    ranks, kills = int(500 * SOAK), int(6 * SOAK)
    dst, state, expects = build(tmp_path, 13, ranks, 4)
    extra = ["--axl-state", os.fspath(state)]
    with watching(tmp_path, expects) as stop_watcher:
        killed, final = kill_then_finish(dst, random.Random(13), kills, extra, None)
        seen = stop_watcher()
    assert "Traceback" not in final.stderr, final.stderr
    summary = json.loads(final.stdout.splitlines()[-1])
    assert final.returncode in (0, 1), final.stderr
    assert summary["left"] == 0
    assert killed >= kills // 2, f"only {killed} of {kills} runs were killed mid-way"
    assert seen["sweeps"] >= 2, seen
    assert seen["nbad"] == 0, seen["bad"]
    check_final_state(dst, expects, {})
    assert list(state.iterdir()) == []  # every state file settled and removed, as AXL_Free does
    again = subprocess.run(
        [*CLI, "finalize", os.fspath(dst), "--json", *extra], capture_output=True, text=True, check=False
    )
    assert again.returncode == 0, again.stdout[-2000:]
    assert json.loads(again.stdout.splitlines()[-1])["committed"] == 0
