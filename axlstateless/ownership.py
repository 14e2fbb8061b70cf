"""Who may be given what: the rules that keep a root finalizer from lending its privileges to a user.

Root acts on temporaries in trees users can write, and everything in a temporary (its name, its
extended attributes) is chosen by whoever wrote it. So, as root:

- a temporary's uid is never changed (ownership is never given away); a temporary pre-staged for
  another user than its owner (``user.axl.meta`` says so) is refused as foreign-owned;
- its group is changed only to a group its owner belongs to (what the owner could do with chgrp);
- set-uid is never applied to a root-owned file, and set-gid only where the owner belongs to the group
  and neither owner nor group is root: the bits a user could set on their own file, nothing more.

As a non-root user the kernel already enforces all of this; a temporary owned by someone else is
refused up front so that it is reported rather than half-processed.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import stat


@functools.lru_cache(maxsize=4096)
def member_of(uid: int, gid: int) -> bool:
    """True when user `uid` has `gid` as primary or supplementary group (unknown users have none)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return False
    if pw.pw_gid == gid:
        return True
    try:
        return gid in os.getgrouplist(pw.pw_name, pw.pw_gid)
    except OSError:
        try:
            return pw.pw_name in grp.getgrgid(gid).gr_mem
        except KeyError:
            return False


def safe_mode(mode: int, uid: int, gid: int, *, as_root: bool, directory: bool = False) -> int:
    """The bits of `mode` root may apply to a file owned by uid:gid (non-root: `mode` unchanged)."""
    if not as_root:
        return mode
    if directory:
        # Set-uid means nothing on a Linux directory. Set-gid makes everything created below inherit the
        # group: root's own directories keep it (root made the marker), a user's only for a group the user
        # is in, as chmod would allow; otherwise a user could have new files land in group root (the
        # inheritance behind CVE-2018-13405).
        mode &= ~stat.S_ISUID
        if uid != 0 and (gid == 0 or not member_of(uid, gid)):
            mode &= ~stat.S_ISGID
        return mode
    if uid == 0:
        mode &= ~stat.S_ISUID
    if uid == 0 or gid == 0 or not member_of(uid, gid):
        mode &= ~stat.S_ISGID
    return mode


def refusal(st: os.stat_result, expected_uid: int | None, expected_gid: int | None, euid: int) -> str | None:
    """Why a temporary with this stat must not be acted on by `euid`, or None when it may."""
    if euid != 0:
        if st.st_uid != euid:
            return f"owned by uid {st.st_uid}, not by this user (uid {euid}); only its owner or root can finalize it"
        return None
    if expected_uid is not None and expected_uid != st.st_uid:
        return f"foreign-owned: owned by uid {st.st_uid} but pre-staged or recorded for uid {expected_uid}"
    if (
        expected_gid is not None
        and expected_gid != st.st_gid
        and st.st_uid != 0
        and not member_of(st.st_uid, expected_gid)
    ):
        return f"foreign group: gid {expected_gid} is not a group of the owner (uid {st.st_uid})"
    return None
