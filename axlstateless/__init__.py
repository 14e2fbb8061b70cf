"""axlstateless: finish burst-buffer file transfers without a state file.

Pre-stage names each destination temporary after what its commit needs (docs/format.md); finalize walks
the destination roots, waits on the burst buffer, and commits or aborts every temporary; cleanup sweeps
orphans. The command line (`axl-stateless`) is a thin layer over these functions.
"""

from __future__ import annotations

import importlib
import sys
import types
import typing as _typing

__version__ = "0.1.0"

# The public API is imported on first use (PEP 562), not with the package: `axl-stateless finalize` on a
# small tree or a parallel file system pays for its start-up, and a plain finalize needs neither the AXL
# state-file reader, pre-stage, cleanup, status nor the MPI walk (docs/performance.md).
_LAZY: dict[str, str] = {
    "AxlError": ".errors",
    "AxlFile": ".axlstate",
    "AxlTransfer": ".axlstate",
    "BACKENDS": ".backends",
    "Backend": ".backends",
    "BackendError": ".errors",
    "BackendSetupError": ".errors",
    "CleanupOptions": ".cleanup",
    "DirMarker": ".nameformat",
    "FinalizeOptions": ".finalize",
    "Interrupted": ".errors",
    "KVTreeError": ".errors",
    "Kind": ".report",
    "LegacyName": ".nameformat",
    "Meter": ".report",
    "NameFormatError": ".errors",
    "NoneBackend": ".backends",
    "NotAxlStateError": ".errors",
    "Outcome": ".report",
    "PrestageError": ".errors",
    "PrestageResult": ".prestage",
    "Record": ".report",
    "Reporter": ".report",
    "SourceError": ".errors",
    "StagePair": ".prestage",
    "StagedFile": ".prestage",
    "StateFileError": ".errors",
    "Summary": ".report",
    "TempName": ".nameformat",
    "TransferState": ".backends",
    "TransferStatus": ".backends",
    "Unrecognised": ".nameformat",
    "UsageError": ".errors",
    "WalkError": ".errors",
    "cleanup": ".cleanup",
    "create_backend": ".backends",
    "expand_sources": ".prestage",
    "finalize": ".finalize",
    "find_state_files": ".axlstate",
    "parse": ".nameformat",
    "parse_duration": ".orphan",
    "prestage": ".prestage",
    "read_pair_list": ".prestage",
    "read_state_file": ".axlstate",
    "split_axl_name": ".axlstate",
    "status": ".status",
}

if _typing.TYPE_CHECKING:
    from .axlstate import AxlFile, AxlTransfer, find_state_files, read_state_file, split_axl_name
    from .backends import BACKENDS, Backend, NoneBackend, TransferState, TransferStatus, create_backend
    from .cleanup import CleanupOptions, cleanup
    from .errors import (
        AxlError,
        BackendError,
        BackendSetupError,
        Interrupted,
        KVTreeError,
        NameFormatError,
        NotAxlStateError,
        PrestageError,
        SourceError,
        StateFileError,
        UsageError,
        WalkError,
    )
    from .finalize import FinalizeOptions, finalize
    from .nameformat import DirMarker, LegacyName, TempName, Unrecognised, parse
    from .orphan import parse_duration
    from .prestage import PrestageResult, StagedFile, StagePair, expand_sources, prestage, read_pair_list
    from .report import Kind, Meter, Outcome, Record, Reporter, Summary
    from .status import status


#: Functions named like the module that defines them.
_SAME_NAME = frozenset({"cleanup", "finalize", "prestage", "status"})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: _typing.Any) -> None:
        # Importing submodule `finalize` sets the package's attribute `finalize` to that module; the
        # public API is its function (as when the package imported it eagerly).
        if name in _SAME_NAME and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> _typing.Any:
    if (module := _LAZY.get(name)) is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BACKENDS",
    "AxlError",
    "AxlFile",
    "AxlTransfer",
    "Backend",
    "BackendError",
    "BackendSetupError",
    "CleanupOptions",
    "DirMarker",
    "FinalizeOptions",
    "Interrupted",
    "KVTreeError",
    "Kind",
    "LegacyName",
    "Meter",
    "NameFormatError",
    "NoneBackend",
    "NotAxlStateError",
    "Outcome",
    "PrestageError",
    "PrestageResult",
    "Record",
    "Reporter",
    "SourceError",
    "StagePair",
    "StagedFile",
    "StateFileError",
    "Summary",
    "TempName",
    "TransferState",
    "TransferStatus",
    "Unrecognised",
    "UsageError",
    "WalkError",
    "__version__",
    "cleanup",
    "create_backend",
    "expand_sources",
    "finalize",
    "find_state_files",
    "parse",
    "parse_duration",
    "prestage",
    "read_pair_list",
    "read_state_file",
    "split_axl_name",
    "status",
]
