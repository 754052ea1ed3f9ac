"""The purge decision: which segments are past their window and not locked. Pure; tested
with hypothesis for all segments, locks and clocks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nvr.storage.guard import Lock, protection


@dataclass(frozen=True)
class SegmentSpan:
    id: int
    camera: str
    start_ms: int
    end_ms: int


def plan_purge(
    segments: Iterable[SegmentSpan],
    locks: list[Lock],
    *,
    now_ms: int,
    window_days: Callable[[str], int],
) -> list[int]:
    """Ids of the segments that may be purged at `now_ms`: past their camera's window and
    overlapping no active lock."""
    by_camera: dict[str, list[Lock]] = {}
    for lock in locks:
        by_camera.setdefault(lock.camera, []).append(lock)
    return [
        seg.id
        for seg in segments
        if protection(
            seg.camera,
            seg.start_ms,
            seg.end_ms,
            now_ms=now_ms,
            window_days=window_days(seg.camera),
            locks=by_camera.get(seg.camera, []),
        )
        is None
    ]
