"""Crash consistency: finalize killed at any instant, or failing at any system call,
then rerun, ends exactly where an uninterrupted run would; nothing partial is ever visible.

- `test_sigkill_at_random_instants`: a few thousand temporaries (complete, cut short, over-long, empty),
  `finalize` as a subprocess SIGKILLed at seeded random instants and rerun each time, while a watcher
  process samples every final name and records anything that is neither the old file nor the complete
  new one with its mode and mtime.
- `test_each_system_call_fails_once_at_every_position`: in-process, each kind of call the engine makes
  fails once (EIO) at each of its positions in a run; the run must report, not raise, and a rerun
  must converge.

``AXL_SOAK=N`` scales both (tools/fuzz/run.sh runs them long).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI

from axlstateless import AxlError, FinalizeOptions, Outcome, Record, StagePair, fastpath, finalize, prestage

SOAK = float(os.environ.get("AXL_SOAK", "1"))
MODES = [0o644, 0o600, 0o444, 0o400, 0o755, 0o640, 0o750]
if os.geteuid() == 0:  # a user could neither pre-stage nor watch sources it cannot read
    MODES += [0o000, 0o200]
OLD_MTIME = 1_234_567_890_000_000_000


def failed_handle(handle: int) -> bool:
    return handle % 10 == 4 and (handle // 10) % 2 == 0


@dataclass(frozen=True)
class Expect:
    """What one final name may hold: the old file (if any) until the commit, then the new one."""

    final: str
    outcome: str  # "commit" or "abort"
    new: tuple[str, int, int] | None  # sha256, mode, mtime_ns of the source
    old: tuple[str, int, int] | None  # of the final file that existed before


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_tree(
    base: Path, seed: int, files: int, *, chgrp: bool = False, handles: bool = False
) -> tuple[Path, list[Expect], dict[str, Path]]:
    """Pre-stage `files` files over nested directories (half of them created by pre-stage, with markers;
    half existing, some holding an old final file), fill their temporaries as a mover would (most
    complete; some cut short, over-long or empty), and return what each final name may hold.

    With `handles`, each file names one of five BB transfer handles per directory; those of `FAILED`
    (see `failed_handle`) end BBFAILED, so their temporaries are aborted whatever their size."""
    rng = random.Random(seed)
    src, dst = base / "src", base / "dst"
    ndirs = max(2, files // 150)
    dirs = []
    for d in range(ndirs):
        rel = Path(f"job/g{d % 3}/d{d}")
        (src / rel).mkdir(parents=True, exist_ok=True)
        dirs.append(rel)
        if d % 2:
            (dst / rel).mkdir(parents=True, exist_ok=True)  # existing: no marker, may hold old finals
    dst.mkdir(exist_ok=True)
    pairs: list[tuple[int | None, StagePair]] = []
    expects: list[Expect] = []
    fills: dict[str, bytes] = {}
    for i in range(files):
        rel = dirs[i % ndirs]
        source = src / rel / f"f{i}"
        data = rng.randbytes(rng.choice([0, 1, 100, 4096, 10_000]) + rng.randrange(50))
        source.write_bytes(data)
        mode = rng.choice(MODES)
        mtime = 1_500_000_000_000_000_000 + rng.randrange(10**17)
        os.chmod(source, mode)
        os.utime(source, ns=(mtime, mtime))
        final = dst / rel / f"f{i}"
        old = None
        if final.parent.exists() and rng.random() < 0.3:
            old_data = b"old " + rng.randbytes(20)
            final.write_bytes(old_data)
            os.chmod(final, 0o644)
            os.utime(final, ns=(OLD_MTIME, OLD_MTIME))
            old = (sha(old_data), 0o644, OLD_MTIME)
        roll = rng.random()
        handle = 1000 + 10 * (i % ndirs) + i % 5 if handles else None
        if handle is not None and failed_handle(handle):
            fill, outcome = data[: rng.randrange(len(data) + 1)], "abort"  # the BB says: failed
        elif roll < 0.1 and data:
            fill, outcome = data[: rng.randrange(len(data))], "abort"  # cut short
        elif roll < 0.15:
            fill, outcome = data + b"+", "abort"  # over-long
        else:
            fill, outcome = data, "commit"
        pairs.append((handle, StagePair(os.fsencode(source), os.fsencode(final))))
        fills[str(final)] = fill
        expects.append(Expect(str(final), outcome, (sha(data), mode, mtime), old))
    for n, rel in enumerate(dirs):
        os.chmod(src / rel, [0o755, 0o555, 0o750, 0o700][n % 4])
        os.utime(src / rel, ns=(OLD_MTIME, OLD_MTIME + n))
    dir_sources = {os.fsencode(dst / rel): os.fsencode(src / rel) for rel in dirs}
    staged_files = []
    for handle in sorted({h for h, _ in pairs}, key=lambda h: -1 if h is None else h):
        group = [p for h, p in pairs if h == handle]
        staged_files += prestage(group, handle=handle, dir_sources=dir_sources).files
    for staged in staged_files:
        temp = os.fsdecode(staged.temporary)
        with open(temp, "r+b") as out:
            out.write(fills[os.fsdecode(staged.final)])
        if chgrp:
            # A group other than the one in user.axl.meta: the commit must fchown back (the chown call).
            os.chown(temp, -1, 65534)
    created = {str(dst / rel): src / rel for d, rel in enumerate(dirs) if d % 2 == 0}
    return dst, expects, created


def check_final_state(dst: Path, expects: list[Expect], created_dirs: dict[str, Path]) -> None:
    leftovers = [os.fsdecode(p) for p in dst.rglob("*") if "._AXL" in p.name]
    assert not leftovers, leftovers[:5]
    for e in expects:
        path = Path(e.final)
        if e.outcome == "commit":
            assert e.new is not None
            st = path.stat()
            assert (sha(path.read_bytes()), stat.S_IMODE(st.st_mode), st.st_mtime_ns) == e.new, e.final
        elif e.old is None:
            assert not path.exists(), e.final
        else:
            st = path.stat()
            assert (sha(path.read_bytes()), stat.S_IMODE(st.st_mode), st.st_mtime_ns) == e.old, e.final
    for final, source in created_dirs.items():
        st, sst = os.stat(final), source.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (stat.S_IMODE(sst.st_mode), sst.st_mtime_ns), final


# --- the watcher ------------------------------------------------------------------------------------------

WATCHER = r"""
import hashlib, json, os, stat, sys
expects, stop = json.load(open(sys.argv[1])), sys.argv[2]
sweeps = 0
bad = []
flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
while not os.path.exists(stop):
    for final, new, old in expects:
        try:
            fd = os.open(final, flags)
        except FileNotFoundError:
            if old is not None:  # the old final stays until the rename replaces it
                bad.append([final, "absent although an old file existed"])
            continue
        try:
            st = os.fstat(fd)
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
        finally:
            os.close(fd)
        seen = [hashlib.sha256(data).hexdigest(), stat.S_IMODE(st.st_mode), st.st_mtime_ns]
        if seen != new and seen != old:
            bad.append([final, seen])
    sweeps += 1
