"""Shared pieces of the benchmarks: the checkpoint tree, the C floor, timed subprocess runs.

Not part of the package or the test suite; run the scripts next to this file (see docs/performance.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from axlstateless.metadata import META_ATTR, Extras
from axlstateless.nameformat import TempName

HERE = Path(__file__).resolve().parent
MODE = 0o644
MTIME_NS = 1_700_000_000_123_456_789
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def size_of(rank: int) -> int:
    """Small, varied sizes (sparse files: the data is not what is measured)."""
    return rank % 4093


def make_tree(root: Path, n: int, dirs: int = 16, *, xattrs: bool = True) -> None:
    """`n` committable temporaries in the checkpoint layout ``root/timestep.T/data.R``, as pre-stage
    leaves them once the copy is over: the right size, mode 0600 until the commit, ``user.axl.meta``
    (atime, uid, gid) when `xattrs` and the file system keeps them."""
    root.mkdir(parents=True, exist_ok=True)
    meta = Extras(atime_ns=MTIME_NS, uid=os.geteuid(), gid=os.getegid()).encode_meta()
    per_dir, extra = divmod(n, dirs)
    for t in range(dirs):
        d = root / f"timestep.{t}"
        d.mkdir()
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for r in range(per_dir + (t < extra)):
                size = size_of(r)
                name = TempName(b"data.%d" % r, MODE, size, MTIME_NS).encode()
                fd = os.open(name, CREATE, 0o600, dir_fd=dfd)
                if size:
                    os.ftruncate(fd, size)
                if xattrs:
                    try:
                        os.setxattr(fd, META_ATTR, meta)
                    except OSError:
                        xattrs = False
                os.close(fd)
        finally:
            os.close(dfd)


def temporaries_left(root: Path) -> int:
    return sum(1 for d in root.glob("timestep.*") for e in os.scandir(d) if "._AXL" in e.name)


def build_floor(workdir: Path) -> Path:
    """Compile floor.c (the benchmark's yardstick) with the machine's gcc."""
    exe = workdir / "floor"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "floor.c")], check=True)
    return exe


@dataclass
class Run:
    seconds: float
    maxrss_mb: float
    exit_code: int
    stderr: str = ""
    cpu: float = 0.0  # user + system seconds of the child: steadier than wall time on a busy machine


def timed(argv: list[str], **kwargs: object) -> Run:
    """Run `argv` to the end; wall time and the child's own peak RSS (ru_maxrss from wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return Run(seconds, usage.ru_maxrss / 1024, proc.returncode, err.decode(errors="replace")[-2000:], cpu)


def finalize_argv(root: Path, jobs: int | None, *extra: str) -> list[str]:
    """finalize as a subprocess; `jobs` None leaves --jobs to its default (chosen by file system)."""
    argv = [sys.executable, "-m", "axlstateless", "finalize", str(root), *extra]
    return argv if jobs is None else [*argv, "--jobs", str(jobs)]


def python_startup() -> float:
    """The interpreter and CLI start-up alone, included in every finalize time."""
    return min(timed([sys.executable, "-m", "axlstateless", "--help"]).seconds for _ in range(3))


@contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="axlbench.", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def tmpfs(parent: Path) -> Iterator[Path]:
    """A fresh tmpfs (needs root): the kernel's cheapest file system, so Python's overhead shows most."""
    mnt = Path(tempfile.mkdtemp(prefix="axlbench-tmpfs.", dir=parent))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,nr_inodes=4m", "axlbench", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def reset_tree(root: Path, n: int, dirs: int = 16) -> None:
    """Turn a finalized tree back into temporaries (rename back, mode 0600), so every run of one size
    acts on the same inodes; much faster than creating them again on a busy ext4."""
    per_dir, extra = divmod(n, dirs)
    for t in range(dirs):
        dfd = os.open(root / f"timestep.{t}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for r in range(per_dir + (t < extra)):
                final = b"data.%d" % r
                name = TempName(final, MODE, size_of(r), MTIME_NS).encode()
                with contextlib.suppress(FileNotFoundError):  # still a temporary: that run left it
                    os.rename(final, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                os.chmod(name, 0o600, dir_fd=dfd)
        finally:
            os.close(dfd)
    assert temporaries_left(root) == n, "the tree did not reset"


def check_done(root: Path, run: Run, what: str) -> None:
    left = temporaries_left(root)
    if run.exit_code != 0 or left:
        raise SystemExit(f"{what}: exit {run.exit_code}, {left} temporaries left\n{run.stderr}")


def shell_seconds_per_file(parent: Path, subset: int) -> float:
    """Seconds per file of a hand-written post-stage: chmod, touch, mv per temporary."""
    with scratch(parent) as root:
        make_tree(root, subset, dirs=1, xattrs=False)
        d = root / "timestep.0"
        script = ["set -e"]
        for r in range(subset):
            tmp = TempName(b"data.%d" % r, MODE, size_of(r), MTIME_NS).encode().decode()
            sec, ns = divmod(MTIME_NS, 10**9)
            t = f"'{d}/{tmp}'"
            script.append(f"chmod {MODE:o} {t}; touch -m -d @{sec}.{ns:09d} {t}; mv -f {t} '{d}/data.{r}'")
        path = root / "poststage.sh"
        path.write_text("\n".join(script) + "\n")
        run = timed(["bash", str(path)])
        assert run.exit_code == 0, run.stderr
        assert temporaries_left(root) == 0
        return run.seconds / subset


def latfs_command(given: str | None) -> str:
    """The latfs command (a parallel-file-system model, not part of this repository): --latfs or
    $AXL_LATFS."""
    tool = given or os.environ.get("AXL_LATFS")
    if not tool:
        raise SystemExit("latfs not given: pass --latfs PATH or set AXL_LATFS")
    return tool


def pyfloor_argv(root: Path) -> list[str]:
    return [sys.executable, str(HERE / "pyfloor.py"), str(root)]


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
