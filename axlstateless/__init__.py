"""axlstateless: finish burst-buffer file transfers without a state file.

Pre-stage names each destination temporary after what its commit needs (docs/format.md); finalize walks
the destination roots, waits on the burst buffer, and commits or aborts every temporary; cleanup sweeps
orphans. The command line (`axl-stateless`) is a thin layer over these functions.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