print(json.dumps({"sweeps": sweeps, "bad": bad[:20], "nbad": len(bad)}))
"""


@contextlib.contextmanager
def watching(base: Path, expects: list[Expect]) -> Iterator[Callable[[], dict[str, Any]]]:
    """Run the watcher while the body runs; yields a function that stops it and returns its findings."""
    spec = base / "watch.json"
    stop = base / "watch.stop"
    spec.write_text(
        json.dumps([[e.final, list(e.new) if e.outcome == "commit" and e.new else None, e.old] for e in expects])
    )
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, spec, stop], stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = {}

    def finish() -> dict[str, Any]:
        if not result:
            stop.touch()
            out, _ = proc.communicate(timeout=60)
            result.update(json.loads(out))
        return result

    try:
        yield finish
    finally:
        if proc.poll() is None:
            stop.touch()
            proc.communicate(timeout=60)


def kill_then_finish(
    dst: Path, rng: random.Random, kills: int, extra: list[str], env: dict[str, str] | None
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """SIGKILL `kills` finalize runs at random instants, then let one run to its end: how many runs were
    killed mid-way, and that last run (its --json records on stdout)."""
    killed = 0
    for _ in range(kills):
        code = run_and_kill(dst, rng, extra, env)
        if code is None:
            killed += 1
        else:
            assert code in (0, 1), code
    final = subprocess.run(
        [*CLI, "finalize", os.fspath(dst), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    return killed, final


def run_and_kill(dst: Path, rng: random.Random, extra: list[str], env: dict[str, str] | None) -> int | None:
    """Start a finalize and SIGKILL it at a random instant: after a random number of its records (so the
    kill lands while it commits), or after a random delay (start-up and walk too). None if it finished."""
    jobs = rng.choice(["1", "2", "4"])
    # Kill somewhere in the records still to come (one per temporary left), so late runs are killed too.
    remaining = sum(1 for p in dst.rglob("*") if "._AXL" in p.name)
    proc = subprocess.Popen(
        [*CLI, "finalize", os.fspath(dst), "--json", "--jobs", jobs, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    if rng.random() < 0.3:
        time.sleep(rng.uniform(0.0, 0.6))
    else:
        for _ in range(rng.randrange(1, max(2, remaining))):
            if not proc.stdout.readline():
                break
        time.sleep(rng.uniform(0.0, 0.01))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return None if proc.returncode == -signal.SIGKILL else proc.returncode


FAKE_BBCMD = Path(__file__).parent / "fakes" / "scripted_bbcmd.py"


def bbcmd_says(tmp_path: Path, dst: Path) -> tuple[list[str], dict[str, str]]:
    """Script the fake bbcmd: every handle in the tree ended, those of `failed_handle` BBFAILED."""
    from test_hostile import bb_listing

    found = {int(p.name.rpartition(".h")[2]) for p in dst.rglob("*._AXL.v1.m*") if ".h" in p.name}
    ok = sorted(h for h in found if not failed_handle(h))
    failed = sorted(h for h in found if failed_handle(h))
    rules = [
        {"match": "--matchstatus=BBFULLSUCCESS", "replies": [bb_listing(*ok)]},
        {"match": "--matchstatus=BBFAILED", "replies": [bb_listing(*failed)]},
        {"match": "--matchstatus=", "replies": [bb_listing()]},
    ]
    (tmp_path / "bbcmd.json").write_text(json.dumps({"rules": rules}))
    env = dict(os.environ, SCRIPTED_BBCMD_SCRIPT=str(tmp_path / "bbcmd.json"))
    env["SCRIPTED_BBCMD_LOG"] = os.devnull
    args = ["--backend", "ibmbb", "--jobid", "42", "--bbcmd", f"{sys.executable} {FAKE_BBCMD}"]
    return [*args, "--poll-interval", "0.01"], env


@pytest.mark.parametrize(
    ("backend", "files", "kills"),
    [("none", 2000, 15), pytest.param("ibmbb", 400, 5, id="ibmbb-failed-handles")],
)
def test_sigkill_at_random_instants(tmp_path: Path, backend: str, files: int, kills: int) -> None:
    files, kills = int(files * SOAK), int(kills * SOAK)
    dst, expects, created = build_tree(tmp_path, 11, files, handles=backend == "ibmbb")
    extra, env = bbcmd_says(tmp_path, dst) if backend == "ibmbb" else ([], None)
    with watching(tmp_path, expects) as stop_watcher:
        killed, final = kill_then_finish(dst, random.Random(11), kills, extra, env)
        seen = stop_watcher()
    assert "Traceback" not in final.stderr, final.stderr
    summary = json.loads(final.stdout.splitlines()[-1])
    assert final.returncode in (0, 1), final.stderr
    assert summary["left"] == 0
    assert killed >= kills // 2, f"only {killed} of {kills} runs were killed mid-way"
    assert seen["sweeps"] >= 3, seen
    assert seen["nbad"] == 0, seen["bad"]
    check_final_state(dst, expects, created)
    again = subprocess.run(
        [*CLI, "finalize", os.fspath(dst), "--json", *extra], capture_output=True, text=True, check=False, env=env
    )
    assert again.returncode == 0
    assert json.loads(again.stdout.splitlines()[-1])["committed"] == 0


# --- every system call fails once, at every position ------------------------------------------------------


# The `os` functions the engine calls, each patched where it is called (the extras are read with
# os.getxattr, not through the xattr package); the baseline run asserts that every one fires.
CALLS = [
    "open",
    "fstat",
    "stat",
    "fchmod",
    "utime",
    "rename",
    "unlink",
    "chown",
    "fsync",
    "scandir",
    "getxattr",
]


NATIVE = "native:"


class Faults:
    """Wraps the `os` functions the engine calls: counts them, and makes the `fail_at`-th call of kind
    `kind` raise EIO. On the native path the native core's own calls are counted and failed the same
    way, as kinds ``native:<call>`` (its test hook, `_fastcore.inject`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kind: str | None = None, fail_at: int = -1) -> None:
        self.counts: Counter[str] = Counter()
        self.kind, self.fail_at, self.fired = kind, fail_at, False
        for name in CALLS:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))
        self.native = fastpath.NATIVE
        if self.native:
            native_kind = kind.removeprefix(NATIVE) if kind and kind.startswith(NATIVE) else None
            fastpath.inject(native_kind, fail_at)

    def collect(self) -> None:
        """Add the native core's calls since this object was made (and clear its fault)."""
        if self.native:
            calls = fastpath.counters()
            fastpath.inject(None, -1)
            for name, n in calls.items():
                if name != "settled":
                    self.counts[NATIVE + name] += n
            if self.kind and self.kind.startswith(NATIVE):
                self.fired = calls[self.kind.removeprefix(NATIVE)] > self.fail_at

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            n = self.counts[name]
            self.counts[name] += 1
            if name == self.kind and n == self.fail_at:
                self.fired = True
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(*args, **kwargs)

        return call


