"""Finalize throughput on the local disk and on tmpfs, against the C floor and the baselines.

    python tools/bench/local.py                      # 16k and 100k temporaries, --jobs 1, 2, 4
    python tools/bench/local.py --million            # also 1M (adds ~15 minutes)
    python tools/bench/local.py --sizes 1000000 --fs tmpfs --jobs 1,16 --repeat 1   # peak RSS at 1M
    python tools/bench/local.py --sizes 16000 --repeat 1 --fs disk   # a quick look

Each size gets one tree in the checkpoint layout (timestep.T/data.R, 16 directories); every run acts
on the same inodes (the tree is turned back into temporaries between runs). Runs are interleaved and
repeated; the median wall time is reported with the child's CPU time (user + system), which is steadier
when other work shares the machine. Every ratio below is between runs of this invocation.

Baselines (on the disk, on a subset, extrapolated linearly and labelled so): a shell loop of
chmod/touch/mv per file, and one process start per rank reading its state file (the state-file design's
post-stage, modelled favourably by a small C program).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import benchlib as b

TARGET_J1 = 1.3  # finalize --jobs 1 within 1.3x of the floor (the performance target, docs/performance.md)
TARGET_SHELL = 100.0  # at least 100x faster than the shell loop
TARGET_RSS_MB = 100.0  # peak RSS at 1M temporaries


def one_size(fs: str, parent: Path, n: int, jobs: list[int], floor: Path, repeat: int) -> dict[str, b.Run]:
    results: dict[str, list[b.Run]] = {}
    with b.scratch(parent) as root:
        t = time.perf_counter()
        b.make_tree(root, n)
        print(f"[{fs} {n}] tree made in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
        cases: list[tuple[str, list[str]]] = [
            ("C floor", [str(floor), str(root)]),
            ("Python floor", b.pyfloor_argv(root)),
        ]
        cases += [(f"finalize -j{j}", b.finalize_argv(root, j)) for j in jobs]
        cases.append(("finalize default", b.finalize_argv(root, None)))
        for _ in range(repeat):  # interleaved, so that a busy spell hits every case alike
            for what, argv in cases:
                b.reset_tree(root, n)
                run = b.timed(argv)
                b.check_done(root, run, what)
                results.setdefault(what, []).append(run)
    med: dict[str, b.Run] = {}
    for what, runs in results.items():
        m = b.Run(
            b.median([r.seconds for r in runs]), max(r.maxrss_mb for r in runs), 0, "", b.median([r.cpu for r in runs])
        )
        med[what] = m
    fl = med["C floor"]
    print(f"\n{fs}, {n} temporaries in 16 directories (median of {repeat})")
    print(f"  {'':<16}{'wall s':>8}{'cpu s':>8}{'files/s':>10}{'wall/floor':>12}{'cpu/floor':>11}{'peak RSS':>10}")
    for what, r in med.items():
        print(
            f"  {what:<16}{r.seconds:8.3f}{r.cpu:8.3f}{n / r.seconds:10.0f}"
            f"{b.ratio(r.seconds, fl.seconds):>12}{b.ratio(r.cpu, fl.cpu):>11}{r.maxrss_mb:8.0f}MB"
        )
    return med


def shell_loop(parent: Path, subset: int) -> float:
    """Seconds per file of a hand-written post-stage: chmod, touch, mv per temporary."""
    return b.shell_seconds_per_file(parent, subset)


def per_rank(parent: Path, floor: Path, ranks: int, dirs: int = 16) -> float:
    """Seconds per file of the state-file design: one process per rank reading its state file."""
    with b.scratch(parent) as root:
        b.make_tree(root, ranks * dirs, dirs=dirs, xattrs=False)
        states = root / "state"
        states.mkdir()
        for r in range(ranks):
            lines = [
                f"{root}/timestep.{t}/{b.TempName(b'data.%d' % r, b.MODE, b.size_of(r), b.MTIME_NS).encode().decode()}"
                for t in range(dirs)
            ]
            (states / f"rank.{r}").write_text("\n".join(lines) + "\n")
        start = time.perf_counter()
        for r in range(ranks):
            b.timed([str(floor), "--state", str(states / f"rank.{r}")])
        seconds = time.perf_counter() - start
        assert b.temporaries_left(root) == 0
        return seconds / (ranks * dirs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16000,100000", help="comma-separated temporary counts")
    ap.add_argument("--million", action="store_true", help="also 1,000,000 temporaries (slow)")
    ap.add_argument("--jobs", default="1,2,4")
    ap.add_argument("--repeat", type=int, default=3)
    disk = Path("/var/tmp")  # noqa: S108 - a directory on the disk, not a tmpfs
    ap.add_argument("--disk", type=Path, default=disk, help="a directory on the disk to measure")
    ap.add_argument("--fs", default="disk,tmpfs", help="where to measure: disk, tmpfs (mounting one needs root)")
    ap.add_argument("--subset", type=int, default=400, help="files for the shell-loop baseline")
    ap.add_argument("--ranks", type=int, default=100, help="ranks (16 files each) for the per-rank baseline")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] + ([1_000_000] if args.million else [])
    jobs = [int(j) for j in args.jobs.split(",")]

    with b.scratch(args.disk) as work:
        floor = b.build_floor(work)
        startup = b.python_startup()
        print(f"python + CLI start-up (included in every finalize time): {startup:.3f}s")
        wanted = args.fs.split(",")
        systems = [("disk", args.disk)] if "disk" in wanted else []
        results: dict[tuple[str, int], dict[str, b.Run]] = {}
        with b.tmpfs(work) if "tmpfs" in wanted else contextlib.nullcontext() as tmp:
            if tmp is not None:
                systems.append(("tmpfs", tmp))
            for fs, parent in systems:
                for n in sizes:
                    results[fs, n] = one_size(fs, parent, n, jobs, floor, args.repeat)

        if "disk" not in wanted:
            report_rss(results, sizes)
            return
        shell = shell_loop(args.disk, args.subset)
        rank = per_rank(args.disk, floor, args.ranks)

    n = max(s for s in sizes if s <= 100_000) if any(s <= 100_000 for s in sizes) else sizes[0]
    disk = results["disk", n]
    j1 = disk["finalize -j1"].seconds
    print(f"\nbaselines on the disk, extrapolated to {n} temporaries (EXTRAPOLATED from subsets)")
    print(
        f"  shell loop chmod/touch/mv per file ({args.subset} files): {shell * n:9.1f}s  = "
        f"{shell * n / j1:6.0f}x finalize -j1"
    )
    print(
        f"  one process per rank, state file ({args.ranks} ranks x 16 files): {rank * n:9.1f}s  = "
        f"{rank * n / j1:6.0f}x finalize -j1"
    )

    print(f"\ntargets on the disk at {n} temporaries:")
    fl = disk["C floor"].seconds
    verdict(f"--jobs 1 within {TARGET_J1}x of the floor", j1 / fl, TARGET_J1, lower=True)
    if "finalize -j2" in disk:
        verdict("--jobs 2 faster than the floor", disk["finalize -j2"].seconds / fl, 1.0, lower=True)
    best = min(r.seconds for w, r in disk.items() if w.startswith("finalize"))
    verdict(f"at least {TARGET_SHELL:.0f}x faster than the shell loop", shell * n / best, TARGET_SHELL, lower=False)
    report_rss(results, sizes)


def report_rss(results: dict[tuple[str, int], dict[str, b.Run]], sizes: list[int]) -> None:
    big = max(sizes)
    rss = max(r.maxrss_mb for (_, s), res in results.items() if s == big for w, r in res.items() if "finalize" in w)
    verdict(f"peak RSS under {TARGET_RSS_MB:.0f} MB at {big} temporaries", rss, TARGET_RSS_MB, lower=True, unit="MB")


def verdict(what: str, value: float, target: float, *, lower: bool, unit: str = "x") -> None:
    ok = value < target if lower else value >= target
    how = "met" if ok else f"MISSED by {value / target:.2f}x" if lower else f"MISSED by {target / value:.2f}x"
    print(f"  {what}: {value:.2f}{unit} ({how})")


if __name__ == "__main__":
    main()
