"""Finalize across MPI ranks (``mpiexec -n P ... finalize --mpi``) against one process and the C floor, in
the same run, on a parallel-file-system model (latfs) and on the local disk.

    AXL_LATFS=/path/to/latfs python tools/bench/mpi.py          # both, default sizes
    python tools/bench/mpi.py --latfs /path/to/latfs --latfs-size 16000 --threads 16
    python tools/bench/mpi.py --skip-latfs --disk-size 100000   # local disk only

The latfs command is taken from ``--latfs`` or ``$AXL_LATFS``: any program with the interface
``latfs mount MOUNTPOINT MICROSECONDS`` / ``latfs umount MOUNTPOINT`` that mounts a model of a parallel
file system (every call sleeps, many in flight); without one, only the local disk is measured.
Needs root and /dev/fuse for latfs, ``gcc`` for the floor, and ``mpiexec`` on PATH (``pip install mpich
mpi4py``). On latfs, P ranks get ``--jobs THREADS/P`` each, so every line uses the same total number of
threads as the single process it is compared with; on the disk, every rank runs one thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib as b

#: Target: on latfs at 200 us with 16,000 temporaries, 4 ranks beat one process with the same threads.
TARGET_RANKS = 4


def mpi_argv(ranks: int, root: Path, jobs: int) -> list[str]:
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("mpiexec not found: pip install mpich mpi4py")
    return [mpiexec, "-n", str(ranks), *b.finalize_argv(root, jobs, "--mpi")]


def measure(label: str, backing: Path, n: int, cases: list[tuple[str, list[str]]]) -> dict[str, b.Run]:
    results: dict[str, b.Run] = {}
    for what, argv in cases:
        b.reset_tree(backing, n)
        run = b.timed(argv)
        b.check_done(backing, run, what)
        results[what] = run
        print(f"[{label}] {what}: {run.seconds:.2f}s", file=sys.stderr, flush=True)
    return results


def table(title: str, n: int, results: dict[str, b.Run], base: str) -> None:
    floor = results["C floor"].seconds
    one = results[base].seconds
    print(f"\n{title}")
    print(f"  {'':<26}{'wall s':>8}{'files/s':>10}{'floor/this':>12}{base + '/this':>22}")
    for what, run in results.items():
        print(
            f"  {what:<26}{run.seconds:8.2f}{n / run.seconds:10.0f}{b.ratio(floor, run.seconds):>12}"
            f"{b.ratio(one, run.seconds):>22}"
        )


def on_latfs(tool: str, work: Path, floor: Path, n: int, latency: int, threads: int, ranks: list[int]) -> None:
    mnt = Path(tempfile.mkdtemp(prefix="axlbench-latfs."))
    subprocess.run([tool, "mount", str(mnt), str(latency)], check=True)
    try:
        backing = work / f"latfs.{n}"
        b.make_tree(backing, n)
        via = mnt / backing.relative_to("/")
        base = f"finalize -j{threads}"
        cases = [("C floor", [str(floor), str(via)]), (base, b.finalize_argv(via, threads))]
        cases += [(f"--mpi -n {p} -j{threads // p}", mpi_argv(p, via, max(1, threads // p))) for p in ranks]
        results = measure("latfs", backing, n, cases)
        table(
            f"latfs at {latency} us per call, {n} temporaries in 16 directories ({threads} threads in all)",
            n,
            results,
            base,
        )
        best = results.get(f"--mpi -n {TARGET_RANKS} -j{threads // TARGET_RANKS}")
        if best is not None:
            gain = results[base].seconds / best.seconds
            how = "met" if gain > 1 else "MISSED"
            print(f"  target: {TARGET_RANKS} ranks beat one process with the same threads: {gain:.2f}x ({how})")
    finally:
        subprocess.run([tool, "umount", str(mnt)], check=False)
        mnt.rmdir()


def on_disk(work: Path, floor: Path, n: int, ranks: list[int]) -> None:
    backing = work / f"disk.{n}"
    b.make_tree(backing, n)
    base = "finalize -j1"
    cases = [("C floor", [str(floor), str(backing)]), (base, b.finalize_argv(backing, 1))]
    cases += [(f"--mpi -n {p} -j1", mpi_argv(p, backing, 1)) for p in ranks]
    table(f"local disk ({work}), {n} temporaries in 16 directories", n, measure("disk", backing, n, cases), base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latfs", default=os.environ.get("AXL_LATFS"), help="the latfs command [$AXL_LATFS]")
    ap.add_argument("--skip-latfs", action="store_true")
    ap.add_argument("--latfs-size", type=int, default=16000)
    ap.add_argument("--latency", type=int, default=200, help="microseconds per file-system call")
    ap.add_argument("--threads", type=int, default=16, help="threads in all, on latfs")
    ap.add_argument("--disk-size", type=int, default=100000)
    ap.add_argument("--skip-disk", action="store_true")
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--disk", type=Path, default=Path("/var/tmp"))  # noqa: S108 - the backing disk
    args = ap.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    started = time.monotonic()
    with b.scratch(args.disk) as work:
        floor = b.build_floor(work)
        if not args.skip_latfs:
            if not args.latfs:
                print("no latfs command (--latfs or $AXL_LATFS): skipping the latfs model", file=sys.stderr)
            else:
                on_latfs(args.latfs, work, floor, args.latfs_size, args.latency, args.threads, ranks)
        if not args.skip_disk:
            on_disk(work, floor, args.disk_size, ranks)
    print(
        f"\n(one run of each; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; "
        f"{time.monotonic() - started:.0f}s in all)"
    )


if __name__ == "__main__":
    main()