def _finalize(dst: Path, *, fsync: bool = False) -> list[Record]:
    records: list[Record] = []
    finalize([os.fspath(dst)], records.append, FinalizeOptions(fsync=fsync))
    return records


def test_each_system_call_fails_once_at_every_position(tmp_path: Path) -> None:
    files = int(10 * SOAK)
    counts: dict[str, int] = {}
    for fsync in (False, True):  # fsync is slow on a real disk: only the fsync positions run with it
        template = tmp_path / f"template-{fsync}"
        template.mkdir()
        build_tree(template, 5, files, chgrp=os.geteuid() == 0)
        with pytest.MonkeyPatch.context() as mp:
            counter = Faults(mp)
            baseline = _finalize(template / "dst", fsync=fsync)
            counter.collect()
        counts.update((k, n) for k, n in counter.counts.items() if (k.removeprefix(NATIVE) == "fsync") == fsync)
    made = {k.removeprefix(NATIVE) for k, n in counts.items() if n}
    # Every injected kind must be seen to fire (in Python or in the native core), or its faults would
    # test nothing.
    assert made >= set(CALLS), {k: n for k, n in counts.items() if n}
    assert any(k.startswith(NATIVE) for k in counts) == fastpath.NATIVE
    assert all(r.outcome in (Outcome.COMMITTED, Outcome.ABORTED) for r in baseline)
    runs = 0
    for kind in sorted(counts):
        for position in range(counts[kind]):
            base = tmp_path / f"{kind}-{position}"
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir()
            dst, expects, created = build_tree(base, 5, files, chgrp=os.geteuid() == 0)
            with pytest.MonkeyPatch.context() as mp:
                faults = Faults(mp, kind, position)
                try:
                    records = _finalize(dst, fsync=kind == "fsync")
                except AxlError:
                    # Only a root that cannot be opened may stop a run, and then before any change.
                    assert (kind, position) == ("open", 0)
                    records = []
                except OSError as exc:
                    tb = exc.__traceback__
                    while tb and tb.tb_next and "axlstateless" in tb.tb_next.tb_frame.f_code.co_filename:
                        tb = tb.tb_next
                    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
                    pytest.fail(f"{kind} failing at call {position} escaped finalize from {where}: {exc}")
                finally:
                    faults.collect()
            assert faults.fired, (kind, position)
            paths = Counter(r.path for r in records)
            assert all(n == 1 for n in paths.values()), (kind, position, paths.most_common(2))
            rerun = _finalize(dst)
            assert all(r.outcome is not Outcome.LEFT for r in rerun), (kind, position, rerun)
            check_final_state(dst, expects, created)
            # (no rmtree here: on ext4 it costs more than the runs; pytest removes tmp_path)
            runs += 1
    assert runs == sum(counts.values())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("mode", [0o000, 0o200, 0o100])
def test_killed_after_chmod_as_a_user(nobody_dir: Path, mode: int) -> None:
    """The state a kill between fchmod and rename leaves: a user's temporary already carrying a final
    mode that denies its owner reading it. The rerun, as that user, reaches it through O_PATH and
    commits it (the crash test above runs as root, which such a mode does not stop)."""
    from conftest import NOBODY, run_cli_as
    from test_hostile import forge

    d = nobody_dir / "out"
    d.mkdir()
    temp = forge(d, "ckpt", b"data", mode=mode)
    os.chmod(temp, mode)  # applied before the kill
    for p in (d, temp):
        os.chown(p, NOBODY, NOBODY)
    code, out, err = run_cli_as(NOBODY, NOBODY, "finalize", d, "--json")
    assert "Traceback" not in err
    assert code == 0, (out, err)
    st = (d / "ckpt").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, (d / "ckpt").read_bytes()) == (mode, NOBODY, b"data")
    assert not temp.exists()
