"""Playback's stored sample indexes: exact round trip through the index database, and gone
with their segment when retention deletes it (ON DELETE CASCADE)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from nvr.api.playback import PlaybackService
from nvr.storage import SegmentStore
from nvr.storage.media.sampleindex import decode_index, encode_index
from nvr.storage.media.segment import parse_segment
from tests.api_rig import CAMERAS
from tests.store_clock import add_segment

pytestmark = pytest.mark.slow

FIELDS = ("dts", "duration", "size", "cto", "sync", "offset")


def test_stored_index_round_trips_exactly(footage_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        for camera in CAMERAS:
            for seg in store.segments(camera):
                parsed = parse_segment(seg.path)
                back = decode_index(encode_index(parsed))
                for a, b in ((parsed.video, back.video), (parsed.audio, back.audio)):
                    if a is None:
                        assert b is None
                        continue
                    assert b is not None
                    assert (a.timescale, a.sample_entry, a.handler) == (
                        b.timescale,
                        b.sample_entry,
                        b.handler,
                    )
                    for f in FIELDS:
                        assert np.array_equal(getattr(a, f), getattr(b, f)), (camera, f)
        segs = store.segments("h264aac")
        assert store.samples.get(segs) == {}
        service = PlaybackService(store)
        service.indexes.get_many(segs)  # parses and stores
        stored = store.samples.get(segs)
        assert set(stored) == {s.id for s in segs}
        assert {s.id for s in store.segments_without_sample_index(1000)}.isdisjoint(stored)
        fresh = PlaybackService(store)  # nothing in memory: read back from the database
        again = fresh.indexes.get_many(segs)
        for seg, ix in zip(segs, again, strict=True):
            assert np.array_equal(ix.video.size, parse_segment(seg.path).video.size)
    finally:
        store.close()


def test_stored_index_goes_with_its_segment(footage_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        segs = store.segments("bframes")
        PlaybackService(store).indexes.get_many(segs)
        assert len(store.samples.get(segs)) == len(segs)
    finally:
        store.close()
    # Forty days later (of this boot's uptime too, see storage/clock.py), with the recorder
    # still recording, the footage is past its window: retention may delete it.
    later = max(s.end_ms for s in segs) + 40 * 86_400_000
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", clock=lambda: later)
    try:
        add_segment(store, "live", later - 2000)
        gone = store.delete_range("bframes", segs[0].start_ms, segs[-1].end_ms, actor="test")
        assert {s.id for s in gone} == {s.id for s in segs}
        assert store.samples.get(segs) == {}
    finally:
        store.close()
