"""How the CLI prints times, sizes and counts for people: times in local time with the UTC
offset (`2026-12-02T11:05:03.120+08:00`), or in UTC (`...Z`) after `nvr --utc`; sizes in
decimal units; counts with the right plural. Main thread of a CLI command only (`use_utc` is
set once, by `nvr.cli.main`, before the command runs)."""

from __future__ import annotations

from datetime import UTC, datetime

from nvr.storage.timestamps import iso

_utc = False


def use_utc(on: bool) -> None:
    """Print times in UTC (`nvr --utc`) instead of local time."""
    global _utc
    _utc = on


def when(ms: int | None) -> str:
    """A time (Unix ms) as ISO 8601 with milliseconds and its offset; `-` for none."""
    if ms is None:
        return "-"
    if _utc:
        return iso(ms)
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone()
    return moment.isoformat(timespec="milliseconds")


def count(n: int, word: str, plural: str | None = None) -> str:
    """`1 segment`, `2 segments`, `0 segments` (`plural` for irregular words)."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def size(n: int) -> str:
    """Bytes in decimal units: `0 B`, `999 B`, `1.2 kB`, `3.40 GB`."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")
