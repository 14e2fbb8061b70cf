"""``--mpi`` under a real ``mpiexec`` (MPICH's wheel), at -n 1, 2 and 4 on one machine: the same end state
and the same records (but for ``"rank"``) as a serial run over a skewed tree; one usage error, one exit
code on every rank; a rank killed mid-run, then a rerun; one burst-buffer wait whatever the number of
ranks; pre-stage of a list split across ranks."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from bbkit import PACKAGE_ROOT, Sim
from conftest import run_cli

from axlstateless.bbsim import FileEntry, start_copy
from axlstateless.nameformat import TempName
from axlstateless.prestage import StagePair, prestage

MPIEXEC = shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
except ImportError:  # pragma: no cover - the [test] extra installs it
    HAVE_MPI4PY = False
else:
    HAVE_MPI4PY = True

pytestmark = pytest.mark.skipif(
    MPIEXEC is None or not HAVE_MPI4PY, reason="needs mpiexec and mpi4py (pip install mpich mpi4py)"
)

# Each rank runs the CLI in-process and writes its own exit code to a file named after its rank in
# $EXITS (mpiexec gives back one code for the whole job).
_RANK = """
import os, sys
from axlstateless.cli import cli
try:
    cli.main(sys.argv[1:], prog_name="axl-stateless", standalone_mode=True)
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
with open(os.path.join(os.environ["EXITS"], os.environ["PMI_RANK"]), "w") as f:
    f.write(str(code))
