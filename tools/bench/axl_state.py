"""Reading AXL state files in one process, against one `axl_cp -U` process per state file (AXL's way).

    python tools/bench/axl_state.py                          # 16,384 state files of 4 entries each
    python tools/bench/axl_state.py --files 1000 --per-file 30 --repeat 5
    python tools/bench/axl_state.py --dir /p/gpfs1/scratch   # on another file system
    python tools/bench/axl_state.py --finalize                # also settle every entry: a whole finalize

`make_state_tree(dir, n_files, per_file)` writes the state files (with `axlstateless.kvtree.dumps`,
keys in the order AXL writes them) and returns their paths; `temporaries=True` also creates every
entry's `._AXL` temporary, at its recorded size, for benchmarks that go on to settle them.

What is timed: `find_state_files` over the state directory (a search by magic: one open and 8-byte
read per file), `read_state_file` on every file (open, fstat, read, decode, build the records), and
`kvtree.loads` alone on the bytes already in memory. Each is run `--repeat` times and the fastest run is
reported (the machine may be shared). With ``--finalize``, the temporaries are made too and one
``finalize --axl-state`` (the library call, one process, one worker) reads every state file, walks the
roots, commits every entry and removes every state file; that run is timed once (it changes the tree).
The AXL figure is not measured here: running `axl_cp -U` needs an
AXL build (tests/data/axl/README.md says how to make one); pass `--axl-ms` with your own measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from axlstateless import FinalizeOptions, Reporter, finalize, kvtree
from axlstateless.axlstate import find_state_files, read_state_file
from axlstateless.report import Outcome

#: One `axl_cp -U` process per state file (process start, AXL_Init, the state file read, AXL_Wait's
#: checks and renames), about 2.5 ms each: the figure given when AXL support was specified, measured
#: with a real AXL v0.9.0 build on the development machine, not by this script.
AXL_CP_MS = 2.5
DEFAULT_FILES = 16_384
MTIME_NS = 1_700_000_000_123_456_789
ATIME_NS = 1_700_000_100_000_000_001


def _kv(value: bytes | int) -> kvtree.KVTree:
    return {value if isinstance(value, bytes) else str(value).encode(): {}}


def state_tree(state_file: bytes, dests: list[tuple[bytes, bytes, int]]) -> kvtree.KVTree:
    """An AXL state file as `axl_cp -a` with AXL_USE_EXTENSION=1 leaves it when killed in Wait at its
    first rename (fixture a2): STATE 2 (DISPATCHED), STATUS 3, every file copied. `dests` holds
    (source, temporary, size); keys in AXL's order (kvtree_set inserts at the head)."""
    uid, gid = os.geteuid(), os.getegid()
    files: kvtree.KVTree = {}
    for source, temp, size in reversed(dests):
        files[source] = {
            b"STATUS": _kv(3),
            b"MTIME_NSECS": _kv(MTIME_NS % 10**9),
            b"MTIME_SECS": _kv(MTIME_NS // 10**9),
            b"CTIME_NSECS": _kv(0),
            b"CTIME_SECS": _kv(MTIME_NS // 10**9),
            b"ATIME_NSECS": _kv(ATIME_NS % 10**9),
            b"ATIME_SECS": _kv(ATIME_NS // 10**9),
            b"SIZE": _kv(size),
            b"GID": _kv(gid),
            b"UID": _kv(uid),
            b"MODE": _kv(0o100644),
            b"DEST": _kv(temp),
        }
    return {
        b"STATUS": _kv(3),
        b"STATE": _kv(2),
        b"FILE": files,
        b"COPY_METADATA": _kv(1),
        b"USE_EXTENSION": _kv(1),
        b"MKDIR": _kv(1),
        b"FILE_BUF_SIZE": _kv(33554432),
        b"NAME": _kv(b"axl_cp"),
        b"TYPE": _kv(2),
        b"STATE_FILE": _kv(state_file),
    }


def make_state_tree(dir: Path, n_files: int, per_file: int, *, temporaries: bool = False) -> list[Path]:
    """Write `n_files` AXL state files of `per_file` entries each under ``dir/state`` (one per rank,
    64 ranks a directory) naming temporaries under ``dir/dst/rank.<r>/``; return their paths.

    With `temporaries`, also create each temporary (sparse, at its recorded size, mode 0600)."""
    dir = Path(dir).resolve()
    paths: list[Path] = []
    for rank in range(n_files):
        sdir = dir / "state" / f"group.{rank // 64}"
        ddir = dir / "dst" / f"rank.{rank}"
        if rank % 64 == 0:
            sdir.mkdir(parents=True, exist_ok=True)
        path = sdir / f"rank.{rank}.axl"
        dests = [
            (
                os.fsencode(dir / "src" / f"rank.{rank}" / f"ckpt.{j}"),
                os.fsencode(ddir / f"ckpt.{j}._AXL"),
                (rank * 7 + j * 4093) % 65536,
            )
            for j in range(per_file)
        ]
        path.write_bytes(kvtree.dumps(state_tree(os.fsencode(path), dests)))
        paths.append(path)
        if temporaries:
            ddir.mkdir(parents=True, exist_ok=True)
            for _, temp, size in dests:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    if size:
                        os.ftruncate(fd, size)
                finally:
                    os.close(fd)
    return paths


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, float]:
    """The fastest of `repeat` runs: (wall seconds, CPU seconds of this process, user + system)."""
    runs = []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t, time.process_time() - c))
    return min(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=DEFAULT_FILES, help="state files (one per rank)")
    parser.add_argument("--per-file", type=int, default=4, help="file entries in each state file")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the fastest is shown")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the scratch tree (default: $TMPDIR)")
    parser.add_argument("--axl-ms", type=float, default=AXL_CP_MS, help="ms per axl_cp -U process to compare with")
    parser.add_argument("--finalize", action="store_true", help="also time one whole finalize --axl-state")
    args = parser.parse_args()
    if args.finalize:
        return finalize_bench(args)

    with tempfile.TemporaryDirectory(prefix="axl-state-bench-", dir=args.dir) as scratch:
        t = time.perf_counter()
        paths = make_state_tree(Path(scratch), args.files, args.per_file)
        made = time.perf_counter() - t
        state_dir = Path(scratch) / "state"
        size = sum(p.stat().st_size for p in paths)
        each = size / len(paths)
        print(f"{len(paths)} state files of {args.per_file} entries ({each:.0f} bytes each) made in {made:.1f}s")
        blobs = [p.read_bytes() for p in paths]
        bpaths = [os.fsencode(p) for p in paths]

        found: list[bytes] = []

        def search() -> None:
            found[:] = find_state_files([state_dir])

        def read_all() -> None:
            for p in bpaths:
                read_state_file(p)

        def decode_all() -> None:
            for data in blobs:
                kvtree.loads(data)

        t_find = best_of(args.repeat, search)
        assert sorted(found) == sorted(bpaths), "find_state_files missed or added a state file"
        t_read = best_of(args.repeat, read_all)
        t_loads = best_of(args.repeat, decode_all)

    n = len(paths)
    axl_total = n * args.axl_ms / 1000
    for label, (wall, cpu) in [
        ("find_state_files", t_find),
        ("read_state_file", t_read),
        ("  of which kvtree.loads (bytes in memory)", t_loads),
    ]:
        print(f"{label:42} {wall:7.3f}s wall {wall / n * 1e6:7.1f} us/file | CPU {cpu / n * 1e6:7.1f} us/file")
    wall = t_find[0] + t_read[0]
    print(f"find + read in one process: {wall:.3f}s wall, {t_find[1] + t_read[1]:.3f}s CPU")
    origin = "measured elsewhere with AXL v0.9.0, not here" if args.axl_ms == AXL_CP_MS else "given by --axl-ms"
    print(
        f"one axl_cp -U per state file at {args.axl_ms} ms ({origin}): {axl_total:.1f}s; "
        f"ratio {axl_total / wall:.0f}x by wall time"
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    return 0


def finalize_bench(args: argparse.Namespace) -> int:
    """Time one whole `finalize --axl-state` over `args.files` state files and their temporaries."""
    with tempfile.TemporaryDirectory(prefix="axl-state-bench-", dir=args.dir) as scratch:
        base = Path(scratch)
        t = time.perf_counter()
        paths = make_state_tree(base, args.files, args.per_file, temporaries=True)
        made = time.perf_counter() - t
        n = len(paths) * args.per_file
        print(f"{len(paths)} state files, {n} temporaries made in {made:.1f}s")
        reporter = Reporter("finalize")
        t, c = time.perf_counter(), time.process_time()
        finalize([base / "dst"], reporter, FinalizeOptions(axl_state=[base / "state"], jobs=1))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        summary = reporter.finish()
        assert summary.counts[Outcome.COMMITTED] == n, summary.to_text()
        assert not any((base / "state").rglob("*.axl")), "a state file was not removed"
    axl_total = len(paths) * args.axl_ms / 1000
    print(
        f"finalize --axl-state, one process: {wall:.2f}s wall, {cpu:.2f}s CPU: "
        f"{wall / len(paths) * 1e3:.3f} ms per state file, {wall / n * 1e6:.1f} us per temporary"
    )
    ratio = axl_total / wall
    print(f"one axl_cp -U per state file at {args.axl_ms} ms: {axl_total:.1f}s; ratio {ratio:.1f}x by wall time")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
