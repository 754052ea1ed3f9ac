"""The rule the storage door enforces on every delete, whoever asks (R2, R3, R4): footage
younger than its camera's retention window, or overlapping an active lock, is never deleted.
Pure functions and value types; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from nvr.storage.timestamps import DAY_MS, iso

LOCK_YEARS = 2
"""Default lock duration (R3: important footage is kept at least two years)."""
MAX_LOCK_YEARS = 10
"""Default longest expiry a lock may be given (a legal hold has none and is released by an
admin): a lock cannot be made to keep footage for ever by mistake or malice."""
LOCK_FUTURE_MARGIN_MS = 10 * 60_000
"""A lock covers footage that exists: its end may be at most this far past now."""


def add_years(ms: int, years: int) -> int:
    """`ms` plus whole calendar years in UTC (29 February becomes 28 February)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    try:
        later = dt.replace(year=dt.year + years)
    except ValueError:
        later = dt.replace(year=dt.year + years, day=28)
    return int(later.timestamp() * 1000)


@dataclass(frozen=True)
class Lock:
    """Important footage: `camera` over [start_ms, end_ms) kept until `expires_ms`
    (None: a legal hold, kept until released)."""

    id: int
    camera: str
    start_ms: int
    end_ms: int
    created_ms: int
    created_by: str
    reason: str
    case_id: str | None
    expires_ms: int | None
    released_ms: int | None = None
    released_by: str | None = None
    release_reason: str | None = None
    end_requested_by: str | None = None
    """An admin asked to end the lock early; a second admin approves (or nothing happens)."""
    end_requested_ms: int | None = None
    end_request_reason: str | None = None

    @property
    def hold(self) -> bool:
        return self.expires_ms is None

    def active(self, now_ms: int) -> bool:
        if self.released_ms is not None:
            return False
        return self.expires_ms is None or self.expires_ms > now_ms

    def covers(self, camera: str, start_ms: int, end_ms: int) -> bool:
        return self.camera == camera and self.start_ms < end_ms and self.end_ms > start_ms

    def describe(self) -> str:
        until = "legal hold" if self.expires_ms is None else f"until {iso(self.expires_ms)}"
        case = f", case {self.case_id}" if self.case_id else ""
        return f"lock {self.id} ({self.reason}{case}, {until})"


def protection(
    camera: str,
    start_ms: int,
    end_ms: int,
    *,
    now_ms: int,
    window_days: int,
    locks: list[Lock],
) -> str | None:
    """Why footage of `camera` over [start_ms, end_ms) may not be deleted at `now_ms`,
    or None if it may. Age counts from the footage's end: a segment that reaches into the
    window is inside it."""
    window_start = now_ms - window_days * DAY_MS
    if end_ms > window_start:
        return (
            f"inside the {window_days}-day retention window "
            f"(footage ends {iso(end_ms)}, deletable from {iso(end_ms + window_days * DAY_MS)})"
        )
    for lock in locks:
        if lock.active(now_ms) and lock.covers(camera, start_ms, end_ms):
            return f"locked as evidence by {lock.describe()}"
    return None
