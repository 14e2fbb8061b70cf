"""The floor's calls from Python: what the interpreter alone costs (no parsing, checks or reports).

python tools/bench/pyfloor.py ROOT
"""

from __future__ import annotations

import os
import sys

FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(dfd: int) -> None:
    with os.scandir(dfd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            sub = os.open(name, DIR_FLAGS, dir_fd=dfd)
            walk(sub)
            os.close(sub)
            continue
        at = name.rfind("._AXL")
        if at < 0:
            continue
        suffix = name[at:]
        mode = int(suffix[suffix.index(".m") + 2 :][:4], 8)
        mtime = int(suffix[suffix.index(".t") + 2 :].split(".")[0])
        fd = os.open(name, FLAGS, dir_fd=dfd)
        st = os.fstat(fd)
        os.fchmod(fd, mode)
        os.utime(fd, ns=(st.st_atime_ns, mtime))
        os.rename(name, name[:at], src_dir_fd=dfd, dst_dir_fd=dfd)
        os.close(fd)


if __name__ == "__main__":
    root = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    walk(root)
    os.close(root)
