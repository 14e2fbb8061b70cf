"""The verdict, shared by every backend: what the transfer state and the size say to do."""

from __future__ import annotations

import enum

from .backends.base import TransferState, TransferStatus


class Action(enum.Enum):
    COMMIT = "commit"
    ABORT = "abort"
    WAIT = "wait"


def decide(transfer: TransferStatus, *, expected_size: int, actual_size: int) -> tuple[Action, str]:
    """Commit only what verifies; a failed transfer is aborted whatever its size says.

    The reason is chosen by the transfer's state alone, never by the wording of the backend's detail:
    a transfer whose state the backend could not learn (UNKNOWN) is committed on its size with that
    noted; with a backend that tracks no transfers (OVER) the size is all there is to say."""
    if transfer.state is TransferState.IN_PROGRESS:
        return Action.WAIT, f"transfer in progress ({transfer.detail})"
    if transfer.state is TransferState.FAILED:
        return Action.ABORT, f"transfer failed ({transfer.detail})"
    if actual_size != expected_size:
        return Action.ABORT, f"incomplete: size {actual_size}, expected {expected_size}"
    if transfer.state is TransferState.UNKNOWN:
        return Action.COMMIT, f"verified by size alone ({transfer.detail or 'no status for its transfer'})"
    return Action.COMMIT, ""
