"""Transfer-status backends, chosen by name from `BACKENDS`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from axlstateless.errors import UsageError

from .base import Backend, Progress, TransferState, TransferStatus
from .ibmbb import IbmBBBackend
from .none import NoneBackend

BACKENDS: dict[str, type[Backend]] = {NoneBackend.name: NoneBackend, IbmBBBackend.name: IbmBBBackend}


def create_backend(name: str, options: Mapping[str, Any] | None = None) -> Backend:
    """Instantiate backend `name` with those of `options` its constructor takes (others are ignored,
    so one set of command-line options serves every backend). Raises `UsageError` for an unknown name."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise UsageError(None, f"unknown backend {name!r} (known: {', '.join(sorted(BACKENDS))})") from None
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in (options or {}).items() if k in accepted and v is not None})


__all__ = [
    "BACKENDS",
    "Backend",
    "IbmBBBackend",
    "NoneBackend",
    "Progress",
    "TransferState",
    "TransferStatus",
    "create_backend",
]
