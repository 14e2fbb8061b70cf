"""Finalize on a parallel-file-system model: every file-system call sleeps a fixed time (latfs), many
calls in flight at once. Compares --jobs 1, 4, 16, 32 with the single-threaded C floor on the same mount.

    python tools/bench/pfs.py                        # 2,000 temporaries at 200 us per call
    python tools/bench/pfs.py --sizes 2000,16000     # up to 16,000 (adds ~10 minutes)
    python tools/bench/pfs.py --latency 1000         # a slower PFS

Needs root and /dev/fuse: it mounts latfs (a model of a parallel file system that is not part of this
repository: give its command with --latfs or $AXL_LATFS) over / and works below it. The tree is
created and reset on the backing disk directly (not through latfs), so only the measured runs pay the
latency.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib as b

# The performance target (docs/performance.md): --jobs 16 at least 6x faster than the floor on latfs at 200 us.
TARGET_J16 = 6.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000")
    ap.add_argument("--jobs", default="1,4,16,32")
    ap.add_argument("--latency", type=int, default=200, help="microseconds per file-system call")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--disk", type=Path, default=Path("/var/tmp"))  # noqa: S108 - the backing disk
    ap.add_argument("--latfs", default=None, help="the latfs command [$AXL_LATFS]")
    args = ap.parse_args()
    tool = b.latfs_command(args.latfs)
    sizes = [int(s) for s in args.sizes.split(",")]
    jobs = [int(j) for j in args.jobs.split(",")]
    mnt = Path(tempfile.mkdtemp(prefix="axlbench-latfs."))
    subprocess.run([str(tool), "mount", str(mnt), str(args.latency)], check=True)
    try:
        with b.scratch(args.disk) as work:
            floor = b.build_floor(work)
            for n in sizes:
                run_size(work, mnt, n, jobs, floor, args)
    finally:
        subprocess.run([str(tool), "umount", str(mnt)], check=False)
        mnt.rmdir()


def run_size(work: Path, mnt: Path, n: int, jobs: list[int], floor: Path, args: argparse.Namespace) -> None:
    backing = work / f"tree.{n}"
    b.make_tree(backing, n)
    via = mnt / backing.relative_to("/")
    cases = [("C floor", [str(floor), str(via)])] + [(f"finalize -j{j}", b.finalize_argv(via, j)) for j in jobs]
    cases.append(("finalize default", b.finalize_argv(via, None)))
    results: dict[str, list[b.Run]] = {}
    for _ in range(args.repeat):
        for what, argv in cases:
            b.reset_tree(backing, n)
            t = time.perf_counter()
            run = b.timed(argv)
            b.check_done(backing, run, what)
            results.setdefault(what, []).append(run)
            print(f"[{n}] {what}: {time.perf_counter() - t:.2f}s", file=sys.stderr, flush=True)
    fl = b.median([r.seconds for r in results["C floor"]])
    print(f"\nlatfs at {args.latency} us per call, {n} temporaries in 16 directories (median of {args.repeat})")
    print(f"  {'':<16}{'wall s':>8}{'files/s':>10}{'floor/this':>12}{'peak RSS':>10}")
    for what, runs in results.items():
        s = b.median([r.seconds for r in runs])
        rss = max(r.maxrss_mb for r in runs)
        print(f"  {what:<16}{s:8.2f}{n / s:10.0f}{b.ratio(fl, s):>12}{rss:8.0f}MB")
    if "finalize -j16" in results and args.latency == 200:
        speedup = fl / b.median([r.seconds for r in results["finalize -j16"]])
        ok = speedup >= TARGET_J16
        how = "met" if ok else f"MISSED by {TARGET_J16 / speedup:.2f}x"
        print(f"  target: --jobs 16 at least {TARGET_J16:.0f}x faster than the floor: {speedup:.2f}x ({how})")


if __name__ == "__main__":
    main()
