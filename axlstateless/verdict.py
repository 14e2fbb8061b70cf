"""The verdict, shared by every backend: what the transfer state and the size say to do."""

from __future__ import annotations

import enum

from .backends.base import TransferState, TransferStatus


class Action(enum.Enum):
    COMMIT = "commit"
    ABORT = "abort"
    WAIT = "wait"


def decide(transfer: TransferStatus, *, expected_size: int, actual_size: int) -> tuple[Action, str]:
    """Commit only what verifies; a failed transfer is aborted whatever its size says."""
    if transfer.state is TransferState.IN_PROGRESS:
        return Action.WAIT, f"transfer in progress ({transfer.detail})"
    if transfer.state is TransferState.FAILED:
        return Action.ABORT, f"transfer failed ({transfer.detail})"
    if actual_size != expected_size:
        return Action.ABORT, f"incomplete: size {actual_size}, expected {expected_size}"
    if transfer.state is TransferState.UNKNOWN and transfer.detail and not transfer.detail.startswith("no transfer"):
        return Action.COMMIT, f"verified by size alone ({transfer.detail})"
    return Action.COMMIT, ""
