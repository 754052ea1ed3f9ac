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
