"""Storage: segment files and their index, behind one door (`SegmentStore`).

See `storage.store` for the create and delete orders and the threads that call in.
"""

from storage.audit import AuditEntry
from storage.errors import (
    ClockSuspicious,
    ForeignIndexError,
    IndexCorruptError,
    IndexFullError,
    IndexWriteError,
    LockError,
    PacketRejected,
    RetentionViolation,
    StorageError,
    StorageFullError,
    StorageIOError,
)
from storage.guard import Lock, protection
from storage.ledger import Outage, StreamEvent
from storage.store import (
    CameraStats,
    CameraStorage,
    ConsistencyReport,
    Segment,
    SegmentInfo,
    SegmentStore,
    chain_value,
    probe_segment,
)
from storage.timestamps import now_ms
from storage.verify import VerifyReport
from storage.writer import SegmentWriter, container_format

__all__ = [
    "AuditEntry",
    "CameraStats",
    "CameraStorage",
    "ClockSuspicious",
    "ConsistencyReport",
    "ForeignIndexError",
    "IndexCorruptError",
    "IndexFullError",
    "IndexWriteError",
    "Lock",
    "LockError",
    "Outage",
    "PacketRejected",
    "RetentionViolation",
    "Segment",
    "SegmentInfo",
    "SegmentStore",
    "SegmentWriter",
    "StorageError",
    "StorageFullError",
    "StorageIOError",
    "StreamEvent",
    "VerifyReport",
    "chain_value",
    "container_format",
    "now_ms",
    "probe_segment",
    "protection",
]
