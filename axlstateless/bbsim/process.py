"""Is a mover still running? Told from /proc, by pid and start time, so a recycled pid is not taken
for the mover that had it."""

from __future__ import annotations


def process_alive(pid: int, start: int | None) -> bool:
    """True if `pid` runs and is the process that started at `start` (clock ticks since boot).

    A zombie counts as dead: where PID 1 does not reap orphans, a finished mover stays a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return False
    if not fields or fields[0] in ("Z", "X", "x"):
        return False
    return start is None or (len(fields) > 19 and fields[19] == str(start))


def process_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None
