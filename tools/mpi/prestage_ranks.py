"""Pre-stage from inside an MPI application, each rank its own files, before the burst-buffer copy: what
SCR or an application calls before ``bbcmd copy`` / ``BB_StartTransfer`` (docs/mpi.md).

    mpiexec -n 4 python tools/mpi/prestage_ranks.py BBDIR PFSDIR [--handle N] [--filelist PREFIX] [--copy]

Each rank writes a checkpoint file ``BBDIR/ckpt.RANK`` (as an application writes to node-local burst
buffer storage), then pre-stages its destination ``PFSDIR/step.0/ckpt.RANK`` with one collective call.
Every rank's pairs are checked before any rank creates anything, and a destination named by two ranks is
refused on every rank. Each rank gets back its (source, temporary) pairs: what it gives the burst
buffer (``BB_AddFiles`` per pair, or ``bbcmd copy --filelist`` with the lines written to
``PREFIX.RANK``). With ``--copy`` each rank plays the data mover itself (copies into its temporary),
so that ``axl-stateless finalize PFSDIR`` then commits everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from mpi4py import MPI

from axlstateless.mpi import connect
from axlstateless.prestage import StagePair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bbdir", type=Path)
    ap.add_argument("pfsdir", type=Path)
    ap.add_argument("--handle", type=int, help="the BB transfer handle (bbcmd gethandle), encoded in each name")
    ap.add_argument("--filelist", help="write this rank's bbcmd file list to PREFIX.RANK")
    ap.add_argument("--copy", action="store_true", help="copy the data into the temporaries (play the BB)")
    args = ap.parse_args()

    comm = MPI.COMM_WORLD  # the application's own communicator
    rank = comm.Get_rank()
    dist = connect(comm)

    # The application's checkpoint, on the burst buffer.
    args.bbdir.mkdir(parents=True, exist_ok=True)
    source = args.bbdir / f"ckpt.{rank}"
    source.write_bytes(os.urandom(1000 + rank))
    source.chmod(0o440)

    # One collective call: every rank its own pairs.
    pairs = [StagePair(bytes(source.resolve()), bytes((args.pfsdir / "step.0" / f"ckpt.{rank}").resolve()))]
    filelist = f"{args.filelist}.{rank}" if args.filelist else None
    result = dist.prestage(pairs, handle=args.handle, filelist=filelist)

    for staged in result.files:
        # Here an application calls BB_AddFiles(source, temporary) or runs bbcmd copy --filelist.
        print(f"rank {rank}: {os.fsdecode(staged.source)} -> {os.fsdecode(staged.temporary)}", flush=True)
        if args.copy:
            with open(staged.source, "rb") as src, open(staged.temporary, "r+b") as dst:
                shutil.copyfileobj(src, dst)
    comm.Barrier()


if __name__ == "__main__":
    main()
