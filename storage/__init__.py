"""Storage: the recorded footage and the index database beside it.

Owns the segment files under the storage root and every table of the index. Footage has one
door, `SegmentStore` (`storage.store`): the invariants that span files and index (create
order, delete order, hash chain, retention windows, lock and clock checks) live there and
only there. The rest of the index is kept by repositories over one shared `Index`
(`storage.repository`: engine, serialised write transaction, clock, audit hook), each owning
its own tables, reached as attributes of the store: `accounts` (`storage.accounts`),
`exports` (`storage.exports`), `locks` (`storage.locks`), `audit` (`storage.audit`),
`ledger` and `events` (`storage.ledger`), `capacity` (`storage.capacity`), `samples`
(`storage.samples`). Each record is one frozen dataclass, defined beside its repository
(`Lock` beside the delete rule, in `storage.guard`); `api.models` builds responses from them.
What the bytes of a file mean (MP4 boxes, sample indexes, virtual files, the export package)
is `storage.media`'s, which knows nothing of the index.

Imports go one way: `api`, `nvr`, `ingest`, `retention`, `bench` and `tests` import
`storage`; `storage` imports none of them, and of `config` only the camera-name rule
(`config.models`); its settings come in as arguments. Inside, `store` imports the
repositories; repositories import `repository`, `schema`, `errors`, `guard` and
`timestamps`, never `store`.

Threads: blocking, thread-safe calls; recorder threads write segments and the ledger, the
event loop calls through `asyncio.to_thread` (see each module).
"""

from nvr.storage.audit import AuditEntry
from nvr.storage.errors import (
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
from nvr.storage.guard import Lock, protection
from nvr.storage.ledger import Outage, StreamEvent
from nvr.storage.store import (
    CameraStats,
    CameraStorage,
    ConsistencyReport,
    Segment,
    SegmentInfo,
    SegmentRef,
    SegmentRefs,
    SegmentStore,
    chain_value,
    probe_segment,
)
from nvr.storage.timestamps import now_ms
from nvr.storage.verify import VerifyReport
from nvr.storage.writer import SegmentWriter, container_format

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
    "SegmentRef",
    "SegmentRefs",
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
