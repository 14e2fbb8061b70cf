"""The demo: a whole job rehearsed against the simulated IBM burst buffer, checked end to end.

A job of N ranks writes the common checkpoint pattern to "node-local" storage (``timestep.0.root`` by
rank 0, ``timestep.0/data.<rank>`` by every rank; some read-only, some empty), pre-stages it with one BB
handle per rank, starts the simulated copies with a few injected failures, "ends the job", and runs the
post-stage finalize through ``bbcmd``'s command line (the simulator's), exactly as on the machine. Then
every final file is compared with its source.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .backends.ibmbb import IbmBBBackend
from .bbsim import FileEntry, Spool, start_copy
from .errors import UsageError
from .finalize import FinalizeOptions, finalize
from .prestage import StagePair, prestage
from .report import Outcome, Record, Reporter


@dataclass
class DemoResult:
    workdir: Path
    ranks: int
    files: int = 0
    failed_handles: list[int] = field(default_factory=list)
    committed: int = 0
    aborted: int = 0
    left: int = 0
    verified: int = 0  # final files identical to their source in content, mode and mtime
    mismatches: list[str] = field(default_factory=list)
    expected_committed: int = 0
    directories: int = 1  # timestep.0, which pre-stage created and finalize gives its source's mode
    expected_aborted: int = 0
    elapsed: float = 0.0
    finalize_elapsed: float = 0.0
    exit_code: int = 0

    @property
    def as_expected(self) -> bool:
        return (
            not self.mismatches
            and self.left == 0
            and (self.committed, self.aborted) == (self.expected_committed, self.expected_aborted)
            and self.verified == self.expected_committed - self.directories
        )


def run_demo(
    *,
    ranks: int = 64,
    seed: int = 1,
    failures: int = 3,
    workdir: str | os.PathLike[str] | None = None,
    rate: float = 80e3,
    log: Callable[[str], None] = lambda _m: None,
) -> DemoResult:
    """Play a job of `ranks` ranks through pre-stage, simulated BB copies and post-stage finalize.

    `rate` (bytes per second, per copy) is slow on purpose: a rank's data (up to 256 KiB) takes a few
    seconds to move, so the copies still run when the job ends and the finalize shows its waiting.
    """
    started = time.monotonic()
    rng = random.Random(seed)  # noqa: S311 - a repeatable demo, not cryptography
    # Absolute: the simulated BB's movers run from /, and the file lists they get name these paths.
    work = Path(workdir).absolute() if workdir is not None else Path(tempfile.mkdtemp(prefix="axl-demo-"))
    if workdir is not None:
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            # An earlier demo's spool already started these very transfers (the same seed, the same
            # handles), and its read-only checkpoint cannot be overwritten.
            raise UsageError(str(work), "is not empty (an earlier demo's directory?): give a new or empty --dir")
    bb, pfs, spool_dir = work / "bb", work / "pfs", work / "spool"
    for d in (bb, pfs):
        d.mkdir(parents=True, exist_ok=True)
    result = DemoResult(work, ranks)
    jobid = str(rng.randrange(100000, 999999))
    spool = Spool(spool_dir)
    spool.ensure()
    spool.update_config(rate=rate)

    log(f"job {jobid}: {ranks} ranks write a checkpoint to {bb}")
    sources = _write_checkpoint(bb, ranks, rng)
    result.files = sum(len(files) for files in sources.values())

    handles = {rank: spool.get_handle(jobid, 0, rank, [rank]) for rank in range(ranks)}
    failed_ranks = sorted(rng.sample(range(ranks), min(failures, ranks)))
    result.failed_handles = [handles[r] for r in failed_ranks]
    # A failed transfer stops part-way: the file it was writing stays truncated, the rest empty.
    spool.update_injections(fail=dict.fromkeys(result.failed_handles))

    log(f"pre-stage to {pfs} with one handle per rank, then start the copies ({len(failed_ranks)} will fail)")
    for rank, files in sources.items():
        pairs = [StagePair(bytes(src), bytes(pfs / src.relative_to(bb))) for src in files]
        staged = prestage(pairs, handle=handles[rank])
        entries = [FileEntry(os.fsdecode(f.source), os.fsdecode(f.temporary), 0) for f in staged.files]
        start_copy(spool, jobid, 0, rank, handles[rank], entries)

    log("the job ends; the post-stage finalize waits on the BB through bbcmd (the simulator's)")
    bbcmd = _bbcmd_wrapper(work, spool_dir)
    backend = IbmBBBackend(bbcmd=str(bbcmd), jobid=jobid, poll_interval=0.2, max_poll_interval=1.0, report_interval=1.0)
    reporter = Reporter("finalize", report_streams=[(work / "finalize-report.jsonl").open("w", encoding="utf-8")])
    f_started = time.monotonic()
    finalize([pfs], reporter, FinalizeOptions(backend=backend, jobs=8, wait_timeout=120.0), progress=log)
    summary = reporter.finish()
    result.finalize_elapsed = time.monotonic() - f_started
    result.exit_code = summary.exit_code
    result.committed = summary.counts[Outcome.COMMITTED]
    result.aborted = summary.counts[Outcome.ABORTED]
    result.left = summary.counts[Outcome.LEFT]

    failed = set(failed_ranks)
    result.expected_aborted = sum(len(sources[r]) for r in failed)
    result.expected_committed = result.files - result.expected_aborted + result.directories
    _verify(result, sources, bb, pfs, failed)
    result.elapsed = time.monotonic() - started
    return result


def _write_checkpoint(bb: Path, ranks: int, rng: random.Random) -> dict[int, list[Path]]:
    step = bb / "timestep.0"
    step.mkdir(exist_ok=True)
    sources: dict[int, list[Path]] = {}
    root = bb / "timestep.0.root"
    root.write_bytes(b"timestep 0 of a %d-rank job\n" % ranks)
    os.chmod(root, 0o444)
    for rank in range(ranks):
        data = step / f"data.{rank}"
        size = 0 if rank % 16 == 5 else rng.randrange(1, 256 * 1024)
        data.write_bytes(rng.randbytes(size))
        os.chmod(data, 0o444 if rank % 4 == 1 else 0o640)
        sources[rank] = [data]
    sources[0].insert(0, root)
    os.chmod(step, 0o555)  # noqa: S103 - read-only source dir: its copy must still be writable
    return sources


def _bbcmd_wrapper(work: Path, spool_dir: Path) -> Path:
    """A ``bbcmd`` for the backend: the simulator through this very interpreter, so the demo works from
    any install, with or without the console scripts on PATH."""
    script = work / "bbcmd"
    command = shlex.join([sys.executable, "-m", "axlstateless.bbsim", "--spool", str(spool_dir)])
    script.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    script.chmod(0o755)
    return script


def _verify(result: DemoResult, sources: dict[int, list[Path]], bb: Path, pfs: Path, failed: set[int]) -> None:
    for rank, files in sources.items():
        for src in files:
            final = pfs / src.relative_to(bb)
            if rank in failed:
                if final.exists():
                    result.mismatches.append(f"{final}: exists although its transfer failed")
                continue
            try:
                a, b = src.stat(), final.stat()
            except FileNotFoundError:
                result.mismatches.append(f"{final}: missing")
                continue
            if src.read_bytes() != final.read_bytes():
                result.mismatches.append(f"{final}: content differs")
            elif stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode) or a.st_mtime_ns != b.st_mtime_ns:
                result.mismatches.append(f"{final}: mode or mtime differs")
            else:
                result.verified += 1
    step_src, step_dst = bb / "timestep.0", pfs / "timestep.0"
    if step_dst.exists() and stat.S_IMODE(step_dst.stat().st_mode) != stat.S_IMODE(step_src.stat().st_mode):
        result.mismatches.append(f"{step_dst}: directory mode differs")
    leftovers = [p for p in pfs.rglob("*") if "._AXL" in p.name]
    result.mismatches.extend(f"{p}: temporary left behind" for p in leftovers)


def remove_workdir(path: Path) -> None:
    """Remove a demo directory, read-only directories included."""
    for p in path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["DemoResult", "Record", "remove_workdir", "run_demo"]
