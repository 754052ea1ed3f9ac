"""Times as the index keeps them: integer milliseconds since the Unix epoch, UTC. The one
definition of the day in ms, of "now" in ms, and of the ISO 8601 text every log line, API
answer and CLI line writes such a time as. Pure; any thread. Imports nothing of the project.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

DAY_MS = 86_400_000


def now_ms() -> int:
    """The wall clock in ms since the epoch."""
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    """UTC ms as RFC 3339 with milliseconds (`2026-12-02T03:04:05.678Z`)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
