"""The native core's targets in one run: finalize against the C floor on a local disk, tmpfs and a
parallel-file-system model, on the native and the pure-Python path, and the figure of files per second
against --jobs (docs/performance.md).

    python tools/bench/targets.py --latfs PATH                    # everything (~20 min on 2 busy cores)
    python tools/bench/targets.py --fs disk --no-pfs --repeat 1  # a quick look at the disk alone
    AXL_LATFS=PATH python tools/bench/targets.py --million        # also peak RSS at 1,000,000 temporaries

Needs root (it mounts a tmpfs and latfs), gcc, the native core built (``pip install .``; the run stops
if ``--version`` does not say "native core") and matplotlib for the figure (``pip install '.[bench]'``).
latfs, the model of a parallel file system (every call sleeps a fixed time, many in flight), is not
part of this repository: give its command with --latfs or $AXL_LATFS (``LATFS mount MNT MICROSECONDS``
and ``LATFS umount MNT``); without it the parallel-file-system part is skipped.

Every ratio printed is between runs of this one invocation, interleaved case by case, so a busy machine
slows every case alike; compare ratios, not seconds, between machines or runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import benchlib as b

PURE = {"AXLSTATELESS_PURE": "1"}
# The targets of the native core (docs/performance.md, "Targets").
TARGET_J1 = 1.3  # --jobs 1 within 1.3x of the C floor
TARGET_J2 = 1.0  # --jobs 2 faster than the single-threaded C floor
TARGET_SHELL = 150.0  # the shell loop at least 150x slower than finalize
TARGET_RSS_MB = 50.0  # peak RSS at 1M temporaries, any --jobs
TARGET_PFS = 6.5  # latfs 200 us, 2,000 temporaries, default --jobs: at least 6.5x faster than the floor


def env(pure: bool) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "AXLSTATELESS_PURE"}
    return base | PURE if pure else base


def cases(root: Path, floor: Path, jobs: list[int], report_dir: Path | None) -> list[tuple[str, list[str], bool]]:
    """(label, argv, pure) for every measured run on one tree."""
    out = [("C floor", [str(floor), str(root)], False)]
    out += [(f"pure -j{j}", b.finalize_argv(root, j), True) for j in jobs]
    out += [(f"native -j{j}", b.finalize_argv(root, j), False) for j in jobs]
    out.append(("native default", b.finalize_argv(root, None), False))
    if report_dir is not None:
        out.append(("native -j1 --report", b.finalize_argv(root, 1, "--report", str(report_dir / "r.jsonl")), False))
    return out


def measure(
    label: str, backing: Path, via: Path, n: int, floor: Path, jobs: list[int], repeat: int, report: bool
) -> dict[str, b.Run]:
    """Median wall and CPU seconds of each case on a tree of `n` temporaries made at `backing` and
    finalized through `via` (the same directory, or its latfs view)."""
    runs: dict[str, list[b.Run]] = {}
    b.make_tree(backing, n)
    with tempfile.TemporaryDirectory() as rd:
        plan = cases(via, floor, jobs, Path(rd) if report else None)
        for _ in range(repeat):
            for what, argv, pure in plan:
                b.reset_tree(backing, n)
                run = b.timed(argv, env=env(pure))
                b.check_done(backing, run, f"{label} {what}")
                runs.setdefault(what, []).append(run)
                print(f"[{label} {n}] {what}: {run.seconds:.2f}s", file=sys.stderr, flush=True)
    med = {
        what: b.Run(
            b.median([r.seconds for r in rs]), max(r.maxrss_mb for r in rs), 0, "", b.median([r.cpu for r in rs])
        )
        for what, rs in runs.items()
    }
    fl = med["C floor"]
    print(f"\n{label}, {n} temporaries in 16 directories (median of {repeat})")
    print(f"  {'':<22}{'wall s':>8}{'cpu s':>8}{'files/s':>10}{'wall/floor':>12}{'cpu/floor':>11}{'peak RSS':>10}")
    for what, r in med.items():
        print(
            f"  {what:<22}{r.seconds:8.3f}{r.cpu:8.3f}{n / r.seconds:10.0f}"
            f"{b.ratio(r.seconds, fl.seconds):>12}{b.ratio(r.cpu, fl.cpu):>11}{r.maxrss_mb:8.0f}MB"
        )
    return med


@contextlib.contextmanager
def latfs(tool: str, latency: int) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="axlbench-latfs."))
    subprocess.run([tool, "mount", str(mnt), str(latency)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run([tool, "umount", str(mnt)], check=False)
        mnt.rmdir()


def verdict(what: str, value: float, target: float, *, lower: bool) -> str:
    ok = value < target if lower else value >= target
    how = "met" if ok else f"MISSED by {value / target:.2f}x" if lower else f"MISSED by {target / value:.2f}x"
    line = f"  {what}: {value:.2f} (target {'<' if lower else '>='} {target:g}: {how})"
    print(line)
    return line


def plot(results: dict[str, tuple[int, dict[str, b.Run]]], jobs: list[int], out: Path) -> None:
    """Files per second against --jobs, one panel per file system; the C floor is one thread."""
    import matplotlib  # noqa: PLC0415 - the bench extra, only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), squeeze=False)
    for ax, (label, (n, med)) in zip(axes[0], results.items(), strict=True):
        floor = n / med["C floor"].seconds
        ax.axhline(floor, color="black", linestyle="--", label="C floor (1 thread)")
        for path, style in (("native", "o-"), ("pure", "s-")):
            xs = [j for j in jobs if f"{path} -j{j}" in med]
            ax.plot(xs, [n / med[f"{path} -j{j}"].seconds for j in xs], style, label=f"finalize, {path} path")
        ticks = sorted({j for j in jobs if f"native -j{j}" in med or f"pure -j{j}" in med})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(j) for j in ticks])
        ax.set_xlabel("--jobs")
        ax.set_ylabel("temporaries finalized per second")
        ax.set_title(f"{label}, {n:,} temporaries (load {os.getloadavg()[0]:.0f})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"figure: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="temporaries on the local file systems")
    ap.add_argument("--fs", default="disk,tmpfs", help="local file systems to measure: disk, tmpfs")
    ap.add_argument("--jobs", default="1,2,4", help="--jobs values on the local file systems")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--disk", type=Path, default=Path("/var/tmp"))  # noqa: S108 - a directory on the disk
    ap.add_argument("--subset", type=int, default=100, help="files for the shell-loop baseline")
    ap.add_argument("--latfs", default=os.environ.get("AXL_LATFS"), help="the latfs command [$AXL_LATFS]")
    ap.add_argument("--no-pfs", action="store_true", help="skip the parallel-file-system model")
    ap.add_argument("--pfs-n", type=int, default=2000)
    ap.add_argument("--pfs-jobs", default="1,2,4,8,16")
    ap.add_argument("--latency", type=int, default=200, help="latfs microseconds per call")
    ap.add_argument("--million", action="store_true", help="also peak RSS at 1,000,000 temporaries on tmpfs")
    ap.add_argument("--figure", type=Path, default=b.HERE.parents[1] / "docs" / "performance-jobs.png")
    args = ap.parse_args()
    jobs = [int(j) for j in args.jobs.split(",")]
    pfs_jobs = [int(j) for j in args.pfs_jobs.split(",")]

    version = subprocess.run(
        [sys.executable, "-m", "axlstateless", "--version"], capture_output=True, text=True, check=True, env=env(False)
    ).stdout.strip()
    print(f"{version}; python + CLI start-up: {b.python_startup():.3f}s; load average {os.getloadavg()[0]:.1f}")
    if "native core" not in version:
        raise SystemExit("the native core is not loaded: build it (pip install .) before measuring it")

    lines: list[str] = []
    plotted: dict[str, tuple[int, dict[str, b.Run]]] = {}
    with b.scratch(args.disk) as work:
        floor = b.build_floor(work)
        wanted = args.fs.split(",")
        local: dict[str, dict[str, b.Run]] = {}
        with b.tmpfs(work) if "tmpfs" in wanted else contextlib.nullcontext() as tmp:
            places = [("disk", work)] if "disk" in wanted else []
            places += [("tmpfs", tmp)] if tmp is not None else []
            for label, parent in places:
                tree = parent / "tree"
                local[label] = measure(label, tree, tree, args.n, floor, jobs, args.repeat, report=True)
                shutil.rmtree(tree)
            if args.million and tmp is not None:
                tree = tmp / "million"
                rss = measure("tmpfs", tree, tree, 1_000_000, floor, [1, 16], 1, report=False)
                shutil.rmtree(tree)
                worst = max(r.maxrss_mb for w, r in rss.items() if w != "C floor")
                lines.append(verdict("peak RSS at 1M temporaries, any --jobs, MB", worst, TARGET_RSS_MB, lower=True))
        shell = b.shell_seconds_per_file(args.disk, args.subset) if "disk" in wanted else None

        pfs: dict[str, b.Run] | None = None
        if args.latfs and not args.no_pfs:
            with latfs(args.latfs, args.latency) as mnt:
                backing = work / "pfs"
                via = mnt / backing.relative_to("/")
                pfs = measure(f"latfs {args.latency} us", backing, via, args.pfs_n, floor, pfs_jobs, 1, report=False)
        elif not args.no_pfs:
            print("no latfs given (--latfs or $AXL_LATFS): the parallel-file-system model is skipped")

    print("\ntargets, each ratio from this one run:")
    for label, med in local.items():
        fl = med["C floor"].seconds
        lines.append(
            verdict(f"{label}: native --jobs 1 / C floor", med["native -j1"].seconds / fl, TARGET_J1, lower=True)
        )
        if "native -j2" in med:
            lines.append(
                verdict(f"{label}: native --jobs 2 / C floor", med["native -j2"].seconds / fl, TARGET_J2, lower=True)
            )
        fastest = min((r.seconds, w) for w, r in med.items() if w.startswith("native -j"))
        print(f"  {label}: default --jobs {med['native default'].seconds:.2f}s, fastest {fastest[1]} {fastest[0]:.2f}s")
        print(f"  {label}: pure --jobs 1 / C floor {med['pure -j1'].seconds / fl:.2f}x")
        print(f"  {label}: --report costs {med['native -j1 --report'].seconds / med['native -j1'].seconds:.2f}x")
        plotted[label] = (args.n, med)
    if shell is not None and "disk" in local:
        best = min(r.seconds for w, r in local["disk"].items() if w.startswith("native"))
        lines.append(
            verdict("disk: shell loop / finalize (extrapolated)", shell * args.n / best, TARGET_SHELL, lower=False)
        )
    if pfs is not None:
        speedup = pfs["C floor"].seconds / pfs["native default"].seconds
        lines.append(
            verdict(f"latfs {args.latency} us: C floor / native default --jobs", speedup, TARGET_PFS, lower=False)
        )
        plotted[f"latfs {args.latency} us"] = (args.pfs_n, pfs)
    all_jobs = sorted({*jobs, *pfs_jobs})
    try:
        plot(plotted, all_jobs, args.figure)
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no figure")
    print(f"finished {time.strftime('%Y-%m-%d %H:%M:%S')}")


if __name__ == "__main__":
    main()
