"""A full disk: recorders pause without deleting anything, raise an alarm state, write the
outage ledger, and resume by themselves when space returns. Uses a real, small tmpfs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvr.ingest.recorder import CameraRecorder
from nvr.ingest.sources import RtspOpener
from nvr.storage import SegmentStore
from tests.camsim import CameraSim
from tests.diskfill import tmpfs
from tests.media import check_file
from tests.recording_rig import wait_for, wait_progress

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs mounted for this test (needs root, as in CI)."""
    yield from tmpfs(tmp_path / "fs", 32)


def fill(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.write(b"\0" * size)


def record(store: SegmentStore, url: str, reserve: int) -> CameraRecorder:
    opener = RtspOpener(
        url, username=None, password=None, transport="tcp", timeout_s=3.0, camera="cam"
    )
    rec = CameraRecorder(
        "cam", opener, store, segment_seconds=10, reserve_bytes=reserve, stall_seconds=3.0
    )
    rec.start()
    return rec


def hashes(store: SegmentStore) -> dict[Path, str]:
    return {s.path: s.sha256 for s in store.segments("cam")}


def assert_intact(expected: dict[Path, str]) -> None:
    for path, sha in expected.items():
        assert path.exists(), f"{path} was deleted"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


def test_reserve_pauses_cleanly_and_resumes(
    camsim: CameraSim, small_fs: Path, tmp_path: Path
) -> None:
    filler = small_fs / "filler"
    fill(filler, 20 * MIB)  # 12 MiB free: the 9 MiB reserve is reached after ~3 MiB
    store = SegmentStore(small_fs / "rec", f"sqlite:///{tmp_path / 'index.db'}")
    rec = record(store, camsim.url("hd4m"), reserve=9 * MIB)
    try:
        wait_for(lambda: rec.status().state == "storage-full", 30, "the storage-full alarm")
        (outage,) = store.ledger.outages("cam")
        assert outage.cause == "storage-full" and outage.end_ms is None
        before = hashes(store)
        assert before, "the segment in flight is finished cleanly before pausing"
        assert not list(small_fs.rglob("*.part"))
        wait_progress(rec, 3.0, "three rounds of the pause")
        assert rec.status().state == "storage-full"  # stays paused, writes nothing more
        assert hashes(store) == before
        filler.unlink()
        wait_for(lambda: rec.status().state == "recording", 20, "recording to resume")
        wait_for(lambda: not store.ledger.open_outages("cam"), 20, "the outage to close")
    finally:
        rec.stop()
        rec.thread.join(15)
    assert_intact(before)
    for seg in store.segments("cam"):
        assert check_file(seg.path, decode=False).first_is_key
    store.close()


def test_hard_enospc_keeps_footage_and_resumes(
    camsim: CameraSim, small_fs: Path, tmp_path: Path
) -> None:
    filler = small_fs / "filler"
    fill(filler, 27 * MIB)  # ~5 MiB free: the disk really fills
    store = SegmentStore(small_fs / "rec", f"sqlite:///{tmp_path / 'index.db'}")
    rec = record(store, camsim.url("hd4m"), reserve=0)
    try:
        wait_for(lambda: rec.status().state == "storage-full", 30, "the storage-full alarm")
        outage = store.ledger.outages("cam")[0]
        assert outage.cause == "storage-full"
        before = hashes(store)
        # The fragments that reached the disk were salvaged and indexed, not thrown away.
        assert before and any(s.recovered for s in store.segments("cam"))
        filler.unlink()
        wait_for(lambda: rec.status().state == "recording", 20, "recording to resume")
        wait_for(lambda: not store.ledger.open_outages("cam"), 20, "the outage to close")
    finally:
        rec.stop()
        rec.thread.join(15)
    assert_intact(before)
    for seg in store.segments("cam"):
        found = check_file(seg.path)
        assert found.first_is_key and found.decoded >= found.frames - 2
    store.close()
