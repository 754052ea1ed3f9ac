"""Retention's typed errors. The refusal itself is raised by the storage door."""

from nvr.storage.errors import LockError, RetentionViolation

__all__ = ["LockError", "RetentionViolation"]
