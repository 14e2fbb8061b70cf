"""bbcmd calls made by finalize while it waits on many transfer handles in the simulated IBM BB.

    python tools/bench/bbcmd_calls.py                      # 2,000 handles, 4 of them slow (~20 s)
    python tools/bench/bbcmd_calls.py --handles 16000      # full-system scale (creating them takes minutes)

One handle per rank, one temporary per handle, in 16 directories. All transfers but `--slow` finish at
once; the slow ones take about `--wait` seconds, so finalize waits that long. Every bbcmd call goes
through a counting wrapper around ``python -m axlstateless.bbsim``. The state-file design asks the BB
about each rank's handle on every poll: its count (handles x polls) is printed beside ours.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import benchlib as b

from axlstateless.bbsim import FileEntry, Spool, start_copy
from axlstateless.bbsim.model import ENV_RATE, FIRST_HANDLE, SPOOL_ENV
from axlstateless.nameformat import TempName

JOBID = "4242"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--handles", type=int, default=2000)
    ap.add_argument("--slow", type=int, default=4, help="transfers still running when finalize starts")
    ap.add_argument("--wait", type=float, default=20.0, help="seconds the slow transfers take")
    ap.add_argument("--poll-interval", type=float, default=2.0, help="finalize's first poll interval (its default)")
    ap.add_argument("--disk", type=Path, default=Path("/var/tmp"))  # noqa: S108 - the disk
    args = ap.parse_args()
    with b.scratch(args.disk) as work:
        spool = work / "spool"
        os.environ[SPOOL_ENV] = str(spool)
        count = work / "calls"
        wrapper = work / "bbcmd"
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {count}\nexec {sys.executable} -m axlstateless.bbsim "$@"\n')
        wrapper.chmod(0o755)
        src, dst = work / "src", work / "dst"
        src.mkdir()
        sim = Spool(spool)
        t = time.perf_counter()
        size = 1000
        (src / "data").write_bytes(b"x" * size)
        for i in range(args.handles):
            slow = i >= args.handles - args.slow
            handle = FIRST_HANDLE + i
            d = dst / f"timestep.{i % 16}"
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / TempName(b"data.%d" % i, 0o644, size, b.MTIME_NS, handle).encode().decode()
            tmp.write_bytes(b"")
            # The mover reads its rate when it starts: slow ones take `wait` seconds for their bytes.
            os.environ[ENV_RATE] = str(size / args.wait) if slow else "1e9"
            start_copy(sim, JOBID, 0, 0, handle, [FileEntry(str(src / "data"), str(tmp), 0)])
        del os.environ[ENV_RATE]
        made = time.perf_counter() - t
        print(f"{args.handles} handles started in {made:.0f}s ({args.slow} slow, ~{args.wait:.0f}s each)")
        argv = b.finalize_argv(dst, 16, "--backend", "ibmbb", "--bbcmd", str(wrapper), "--jobid", JOBID)
        argv += ["--poll-interval", str(args.poll_interval)]
        run = b.timed(argv)
        calls = count.read_text().splitlines()
        left = sum(1 for d in dst.iterdir() for e in os.scandir(d) if "._AXL" in e.name)
        polls = sum(1 for c in calls if "BBNOTSTARTED" in c or "BBINPROGRESS" in c)
        print(f"finalize: exit {run.exit_code}, {run.seconds:.1f}s, {left} temporaries left")
        print(f"bbcmd calls: {len(calls)} in all, {polls} polls of the active list")
        kinds: dict[str, int] = {}
        for c in calls:
            word = next((w for w in c.split() if not w.startswith("-")), "?")
            kinds[word] = kinds.get(word, 0) + 1
        print("  by command: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        print(
            f"state-file design (one query per rank per poll, same polls): {args.handles * max(polls, 1)} calls "
            f"= {args.handles * max(polls, 1) / max(len(calls), 1):.0f}x more"
        )
        if run.exit_code != 0:
            print(run.stderr)


if __name__ == "__main__":
    main()
