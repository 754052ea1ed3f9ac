"""The site's time zone for the pages: `[site] timezone`, else the system's zone, as a
`tzinfo` for the server's own formatting and as an IANA name for the browser's
`Intl.DateTimeFormat` (page scripts show times in the site's zone, not the viewer's).
Pure functions plus one read of `/etc/localtime` per call; cheap, used on the event loop."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nvr.config.models import SiteConfig


def _valid(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def system_zone_name() -> str:
    """The IANA name of this machine's zone: `$TZ`, the target of `/etc/localtime`,
    `/etc/timezone`, else a fixed `Etc/GMT±N` for the current offset (whole hours) or UTC."""
    env = os.environ.get("TZ", "").lstrip(":")
    if env and _valid(env):
        return env
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            name = target.split("zoneinfo/", 1)[1]
            if _valid(name):
                return name
    except OSError:
        pass
    try:
        name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
        if name and _valid(name):
            return name
    except OSError:
        pass
    offset = datetime.now(UTC).astimezone().utcoffset() or timedelta(0)
    hours, rest = divmod(int(offset.total_seconds()), 3600)
    if rest == 0 and hours != 0:
        return f"Etc/GMT{-hours:+d}"  # POSIX sign: Etc/GMT-8 is UTC+8
    return "UTC"


@dataclass(frozen=True)
class SiteZone:
    name: str
    """IANA name, given to page scripts."""
    tz: tzinfo

    @classmethod
    def of(cls, site: SiteConfig) -> SiteZone:
        name = site.timezone or system_zone_name()
        return cls(name, ZoneInfo(name))

    def at(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(self.tz)

    def offset(self, ms: int) -> str:
        """`+08:00`"""
        text = self.at(ms).strftime("%z")
        return f"{text[:3]}:{text[3:]}"

    def local(self, ms: int | None, seconds: bool = True) -> str:
        """`2026-11-22 16:00:03 +08:00`; an empty string for None."""
        if ms is None:
            return ""
        dt = self.at(ms)
        text = dt.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
        return f"{text} {self.offset(ms)}"

    def today(self, now_ms: int) -> date:
        return self.at(now_ms).date()

    def day_bounds(self, day: date) -> tuple[int, int]:
        """[start, end) of a local calendar day in UTC ms (23 or 25 h across DST)."""
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        nxt = day + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.tz)
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
