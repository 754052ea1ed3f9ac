"""What a recorder reports about itself: `RecorderStatus`, the snapshot the supervisor, the
daemon's status file, `nvr status` and the API's camera list read. A plain value: made on the
recorder thread, read on any; and `PictureStatus`, a camera's picture health as the
`picture-check` thread (`ingest.picture.monitor`) reports it. Imports nothing (the API takes
them from here, never from the PyAV-side `ingest.recorder` or `ingest.picture`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecorderStatus:
    camera: str
    state: str
    """starting | connecting | recording | reconnecting | stalled | storage-full |
    storage-error | index-damaged (the index file is corrupt: the detail says what to do) |
    config-error (cannot start as configured, e.g. its secret is missing) |
    stopped | abandoned (replaced by the supervisor)"""
    since_ms: int
    detail: str
    last_segment_end_ms: int | None
    segments_written: int
    bytes_written: int
    reconnects: int
    last_progress: float
    """Monotonic time of the last packet or deliberate wait (for the watchdog)."""
    in_backoff: bool
    room_checks: int = 0
    """Checks for room made while paused for storage (one each `STORAGE_RETRY_SECONDS`):
    recording resumes at the first check that finds room, so a count that grew by at most
    one after room returned shows the resume came within one retry interval."""


@dataclass(frozen=True)
class PictureStatus:
    """A camera's picture health (issue 18): made on the `picture-check` thread, read on any."""

    camera: str
    state: str
    """ok | learning | covered | defocused | repointed | frozen | no-signal"""
    since_ms: int
    """When the state began (a raised condition: when it was first seen)."""
    score: float | None
    """The measure that raised the condition (see `ingest.picture.detector.PictureChange`)."""
    detail: str
    checks: int
    """Keyframes checked since the daemon started."""
    cpu_seconds: float
    """CPU time spent decoding and judging them."""
    snapshot: str | None = None
    """The raised condition's keyframe JPEG, relative to the storage root."""
