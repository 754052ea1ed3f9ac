"""Shared helpers for tests that record: `wait_for` (poll a condition with a deadline), `Rig`
(a store and real recorder threads over RTSP) and `assert_contiguous` (every file reopened
with PyAV). The `rig` fixture is registered by tests/conftest.py. Runs on pytest's thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nvr.ingest.recorder import CameraRecorder
from nvr.ingest.sources import RtspOpener
from nvr.storage import Segment, SegmentStore
from tests.media import check_file

FRAME_MS = 100  # the simulator's 10 fps clips


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def wait_progress(rec: CameraRecorder, seconds: float, what: str) -> None:
    """Wait until the recorder's thread has shown progress `seconds` after its last (its
    pause and back-off loops do so every second): time that passed as the recorder saw it,
    so a hung thread fails this instead of a blind sleep hiding it."""
    since = rec.status().last_progress
    wait_for(lambda: rec.status().last_progress >= since + seconds, seconds + 30, what)


class Rig:
    """A store and recorders for a test, stopped and closed at the end."""

    def __init__(self, root: Path) -> None:
        self.store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
        self.recorders: dict[str, CameraRecorder] = {}

    def add(self, name: str, url: str, segment_seconds: int = 10, stall: float = 3.0) -> None:
        opener = RtspOpener(
            url, username=None, password=None, transport="tcp", timeout_s=stall, camera=name
        )
        rec = CameraRecorder(
            name, opener, self.store, segment_seconds=segment_seconds, stall_seconds=stall
        )
        self.recorders[name] = rec
        rec.start()

    def stop(self) -> None:
        for rec in self.recorders.values():
            rec.stop()
        for rec in self.recorders.values():
            rec.thread.join(15)
            assert not rec.thread.is_alive(), f"{rec.camera} did not stop"

    def state(self, name: str) -> str:
        return self.recorders[name].status().state


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "store")
    try:
        yield r
    finally:
        r.stop()
        r.store.close()


def assert_contiguous(segments: list[Segment]) -> float:
    """Every file decodes from a keyframe with monotonic DTS and no hole between segments;
    returns the media seconds PyAV finds in them."""
    total = 0.0
    prev_end: int | None = None
    for seg in segments:
        found = check_file(seg.path)
        assert found.first_is_key, seg.path
        assert found.dts_monotonic, seg.path
        assert found.decoded >= found.frames - 2, (seg.path, found)
        assert found.frame_pts_rising, seg.path
        assert abs(found.duration_s * 1000 - seg.duration_ms) <= FRAME_MS, (seg, found)
        if prev_end is not None:
            assert abs(seg.start_ms - prev_end) <= FRAME_MS, (prev_end, seg.start_ms)
        prev_end = seg.start_ms + round(found.duration_s * 1000)
        total += found.duration_s
    return total
