"""Shared helpers for a real store under a simulated clock: `FakeClock`, `T0`, `BOOT_OFFSET`,
`open_store` (retention floor) and `add_segment` (a short real segment). Runs on pytest's
thread."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av

from nvr.ingest.testpattern import TestPatternSource
from nvr.storage import SegmentInfo, SegmentStore, now_ms
from nvr.storage.clock import read_uptime_ms
from tests.media import fast_pattern

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


class _Pattern:
    """One test-pattern encoder for every `add_segment` of this process: a segment takes the
    next `frames` packets from a keyframe on, their timestamps moved to start at zero as a new
    encoder's would. A libx264 encoder per segment cost more than the segment's frames (tests
    write hundreds); the picture moves on from segment to segment, so no two files are alike."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.source: TestPatternSource | None = None
        self._packets: Iterator[av.Packet[Any]] = iter(())
        self._held: av.Packet[Any] | None = None

    def take(self, frames: int) -> tuple[TestPatternSource, list[av.Packet[Any]]]:
        """The source (the writer's stream template) and the next GOP's first `frames`
        packets; call with `lock` held."""
        if self.source is None:
            self.source = fast_pattern()
            self._packets = self.source.packets()
        packet = self._held or next(self._packets)
        while not packet.is_keyframe:
            packet = next(self._packets)
        taken = [packet]
        while len(taken) < frames:
            taken.append(next(self._packets))
        self._held = next(self._packets)  # pulled now: a keyframe starts the next segment
        zero = taken[0].pts or 0
        for pkt in taken:
            if pkt.pts is not None:
                pkt.pts -= zero
            if pkt.dts is not None:
                pkt.dts -= zero
        return self.source, taken


_PATTERN = _Pattern()


def add_segment(store: SegmentStore, camera: str, start_ms: int, frames: int = 10) -> None:
    """A committed segment of `frames` test-pattern pictures (10 a second) from `start_ms`."""
    with _PATTERN.lock:
        src, packets = _PATTERN.take(frames)
        writer = store.new_writer(camera, start_ms, src.video, None)
    for pkt in packets:
        pkt.stream = writer.video
        writer.mux(pkt)
    dur = frames * 100
    store.commit(
        writer, SegmentInfo(camera, start_ms, start_ms + dur, dur, frames, "h264", None, 640, 360)
    )
