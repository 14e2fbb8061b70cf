"""Concurrency: four finalizers (and a cleanup, when it exists) over one tree at once.

Every temporary is committed or aborted by exactly one process (the JSON records of all of them say so);
the others report it skipped as done elsewhere, never as an error; each process exits 0 or 1 as the data
it acted on warrants.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI

from axlstateless import StagePair, prestage

FINALIZERS = 4
SEEDS = list(range(1, 1 + max(3, int(3 * float(os.environ.get("AXL_SOAK", "1"))))))  # tools/fuzz/run.sh: more


def build_tree(tmp_path: Path, seed: int, *, dirs: int = 6, per_dir: int = 120) -> tuple[Path, dict[str, Any]]:
    """Pre-stage `dirs` x `per_dir` files below pre-stage-created directories, fill the temporaries (one in
    five cut short), and return the destination root and what each final name must end as."""
    rng = random.Random(seed)
    src, dst = tmp_path / "src", tmp_path / "dst"
    pairs = []
    expect: dict[str, Any] = {"files": {}, "dirs": {}}
    for d in range(dirs):
        sdir = src / "run" / f"d{d}"
        sdir.mkdir(parents=True)
        for i in range(per_dir):
            f = sdir / f"f{i}"
            data = rng.randbytes(rng.randrange(0, 300))
            f.write_bytes(data)
            mode = rng.choice([0o644, 0o600, 0o444, 0o755, 0o640])
            os.chmod(f, mode)
            os.utime(f, ns=(1_600_000_000_000_000_000, 1_500_000_000_000_000_000 + rng.randrange(10**15)))
            final = dst / "run" / f"d{d}" / f"f{i}"
            pairs.append(StagePair(os.fsencode(f), os.fsencode(final)))
            expect["files"][str(final)] = (f, bool(data) and rng.random() < 0.2)
        os.chmod(sdir, rng.choice([0o755, 0o555, 0o750]))
        os.utime(sdir, ns=(1_400_000_000_000_000_000, 1_450_000_000_000_000_000 + d))
    dst.mkdir()
    dir_sources = {os.fsencode(dst / "run" / f"d{d}"): os.fsencode(src / "run" / f"d{d}") for d in range(dirs)}
    result = prestage(pairs, dir_sources=dir_sources)
    for staged in result.files:
        source, truncated = expect["files"][os.fsdecode(staged.final)]
        data = source.read_bytes()
        Path(os.fsdecode(staged.temporary)).write_bytes(data[: len(data) // 2] if truncated else data)
    for d in range(dirs):
        expect["dirs"][str(dst / "run" / f"d{d}")] = src / "run" / f"d{d}"
    return dst, expect


def check_final_state(dst: Path, expect: dict[str, Any]) -> None:
    """Complete copies committed with their source's content, mode and mtime; cut ones gone; no temporary."""
    leftovers = [p for p in dst.rglob("*") if "._AXL" in p.name]
    assert not leftovers, leftovers[:5]
    for final, (source, truncated) in expect["files"].items():
        path = Path(final)
        if truncated:
            assert not path.exists(), final
            continue
        st, sst = path.stat(), source.stat()
        assert path.read_bytes() == source.read_bytes(), final
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (stat.S_IMODE(sst.st_mode), sst.st_mtime_ns), final
    for final, source in expect["dirs"].items():
        st, sst = os.stat(final), source.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (stat.S_IMODE(sst.st_mode), sst.st_mtime_ns), final


def run_together(commands: list[list[str]]) -> list[tuple[int, list[dict[str, Any]], str]]:
    """Run ``axl-stateless ARGS`` for each of `commands` at once, and parse their JSON lines.

    Each child imports everything, then blocks on a pipe: closing it releases them all together, so
    their walks overlap instead of being spread over interpreter start-up times.
    """
    go_r, go_w = os.pipe()
    gate = (
        "import os, sys\n"
        "from axlstateless.cli import main\n"
        f"os.read({go_r}, 1)\n"
        "sys.argv = ['axl-stateless', *sys.argv[1:]]\n"
        "main()\n"
    )
    procs = [
        subprocess.Popen(
            [CLI[0], "-c", gate, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=(go_r,)
        )
        for args in commands
    ]
    os.close(go_r)
    os.close(go_w)  # every child's read returns (EOF) at once
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines and lines[-1].get("summary"), (out, err)
        results.append((proc.returncode, lines[:-1], err))
    return results


@pytest.mark.parametrize("seed", SEEDS)
def test_four_finalizers_at_once(tmp_path: Path, seed: int) -> None:
    dst, expect = build_tree(tmp_path, seed)
    temporaries = sum(1 for p in dst.rglob("*") if "._AXL" in p.name)
    jobs = ["1", "4", "2", "8"]
    commands = [["finalize", os.fspath(dst), "--json", "--jobs", jobs[i]] for i in range(FINALIZERS)]
    results = run_together(commands)
    acted: Counter[str] = Counter()
    for code, records, err in results:
        outcomes = Counter(r["outcome"] for r in records)
        assert outcomes["left"] == 0, [(r["kind"], r["reason"]) for r in records if r["outcome"] == "left"][:5]
        for r in records:
            if r["outcome"] in ("committed", "aborted"):
                acted[r["path"]] += 1
            else:
                assert r["outcome"] == "skipped"
                assert "another process" in r["reason"], r
        # Exit 1 exactly when this process aborted something; nothing else is an error.
        assert code == (1 if outcomes["aborted"] else 0), (code, outcomes, err)
    duplicates = {
        p: [(r["outcome"], r["reason"]) for _, rs, _ in results for r in rs if r["path"] == p]
        for p, n in acted.items()
        if n != 1
    }
    assert not duplicates, list(duplicates.items())[:5]
    assert len(acted) == temporaries
    check_final_state(dst, expect)


def test_finalizers_and_cleanup_at_once(tmp_path: Path) -> None:
    dst, expect = build_tree(tmp_path, 9, dirs=4, per_dir=100)
    commands = [["finalize", os.fspath(dst), "--json", "--jobs", "2"] for _ in range(FINALIZERS)]
    commands.append(["cleanup", os.fspath(dst), "--json", "--older-than", "0.01s"])
    results = run_together(commands)
    acted: Counter[str] = Counter()
    for code, records, err in results:
        for r in records:
            assert r["outcome"] != "left", r
            if r["outcome"] in ("committed", "aborted"):
                acted[r["path"]] += 1
        assert code in (0, 1), err
    assert all(n == 1 for n in acted.values()), [p for p, n in acted.items() if n != 1][:5]
    assert not [p for p in dst.rglob("*") if "._AXL" in p.name]
    # Cleanup may have deleted a complete temporary (an orphan to it) instead of a finalizer committing
    # it: the final name then is absent, never partial.
    for final, (source, truncated) in expect["files"].items():
        path = Path(final)
        if truncated:
            assert not path.exists()
        elif path.exists():
            assert path.read_bytes() == source.read_bytes()