sys.stdout.flush()
sys.exit(code)
"""


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], exits: Path) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.exits = {int(p.name): int(p.read_text()) for p in exits.iterdir()}

    def json(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        objs = [json.loads(line) for line in self.stdout.splitlines()]
        return objs[:-1], objs[-1]


def mpirun(n: int, *args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 90) -> Run:
    exits = Path(tempfile.mkdtemp(prefix="axl-exits-"))
    environment = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, EXITS=str(exits), **(env or {}))
    proc = subprocess.run(
        [str(MPIEXEC), "-n", str(n), sys.executable, "-c", _RANK, *map(os.fspath, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environment,
    )
    try:
        return Run(proc, exits)
    finally:
        shutil.rmtree(exits)


# -- a skewed tree: one wide directory, many small ones, a deep chain, data and empty files -----------


def build_tree(tmp: Path) -> tuple[Path, Path]:
    """Sources under src/, temporaries under dst/ (data copied in, as the BB would)."""
    src = tmp / "src"
    pairs: list[StagePair] = []
    wide = src / "wide"
    wide.mkdir(parents=True)
    for i in range(2500):  # streamed: more than walk.CHUNK
        (wide / f"r{i:05d}").write_bytes(b"")
    for d in range(40):
        small = src / f"small{d:02d}"
        small.mkdir()
        for i in range(5):
            (small / f"f{i}").write_bytes(b"x" * (d + i))
        (small / "ro").write_bytes(b"read only")
        (small / "ro").chmod(0o444)
    deep = src
    for level in range(25):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"deep data")
    for path in sorted(src.rglob("*")):
        if path.is_file():
            pairs.append(StagePair(bytes(path), bytes(tmp / "dst" / path.relative_to(src))))
    (tmp / "dst").mkdir()
    staged = prestage(pairs, dir_sources={bytes(tmp / "dst"): bytes(src)})
    for f in staged.files:
        data = Path(os.fsdecode(f.source)).read_bytes()
        if data:
            Path(os.fsdecode(f.temporary)).write_bytes(data)
    return src, tmp / "dst"


def copy_tree(tree: Path, to: Path) -> Path:
    subprocess.run(["cp", "-a", str(tree), str(to)], check=True)
    return to


def state(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a user would see: every name below `root`, its type, mode, size, mtime and content."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in root.rglob("*"):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size if data is not None else 0, st.st_mtime_ns, data)
    return out


def record_set(records: list[dict[str, Any]], root: Path) -> set[tuple[Any, ...]]:
    """The records but for "rank" and where the tree lives."""
    prefix = str(root)
    out = set()
    for r in records:
        fields = {k: v for k, v in r.items() if k not in ("rank", "age_seconds")}
        text = json.dumps(fields, sort_keys=True).replace(prefix, "ROOT")
        out.add(text)
    assert len(out) == len(records)  # and no record twice
    return out


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[Any, ...]], set[Any]]:
    """The tree, and the end state and records of a serial finalize over a copy of it."""
    tmp = tmp_path_factory.mktemp("skewed")
    _, tree = build_tree(tmp)
    serial = copy_tree(tree, tmp / "serial")
    proc = run_cli("finalize", "--json", serial, check=0)
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert objs[-1]["committed"] > 2500
    return tree, state(serial), record_set(objs[:-1], serial)


@pytest.mark.parametrize(("ranks", "jobs"), [(1, 1), (2, 1), (4, 2)])
def test_same_end_state_and_records_as_serial(
    tmp_path: Path, skewed: tuple[Path, dict[str, tuple[Any, ...]], set[Any]], ranks: int, jobs: int
) -> None:
    tree, serial_state, serial_records = skewed
    dst = copy_tree(tree, tmp_path / "dst")
    run = mpirun(ranks, "finalize", "--mpi", "--json", "--jobs", str(jobs), dst, "--report", tmp_path / "report")
    assert run.exits == dict.fromkeys(range(ranks), 0), run.stderr
    records, summary = run.json()
    assert summary["exit_code"] == 0
    assert summary["committed"] == len(records)
    assert record_set(records, dst) == serial_records
    assert state(dst) == serial_state
    assert {r["rank"] for r in records} == set(range(ranks))  # every rank took part
    # The report is written once: the same records, one summary at the end.
    report = [json.loads(line) for line in (tmp_path / "report").read_text().splitlines()]
    report = [o for o in report if "log" not in o]
    assert report[-1]["summary"] is True
    assert sum(1 for o in report if o.get("summary")) == 1
    assert record_set(report[:-1], dst) == serial_records
    assert {o["rank"] for o in report[:-1]} == set(range(ranks))


def test_status_and_cleanup_as_serial(
    tmp_path: Path, skewed: tuple[Path, dict[str, tuple[Any, ...]], set[Any]]
) -> None:
    tree, serial_state, _ = skewed
    before = state(tree)
    serial = run_cli("status", "--json", tree, check=0)
    run = mpirun(3, "status", "--mpi", "--json", tree)
    assert run.exits == {0: 0, 1: 0, 2: 0}, run.stderr
    records, _ = run.json()
    serial_records = [json.loads(line) for line in serial.stdout.splitlines()][:-1]
    assert record_set(records, tree) == record_set(serial_records, tree)
    assert {r["cleanup"] for r in records} == {"too young"}
    assert state(tree) == before  # status changes nothing
    dst = copy_tree(tree, tmp_path / "dst")
    time.sleep(1.1)  # the copy's ctimes are now: they must be older than --older-than
    run = mpirun(3, "cleanup", "--mpi", "--older-than", "1s", dst)
    assert run.exits == {0: 0, 1: 0, 2: 0}, run.stderr
    assert state(dst) == serial_state  # every orphan committed, every marker applied, as finalize does


def test_hostile_entry_exit_4_on_every_rank(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    for d in range(6):
        (dst / f"d{d}").mkdir(parents=True)
        for i in range(3):
            name = TempName(b"f%d" % i, 0o644, 0, 1_500_000_000_000_000_000, None).encode()
            (dst / f"d{d}" / os.fsdecode(name)).write_bytes(b"")
    planted = TempName(b"passwd", 0o644, 0, 1_500_000_000_000_000_000, None).encode()
    (dst / "d3" / os.fsdecode(planted)).symlink_to("/etc/passwd")
    run = mpirun(4, "finalize", "--mpi", dst)
    assert run.exits == dict.fromkeys(range(4), 4), run.stderr
    assert run.returncode == 4
    assert re.findall(r"^left .*", run.stdout, re.M) == [
        f"left      {dst}/d3/{os.fsdecode(planted)} (is a symbolic link: refused)"
    ]
    assert re.findall(r"^finalize: .*", run.stdout, re.M) == [
        re.findall(r"^finalize: 19 temporaries: 18 committed, 1 left in \S+ \(\d+/s\) \(exit 4\)$", run.stdout, re.M)[0]
    ]
    assert (dst / "d3" / os.fsdecode(planted)).is_symlink()


@pytest.mark.parametrize("command", ["finalize", "cleanup", "status"])
def test_missing_root_is_one_usage_error_on_every_rank(tmp_path: Path, command: str) -> None:
    (tmp_path / "there").mkdir()
    name = TempName(b"f", 0o644, 0, 1_500_000_000_000_000_000, None).encode()
    temp = tmp_path / "there" / os.fsdecode(name)
    temp.write_bytes(b"")
    run = mpirun(2, command, "--mpi", tmp_path / "there", tmp_path / "missing")
    assert run.exits == {0: 2, 1: 2}
    assert run.stderr.count("Error:") == 1, run.stderr
    assert f"Error: {tmp_path / 'missing'}: no such directory" in run.stderr
    assert "Traceback" not in run.stderr
    assert temp.exists()  # nothing changed


def test_bad_option_is_one_message(tmp_path: Path) -> None:
    run = mpirun(3, "finalize", "--mpi", "--jobs", "0", tmp_path)
    assert run.exits == {0: 2, 1: 2, 2: 2}
    assert run.stderr.count("Invalid value for '-j' / '--jobs'") == 1, run.stderr


def test_without_mpi4py_mpi_is_a_usage_error(tmp_path: Path) -> None:
    # An mpi4py that cannot be imported, first on the path: what a site without the extra meets.
    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'fake'}{os.pathsep}{PACKAGE_ROOT}")
    (tmp_path / "root").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "axlstateless", "finalize", "--mpi", str(tmp_path / "root")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "Error: --mpi needs mpi4py (pip install 'axlstateless[mpi]', built against the site's MPI)"
    )


def test_without_mpi_nothing_imports_mpi4py(tmp_path: Path) -> None:
    code = (
        "import sys; from axlstateless.cli import cli\n"
        "try:\n    cli.main(sys.argv[1:], standalone_mode=True)\nexcept SystemExit:\n    pass\n"
        "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n"
    )
    (tmp_path / "root").mkdir()
    for command in ("finalize", "cleanup", "status"):
        subprocess.run([sys.executable, "-c", code, command, str(tmp_path / "root")], check=True, timeout=60)


@pytest.mark.parametrize("how", ["SIGKILL to rank 2", "SIGINT to mpiexec"])
def test_a_killed_rank_takes_the_job_down_and_a_rerun_finishes(
    tmp_path: Path, skewed: tuple[Path, dict[str, tuple[Any, ...]], set[Any]], how: str
) -> None:
    tree, serial_state, _ = skewed
    dst = copy_tree(tree, tmp_path / "dst")
    pids = tmp_path / "pids"
    pids.mkdir()
    # Each rank notes its pid, and --fsync slows the run enough to be caught in the middle of it.
    code = f"import os; open('{pids}/' + os.environ['PMI_RANK'], 'w').write(str(os.getpid()))\n" + _RANK
    environment = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, EXITS=str(pids))
    argv = [str(MPIEXEC), "-n", "4", sys.executable, "-c", code, "finalize", "--mpi", "--fsync", str(dst)]
    proc = subprocess.Popen(argv, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    total = len(list(dst.rglob("*._AXL*")))
    deadline = time.monotonic() + 60
    while len(list(dst.rglob("*._AXL*"))) > total * 0.8 or not (pids / "2").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    if how == "SIGKILL to rank 2":
        os.kill(int((pids / "2").read_text()), signal.SIGKILL)
    else:  # ^C: mpiexec passes it on to every rank, which stop between two temporaries
        os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    if how == "SIGINT to mpiexec":
        assert proc.returncode == 130
        assert "Traceback" not in err.decode()
        # Each rank stops at its next check (between two temporaries, or in its message loop).
        assert re.search(r"^Error: (rank \d: )?interrupted", err.decode(), re.M)
    left = len(list(dst.rglob("*._AXL*")))
    assert 0 < left < total  # stopped in the middle
    rerun = mpirun(2, "finalize", "--mpi", dst)
    assert rerun.exits == {0: 0, 1: 0}, rerun.stderr
    assert state(dst) == serial_state  # everything committed, once, as a serial run leaves it


# -- one burst-buffer wait, whatever the number of ranks -----------------------------------------------


def test_bbcmd_calls_do_not_grow_with_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = Sim(tmp_path, monkeypatch)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    handles = []
    for rank in range(8):
        rank_dir = src / f"rank{rank}"
        rank_dir.mkdir()
        for i in range(6):
            (rank_dir / f"part{i}").write_bytes(os.urandom(100 + rank))
        handle = sim.gethandle(rank + 1)
        handles.append(handle)
        pairs = [StagePair(bytes(p), bytes(dst / f"rank{rank}" / p.name)) for p in sorted(rank_dir.iterdir())]
        staged = prestage(pairs, handle=handle)
        if rank == 5:
            sim.lib.update_injections(fail={handle: 50})
        files = [FileEntry(os.fsdecode(f.source), os.fsdecode(f.temporary), 0) for f in staged.files]
        start_copy(sim.lib, sim.jobid, 0, 0, handle, files)
    deadline = time.monotonic() + 30
    while any(sim.status(h) in ("BBNOTSTARTED", "BBINPROGRESS") for h in handles):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # A bbcmd that logs each call, then runs the simulator's.
    log = tmp_path / "calls"
    counting = tmp_path / "bbcmd"
    counting.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {sim.path} "$@"\n')
    counting.chmod(0o755)
    results = {}
    for ranks in (1, 4):
        tree = copy_tree(dst, tmp_path / f"dst{ranks}")
        log.unlink(missing_ok=True)
        args = ["--backend", "ibmbb", "--bbcmd", counting, "--jobid", sim.jobid, "--poll-interval", "0.05"]
        run = mpirun(ranks, "finalize", "--mpi", "--json", *args, tree)
        assert run.exits == dict.fromkeys(range(ranks), 1), run.stderr
        records, summary = run.json()
        assert (summary["committed"], summary["aborted"]) == (42 + 8, 6)  # files and the ranks directories
        results[ranks] = (log.read_text().splitlines(), record_set(records, tree))
    assert len(results[4][0]) == len(results[1][0]) > 0
    assert results[4][1] == results[1][1]


# -- pre-stage across ranks ---------------------------------------------------------------------------


def staged_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Names, types and modes below `root`, with temporaries' sizes and times (those of directories and
    markers are when they were made)."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in root.rglob("*"):
        st = path.lstat()
        times = (st.st_size, st.st_mtime_ns) if path.is_file() and ".dir." not in path.name else ()
        out[str(path.relative_to(root))] = (st.st_mode, *times)
    return out


def test_prestage_from_list_equals_serial(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(5):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(7):
            (src / f"d{d}" / f"f{i}").write_bytes(b"x" * i)
    files = sorted(p for p in src.rglob("*") if p.is_file())

    def pairs(dst: str) -> list[tuple[bytes, bytes]]:
        return [(bytes(p), bytes(tmp_path / dst / p.relative_to(src))) for p in files]

    (tmp_path / "serial.tsv").write_bytes(b"".join(b"%s\t%s\n" % p for p in pairs("serial")))
    (tmp_path / "ranks.nul").write_bytes(b"".join(b"%s\0%s\0" % p for p in pairs("ranks")))
    run_cli("prestage", "--from-list", tmp_path / "serial.tsv", "--filelist", tmp_path / "serial.list", check=0)
    run = mpirun(3, "prestage", "--mpi", "-0", "--from-list", tmp_path / "ranks.nul", "--filelist",
                 tmp_path / "ranks.list", "--json")  # fmt: skip
    assert run.exits == {0: 0, 1: 0, 2: 0}, run.stderr
    objs = [json.loads(line) for line in run.stdout.splitlines()]
    assert objs[-1]["temporaries"] == len(objs) - 1 == len(files)
    assert staged_state(tmp_path / "ranks") == staged_state(tmp_path / "serial")
    serial_list = (tmp_path / "serial.list").read_text().replace(f"{tmp_path}/serial/", "DST/")
    ranks_list = (tmp_path / "ranks.list").read_text().replace(f"{tmp_path}/ranks/", "DST/")
    assert ranks_list == serial_list  # one file, in list order
    assert not list(tmp_path.glob("ranks.list.*"))


def test_prestage_duplicate_across_the_list_refused_on_every_rank(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i in range(12):
        (src / f"f{i}").write_bytes(b"data")
        lines.append(f"{src / f'f{i}'}\t{tmp_path / 'dst' / f'g{i}'}\n")
    lines.append(f"{src / 'f0'}\t{tmp_path / 'dst' / 'g0'}\n")  # the first line's destination, again
    (tmp_path / "list").write_text("".join(lines))
    run = mpirun(4, "prestage", "--mpi", "--from-list", tmp_path / "list")
    assert run.exits == dict.fromkeys(range(4), 2), run.stderr
    assert run.stderr.count("Error:") == 1
    assert f"Error: {tmp_path / 'dst' / 'g0'}: named twice as a destination" in run.stderr
    assert not (tmp_path / "dst").exists()  # nothing created


def test_prestage_bad_pair_on_one_rank_creates_nothing_anywhere(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i in range(8):
        (src / f"f{i}").write_bytes(b"data")
        lines.append(f"{src / f'f{i}'}\t{tmp_path / 'dst' / f'g{i}'}\n")
    (src / "f7").unlink()  # the last rank's source is missing
    (tmp_path / "list").write_text("".join(lines))
    run = mpirun(4, "prestage", "--mpi", "--from-list", tmp_path / "list")
    assert run.exits == dict.fromkeys(range(4), 2), run.stderr
    assert run.stderr.count("Error:") == 1
    assert f"{src / 'f7'}: no such file or directory" in run.stderr
    assert not (tmp_path / "dst").exists()


def test_per_rank_api_example_then_finalize(tmp_path: Path) -> None:
    example = Path(PACKAGE_ROOT) / "tools" / "mpi" / "prestage_ranks.py"
    bb, pfs = tmp_path / "bb", tmp_path / "pfs"
    environment = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    argv = [str(MPIEXEC), "-n", "3", sys.executable, str(example), str(bb), str(pfs), "--copy"]
    proc = subprocess.run(
        [*argv, "--handle", "7", "--filelist", str(tmp_path / "bb.list")],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=90,
    )
    # mpiexec forwards each rank's output as it comes: lines of two ranks may share a line of ours.
    assert sorted(re.findall(r"rank (\d): ", proc.stdout)) == ["0", "1", "2"], proc.stdout
    assert proc.stdout.count("._AXL.v1.") == 3, proc.stdout
    for rank in range(3):
        (line,) = (tmp_path / f"bb.list.{rank}").read_text().splitlines()
        assert line.startswith(f"{bb.resolve()}/ckpt.{rank} {pfs.resolve()}/step.0/ckpt.{rank}._AXL")
    run_cli("finalize", pfs, check=0)
    for rank in range(3):
        final = pfs / "step.0" / f"ckpt.{rank}"
        assert final.read_bytes() == (bb / f"ckpt.{rank}").read_bytes()
        assert final.stat().st_mode & 0o7777 == 0o440


def test_axl_state_with_mpi_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "states").mkdir()
    run = mpirun(2, "finalize", "--mpi", "--axl-state", tmp_path / "states", tmp_path / "root")
    assert run.exits == {0: 2, 1: 2}
    assert run.stderr.count("Error:") == 1
    assert "--axl-state cannot be combined with --mpi" in run.stderr


def test_per_rank_api_refuses_a_destination_two_ranks_name(tmp_path: Path) -> None:
    code = f"""
import os, sys
from mpi4py import MPI
from axlstateless.errors import UsageError
from axlstateless.mpi import connect
from axlstateless.prestage import StagePair
rank = MPI.COMM_WORLD.Get_rank()
src = b"{tmp_path}/src.%d" % rank
open(src, "wb").write(b"data")
final = b"{tmp_path}/dst/shared" if rank in (0, 2) else b"{tmp_path}/dst/own.%d" % rank
try:
    connect().prestage([StagePair(src, final)])
    print("rank", rank, "created")
except UsageError as exc:
    print("rank", rank, "refused:", exc)
"""
    environment = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    proc = subprocess.run(
        [str(MPIEXEC), "-n", "3", sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Searched for, not split into lines: mpiexec may put two ranks' output on one line.
    for r in range(3):
        assert f"rank {r} refused: {tmp_path}/dst/shared: named twice as a destination" in proc.stdout, proc.stdout
    assert "created" not in proc.stdout, proc.stdout
    assert not (tmp_path / "dst").exists()
