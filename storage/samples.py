"""`SampleCache`: the playback sample index of each segment, kept in the index (a cache).

Playback (`api.playback`) builds an MP4 from a segment's sample table; reading it from the
file costs a box walk, so the encoded table is stored per segment with the file's sha256 it
was made from, and used only while that still matches. Losing it loses nothing (it is made
again from the file). Owns the `segment_samples` table; reached as `SegmentStore.samples`.
Which segments still lack one is a footage query (`SegmentStore.segments_without_sample_index`).

Threads: blocking, thread-safe methods; the event loop calls them through `asyncio.to_thread`,
the playback warmer from its own thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from nvr.storage.repository import Repository
from nvr.storage.schema import SegmentSamplesRow


class Indexed(Protocol):
    """What the cache needs of a segment: its row id and its file's hash."""

    @property
    def id(self) -> int: ...

    @property
    def sha256(self) -> str: ...


class SampleCache(Repository):
    """Stored sample indexes, by segment id."""

    def get(self, segments: Sequence[Indexed]) -> dict[int, bytes]:
        """Stored playback sample indexes of `segments` (made for the same file hash)."""
        if not segments:
            return {}
        want = {seg.id: seg.sha256 for seg in segments}
        found: dict[int, bytes] = {}
        with self._engine.connect() as conn:
            ids = list(want)
            for i in range(0, len(ids), 500):
                rows = conn.execute(
                    select(
                        SegmentSamplesRow.segment_id,
                        SegmentSamplesRow.sha256,
                        SegmentSamplesRow.data,
                    ).where(SegmentSamplesRow.segment_id.in_(ids[i : i + 500]))
                )
                for seg_id, sha, data in rows:
                    if want.get(seg_id) == sha:
                        found[seg_id] = bytes(data)
        return found

    def save(self, segment: Indexed, data: bytes) -> bool:
        """Keep a segment's playback sample index; False if the segment is gone (purged
        meanwhile) or already has one."""
        try:
            with self._writing() as s:
                if s.get(SegmentSamplesRow, segment.id) is not None:
                    return False
                s.add(SegmentSamplesRow(segment_id=segment.id, sha256=segment.sha256, data=data))
        except IntegrityError:
            return False
        return True
