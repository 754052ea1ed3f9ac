"""Typed storage errors. `retryable` says whether trying again later can help."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage door raises."""

    retryable = False


class StorageIOError(StorageError):
    """Reading or writing recordings failed (failing disk, permissions, ...)."""

    retryable = True


class StorageFullError(StorageIOError):
    """No space left (or free space below the configured reserve)."""

    retryable = True


class IndexWriteError(StorageIOError):
    """Writing the index failed (SQLite's `disk I/O error`, a locked file, ...). The files
    already on disk are safe; a segment whose row could not be written is held by the store
    and indexed at the next write that succeeds. Recorders pause and retry each second.

    The base of every index write failure: a subclass says why (full, damaged, ...)."""

    retryable = True


class IndexFullError(IndexWriteError, StorageFullError):
    """The index's filesystem is full (SQLite: `database or disk is full`)."""

    retryable = True


class IndexCorruptError(IndexWriteError):
    """The index database file is damaged (SQLite: `database disk image is malformed`, `file
    is not a database`). The message names the file and what to do: stop the recorder and
    run `nvr index rebuild`, which builds a new index from the segment files and keeps the
    damaged one aside. Nothing is deleted because of it; recorders pause (as for any index
    write failure) and say why in their state, and resume as soon as the index can be
    written again."""

    retryable = True

    def __init__(self, database: str, detail: str) -> None:
        self.database = database
        self.detail = detail
        super().__init__(
            f"the index {database} is damaged ({detail}); nothing was deleted. With the "
            "recorder stopped, run `nvr index rebuild -c <config>`: it builds a new index "
            "from the segment files and keeps the damaged one aside (README: 'A damaged index')"
        )


class PacketRejected(StorageError):
    """The muxer refused the stream's parameters or one of its packets (EINVAL, invalid
    data): what the camera sent is at fault, not the disk. Recorders treat it as a stream
    error (reconnect), never as a storage condition."""

    retryable = True


class ForeignIndexError(StorageError):
    """The index database does not belong to the recordings under the storage root."""


class RetentionViolation(StorageError):
    """Deleting this footage is forbidden: it is inside its retention window or locked (R4).

    Raised by the storage door itself, whoever asks; the refusal is already audited."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class LockError(StorageError):
    """A lock request is invalid (e.g. shortening an expiry, releasing a non-hold)."""


class ClockSuspicious(RetentionViolation):
    """Nothing is deleted: the server clock stepped against the evidence of time
    (`storage.clock`). An operator who checked the clock may confirm it; the refusal is
    audited."""

    def __init__(self, reason: str, advice: str) -> None:
        self.advice = advice
        super().__init__(reason)
