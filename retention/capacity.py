"""Capacity forecast (R2): from the real bytes per camera over the last 24 h and the free
space, how many days the store can hold. Pure arithmetic on measured numbers."""

from __future__ import annotations

from dataclasses import dataclass

from nvr.storage.timestamps import DAY_MS

WARNING_MARGIN_DAYS = 7
MIN_SAMPLE_MS = 10 * 60 * 1000
"""Below ten minutes of recorded media the rate is not trusted: the state is `unknown`."""


@dataclass(frozen=True)
class Forecast:
    state: str
    """ok | warning | critical | unknown"""
    forecast_days: float
    """Days of footage the store can hold at the current rate (inf if nothing records)."""
    window_days: int
    daily_bytes: float
    free_bytes: int
    locked_bytes: int
    detail: str


def forecast(
    *,
    recorded_bytes_24h: int,
    recorded_media_ms_24h: int,
    cameras_recording: int,
    free_bytes: int,
    reserve_bytes: int,
    stored_bytes: int,
    locked_bytes: int,
    window_days: int,
) -> Forecast:
    """Days the store can hold = (usable free space + footage that will be recycled) / daily
    bytes. Locked footage is not recycled, so it does not count as reusable space."""
    usable = max(0, free_bytes - reserve_bytes) + max(0, stored_bytes - locked_bytes)
    if recorded_media_ms_24h < MIN_SAMPLE_MS or cameras_recording == 0:
        return Forecast(
            "unknown",
            float("inf"),
            window_days,
            0.0,
            free_bytes,
            locked_bytes,
            "not enough recorded footage yet to measure the rate",
        )
    # Media time summed over cameras; per-camera rate x cameras gives the site's daily bytes.
    per_camera_ms = recorded_media_ms_24h / cameras_recording
    daily = recorded_bytes_24h / per_camera_ms * DAY_MS
    days = usable / daily if daily > 0 else float("inf")
    if days < window_days:
        state = "critical"
    elif days < window_days + WARNING_MARGIN_DAYS:
        state = "warning"
    else:
        state = "ok"
    detail = (
        f"{days:.1f} days at {daily / 1e9:.2f} GB/day; window {window_days} days; "
        f"{locked_bytes / 1e9:.2f} GB locked"
    )
    return Forecast(state, days, window_days, daily, free_bytes, locked_bytes, detail)
