"""Shared helpers for a real store under a simulated clock: `FakeClock`, `T0`, `BOOT_OFFSET`,
`open_store` (retention floor) and `add_segment` (a short real segment). Runs on pytest's
thread."""

from __future__ import annotations

import sys
from pathlib import Path

from nvr.storage import SegmentInfo, SegmentStore, now_ms
from nvr.storage.clock import read_uptime_ms
from tests.media import fast_pattern, pattern_packets

T0 = 1_790_000_000_000  # 2026-09-21
NVR = [sys.executable, "-m", "nvr.cli"]
BOOT_OFFSET = now_ms() - read_uptime_ms()
"""This boot's wall clock minus uptime: a simulated clock's uptime is `clock - BOOT_OFFSET`,
as if the machine had been up since then (so its footage's evidence time agrees with the
real processes' that a test runs next; see storage/clock.py)."""


class FakeClock:
    """A simulated UTC clock in ms, moved by the test."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def open_store(root: Path, clock: FakeClock, days: int = 30) -> SegmentStore:
    return SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        clock=clock,
        retention_days=lambda _c: days,
        uptime=lambda: clock() - BOOT_OFFSET,
    )


def add_segment(store: SegmentStore, camera: str, start_ms: int, frames: int = 10) -> None:
    src = fast_pattern()
    writer = store.new_writer(camera, start_ms, src.video, None)
    for pkt in pattern_packets(src, frames):
        pkt.stream = writer.video
        writer.mux(pkt)
    dur = frames * 100
    store.commit(
        writer, SegmentInfo(camera, start_ms, start_ms + dur, dur, frames, "h264", None, 640, 360)
    )
    src.close()
