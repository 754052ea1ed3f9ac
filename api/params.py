"""Parsing and checking request parameters: times, ranges and camera names. Pure functions,
called on the event loop; every failure is a `BadRequest` (400) or `NotFound` (404), never 500."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from nvr.api.errors import BadRequest

MIN_MS = 946_684_800_000
"""2000-01-01T00:00:00Z: no footage is older."""
MAX_MS = 4_102_444_800_000
"""2100-01-01T00:00:00Z."""
TIME_HELP = "UTC milliseconds since 1970 or RFC 3339 with a zone, e.g. 2026-11-22T08:15:00Z"


def parse_time(value: str | int, name: str) -> int:
    """`value` (epoch ms or RFC 3339 with a time zone) as UTC ms."""
    text = str(value).strip()
    if re.fullmatch(r"-?\d{1,16}", text):
        ms = int(text)
    else:
        if len(text) > 64:
            raise BadRequest(f"{name}: expected {TIME_HELP}")
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise BadRequest(f"{name}: expected {TIME_HELP}") from None
        if dt.tzinfo is None:
            raise BadRequest(f"{name}: the time needs a zone (Z or +hh:mm)")
        if not 1999 <= dt.year <= 2100:  # also keeps the zone shift below from overflowing
            raise BadRequest(f"{name}: outside 2000..2100")
        ms = int(dt.astimezone(UTC).timestamp() * 1000)
    if not MIN_MS <= ms <= MAX_MS:
        raise BadRequest(f"{name}: outside 2000..2100")
    return ms


@dataclass(frozen=True)
class TimeRange:
    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


def parse_range(start: str | int, end: str | int, max_hours: float) -> TimeRange:
    """[start, end) with start < end and at most `max_hours` long."""
    s = parse_time(start, "start")
    e = parse_time(end, "end")
    if e <= s:
        raise BadRequest("end must be after start")
    if e - s > max_hours * 3_600_000:
        raise BadRequest(f"the range may be at most {max_hours:g} hours long")
    return TimeRange(s, e)


