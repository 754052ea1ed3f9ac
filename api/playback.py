"""`PlaybackService`: virtual MP4 files of recorded ranges (see `storage.media.virtual`), with
caches.

Owns the sample indexes of segments at three levels: in memory (segments never change once
indexed, so an entry keyed by segment id and sha256 stays valid; bounded by bytes, least
recently used out), in the index database (`storage.samples.SampleCache`, a few kB per
segment, deleted with it), else parsed from the file's `moof` boxes. Also the few most recent
virtual files (keyed by their ETag, so the requests a browser makes while seeking reuse one
plan); concurrent requests for the same file share one build.

`keep_warm` (a task of the API's lifespan) indexes the last 1.5 hours of every camera and then
each new segment as soon as a recorder closes it (the daemon wires each recorder's
`on_segment` to `segment_closed`, so the file is still in the page cache), storing each
index in the database, and every `WARM_INTERVAL` backfills older segments that have none: a one-hour
range of any age is laid out from the database, never from thousands of reads of `moof`
boxes on disk.

Runs on the event loop (`segment_closed` is called from recorder threads and only wakes the
loop); parsing, planning and file reads go to worker threads. A
`RangeReader` is read from worker threads one call at a time and may be closed from the loop
at any moment (client gone): closing never blocks on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from asyncio import FIRST_COMPLETED
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nvr.storage import Segment, SegmentRefs, SegmentStore, StorageError, StorageIOError
from nvr.storage.media.boxes import Mp4Error
from nvr.storage.media.sampleindex import decode_index, encode_index
from nvr.storage.media.segment import SegmentIndex, parse_segment
from nvr.storage.media.virtual import SourceSegment, VirtualFile, gap_cue, plan, plan_key
from nvr.storage.samples import Indexed
from nvr.storage.timestamps import iso

log = logging.getLogger("nvr.api.playback")

BACKFILL = 30
"""Older segments without a stored index get one at this many per round."""
WARM_INTERVAL = 10.0
"""Seconds between `keep_warm`'s rounds when no recorder closed a segment (backfill)."""
WARM_HOURS = 1.5
"""Recent footage kept parsed: a request for the last hour never waits for parsing."""
FORMAT_VERSION = "nvr-mp4-2"
"""Part of every ETag: bump when the layout of the virtual files changes."""


class SegmentFile(Indexed, Protocol):
    """A segment as the index cache needs it: its row id, its file's hash and its file
    (a `Segment`, or the lighter `SegmentRef` that playback requests carry)."""

    @property
    def path(self) -> str | os.PathLike[str]: ...


class SegmentIndexCache:
    """Sample indexes of segments: in memory (LRU bounded by bytes), else stored in the index
    database, else parsed from the file (and then stored). Thread-safe; blocking."""

    def __init__(self, store: SegmentStore, budget_bytes: int) -> None:
        self._store = store
        self._budget = budget_bytes
        self._used = 0
        self._entries: OrderedDict[tuple[int, str], SegmentIndex] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, seg: SegmentFile) -> bool:
        with self._lock:
            return (seg.id, seg.sha256) in self._entries

    def _cached(self, seg: SegmentFile) -> SegmentIndex | None:
        key = (seg.id, seg.sha256)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def _keep(self, seg: SegmentFile, index: SegmentIndex) -> None:
        key = (seg.id, seg.sha256)
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = index
            self._used += index.nbytes
            while self._used > self._budget and len(self._entries) > 1:
                _k, old = self._entries.popitem(last=False)
                self._used -= old.nbytes

    def parse_and_store(self, seg: SegmentFile) -> SegmentIndex:
        """Parse the segment file and keep its index in the database."""
        path = Path(seg.path)
        try:
            index = parse_segment(path)
        except OSError as err:
            raise StorageIOError(f"cannot read segment {path.name}: {err.strerror}") from err
        self._store.samples.save(seg, encode_index(index))
        return index

    def get_many(self, segments: Sequence[SegmentFile]) -> list[SegmentIndex]:
        """The indexes of `segments`, in order."""
        found: dict[int, SegmentIndex] = {}
        missing: list[SegmentFile] = []
        for seg in segments:
            hit = self._cached(seg)
            if hit is None:
                missing.append(seg)
            else:
                found[seg.id] = hit
        stored = self._store.samples.get(missing) if missing else {}
        for seg in missing:
            index: SegmentIndex | None = None
            data = stored.get(seg.id)
            if data is not None:
                try:
                    index = decode_index(data)
                except Mp4Error as err:
                    log.warning(
                        "stored sample index of %s unusable (%s); parsing",
                        os.path.basename(seg.path),
                        err,
                    )
            if index is None:
                index = self.parse_and_store(seg)
            self._keep(seg, index)
            found[seg.id] = index
        return [found[seg.id] for seg in segments]

    def get(self, seg: SegmentFile) -> SegmentIndex:
        return self.get_many([seg])[0]

    @property
    def used_bytes(self) -> int:
        return self._used


@dataclass(frozen=True)
class Recording:
    """A range resolved against the index: its segments and the ETag of its MP4. A request
    holds it while it waits for its plan; its segments are columns (`SegmentRefs`), so twenty
    requests for 24 h ranges add almost nothing to what a full garbage collection walks with
    the GIL held (issue 13)."""

    camera: str
    start_ms: int
    end_ms: int
    segments: SegmentRefs
    etag: str


class PlanBusy(Exception):
    """Too many playback plans are being built (by this user or in all); retry later."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class PlaybackService:
    """Plans are built on worker threads, at most `max_builds` at once and
    `max_builds_per_user` for one user (a 24 h plan of a 25 fps camera with audio costs
    ~0.15 s of CPU and ~40 MiB at its peak, `bench.plan_cost`): a request that would start
    one more gets `PlanBusy` (429) at once, never a queue that holds the loop or piles up
    memory. Requests that share a build in progress, or find the plan cached, are not
    counted. Built plans are kept by count and by bytes (`plan_budget_bytes`)."""

    def __init__(
        self,
        store: SegmentStore,
        *,
        index_budget_bytes: int = 256 << 20,
        plans: int = 8,
        plan_budget_bytes: int = 96 << 20,
        max_builds: int = 2,
        max_builds_per_user: int = 1,
        queue_wait: float = 1.0,
        max_waiting: int = 32,
    ) -> None:
        self._store = store
        self.indexes = SegmentIndexCache(store, index_budget_bytes)
        self._plans: OrderedDict[str, VirtualFile] = OrderedDict()
        self._max_plans = plans
        self._plan_budget = plan_budget_bytes
        self._building: dict[str, asyncio.Future[VirtualFile]] = {}
        self._max_builds = max_builds
        self._max_builds_per_user = max_builds_per_user
        self._builds_by_user: dict[int, int] = {}
        self._queue_wait = queue_wait
        self._max_waiting = max_waiting
        self._waiting = 0
        self._freed: asyncio.Event | None = None
        """Set (and replaced) whenever a build ends: wakes the requests waiting for a slot."""
        self._closed_segments: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """`keep_warm`'s wake-up and its loop, once it runs."""

    async def resolve(self, camera: str, start_ms: int, end_ms: int) -> Recording | None:
        """The segments overlapping [start, end) and the ETag of their MP4; None if none.
        The ETag depends on where the range cuts its first and last segments (the keyframe
        it starts at, the frame it ends after), not on the exact milliseconds."""

        def find() -> Recording | None:
            segments = self._store.segment_refs(camera, start_ms, end_ms)
            if not segments:
                return None
            first, last = self.indexes.get_many([segments[0], segments[-1]])
            src_first = SourceSegment(segments[0].path, segments[0].start_ms, first)
            src_last = (
                src_first
                if len(segments) == 1
                else SourceSegment(segments[-1].path, segments[-1].start_ms, last)
            )
            key = plan_key(src_first, src_last, start_ms, end_ms)
            tag = etag(camera, start_ms, end_ms, segments, key)
            return Recording(camera, start_ms, end_ms, segments, tag)

        return await asyncio.to_thread(find)

    def cached(self, rec: Recording) -> VirtualFile | None:
        """The plan of `rec` if it is built already (for HEAD: never builds)."""
        return self._plans.get(rec.etag)

    async def file(self, rec: Recording, user_id: int = 0) -> VirtualFile:
        """The virtual MP4 of a resolved range (cached; concurrent callers share one build).
        Raises Mp4Error if the footage cannot form one file, StorageIOError if unreadable,
        PlanBusy if building it would exceed the limits: at once for a user who has a build
        in progress; when all `max_builds` are busy, after waiting up to `queue_wait`
        seconds for one of them to end (at most `max_waiting` requests wait; an awaited
        condition, never a blocked loop), since most plans take milliseconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._queue_wait
        while True:
            found = self._plans.get(rec.etag)
            if found is not None:
                self._plans.move_to_end(rec.etag)
                return found
            pending = self._building.get(rec.etag)
            if pending is not None:
                return await asyncio.shield(pending)
            mine = self._builds_by_user.get(user_id, 0)
            if mine >= self._max_builds_per_user:
                raise PlanBusy("your other playback requests are still being prepared", 1.0)
            if len(self._building) < self._max_builds:
                break
            left = deadline - loop.time()
            if left <= 0 or self._waiting >= self._max_waiting:
                raise PlanBusy("the recorder is preparing other playback requests", 1.0)
            if self._freed is None:
                self._freed = asyncio.Event()
            freed = self._freed
            self._waiting += 1
            try:
                await asyncio.wait_for(freed.wait(), left)
            except TimeoutError:
                pass
            finally:
                self._waiting -= 1
        fut: asyncio.Future[VirtualFile] = asyncio.get_running_loop().create_future()
        self._building[rec.etag] = fut
        self._builds_by_user[user_id] = mine + 1
        try:
            vf = await asyncio.to_thread(self._build, rec)
        except BaseException as err:
            fut.set_exception(err)
            fut.exception()  # retrieved: waiters get it; nobody else needs to
            raise
        else:
            fut.set_result(vf)
            self._plans[rec.etag] = vf
        finally:
            self._building.pop(rec.etag, None)
            left = self._builds_by_user.pop(user_id, 1) - 1
            if left > 0:
                self._builds_by_user[user_id] = left
            if self._freed is not None:  # a slot is free: wake who waits for one
                self._freed.set()
                self._freed = None
        # At most `plans` plans and `plan_budget_bytes` of them (a 24 h plan with audio
        # holds ~28 MiB); the newest is kept whatever its size.
        while len(self._plans) > 1 and (
            len(self._plans) > self._max_plans
            or sum(p.nbytes for p in self._plans.values()) > self._plan_budget
        ):
            self._plans.popitem(last=False)
        return vf

    def _build(self, rec: Recording) -> VirtualFile:
        indexes = self.indexes.get_many(rec.segments)
        sources = [
            SourceSegment(s.path, s.start_ms, ix)
            for s, ix in zip(rec.segments, indexes, strict=True)
        ]
        camera = rec.camera

        def label(lo: int, hi: int) -> str:
            (info,) = gap_causes(self._store, camera, [(lo, hi)])
            return gap_cue(lo, hi, [c for c, _ in info.causes])

        try:
            return plan(sources, rec.start_ms, rec.end_ms, label)
        except OSError as err:
            raise StorageIOError(f"cannot read footage: {err.strerror}") from err

    def warm_once(self, cameras: Iterable[str], since: dict[str, int], hours: float) -> int:
        """Index (in memory and in the database) the segments of `cameras` that ended after
        `since[camera]`, or in the last `hours` for a camera not seen yet, while their files
        are still in the page cache; then store the indexes of up to `BACKFILL` older
        segments that have none. Returns how many segments were parsed."""
        now = self._store.now()
        parsed = 0
        for camera in cameras:
            start = since.get(camera, now - int(hours * 3_600_000))
            fresh = self._store.segments(camera, start, None)
            for seg in fresh:
                if seg.video_codec is None:
                    continue  # an audio-only camera's: playback serves video only
                if not self.indexes.has(seg):
                    try:
                        self.indexes.get(seg)
                        parsed += 1
                    except (Mp4Error, StorageIOError) as err:
                        log.warning(
                            "camera %s: cannot index %s for playback: %s",
                            camera,
                            seg.path.name,
                            err,
                        )
                since[camera] = max(since.get(camera, 0), seg.end_ms)
        for seg in self._store.segments_without_sample_index(BACKFILL):
            try:
                self.indexes.parse_and_store(seg)
                parsed += 1
            except (Mp4Error, StorageIOError) as err:
                log.debug("cannot index %s for playback: %s", seg.path.name, err)
        return parsed

    async def keep_warm(
        self,
        cameras: Callable[[], Iterable[str]],
        stop: asyncio.Event,
        *,
        hours: float = WARM_HOURS,
        interval: float | None = None,
    ) -> None:
        """Keep the last `hours` of every camera parsed, and each new segment as soon as it
        is closed (`segment_closed`), so that playback of recent footage never waits for
        parsing; every `interval` seconds (default `WARM_INTERVAL`) otherwise (backfill, a
        store without recorders)."""
        wait = WARM_INTERVAL if interval is None else interval
        since: dict[str, int] = {}
        woken = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._closed_segments = woken
        try:
            while not stop.is_set():
                woken.clear()
                try:
                    await asyncio.to_thread(lambda: self.warm_once(cameras(), since, hours))
                except StorageError as err:
                    log.warning("playback cache: %s (will retry)", err)
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(woken.wait())]
                try:
                    await asyncio.wait(waits, timeout=wait, return_when=FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
        finally:
            self._closed_segments = None
            self._loop = None

    def segment_closed(self, segment: Segment) -> None:
        """A recorder closed and indexed `segment`: index it for playback now. Called on the
        recorder's thread; only wakes `keep_warm` (never blocks, never raises)."""
        loop, woken = self._loop, self._closed_segments
        if loop is None or woken is None or segment.video_codec is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(woken.set)

    def file_sync(self, rec: Recording) -> VirtualFile:
        """`file` for worker threads (exports): builds without touching the caches' futures."""
        return self._build(rec)


def etag(
    camera: str,
    start_ms: int,
    end_ms: int,
    segments: Sequence[Indexed],
    key: tuple[int, int, int] | None = None,
) -> str:
    """A strong ETag: the same request over the same segments is the same file. With the
    plan's `key` (`storage.media.virtual.plan_key`) the times themselves are left out: every
    range that cuts the same segments at the same samples is the same file."""
    cut = f"{start_ms}|{end_ms}" if key is None else "cut:{}:{}:{}".format(*key)
    h = hashlib.sha256(f"{FORMAT_VERSION}|{camera}|{cut}".encode())
    for s in segments:
        h.update(f"|{s.id}:{s.sha256}".encode())
    return '"' + h.hexdigest()[:40] + '"'


class RangeReader:
    """Reads bytes [first, last] of a virtual file chunk by chunk. `read` runs on a worker
    thread (one call at a time); `close` may come from the loop at any moment and never
    waits for the disk: a read in progress closes the files when it returns."""

    def __init__(self, vf: VirtualFile, first: int, last: int, chunk: int = 1 << 20) -> None:
        self._vf = vf
        self._pos = first
        self._last = last
        self._chunk = chunk
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False

    def read(self) -> bytes:
        """The next chunk; b"" at the end or once closed. Blocking."""
        with self._lock:
            if self._closed or self._pos > self._last:
                return b""
            self._busy = True
        try:
            data = self._read_one()
        finally:
            with self._lock:
                self._busy = False
                if self._closed:
                    self._close_fds()
        return data

    def _read_one(self) -> bytes:
        vf = self._vf
        pos = self._pos
        hlen = len(vf.header)
        if pos < hlen:
            stop = min(hlen, self._last + 1, pos + self._chunk)
            self._pos = stop
            return vf.header[pos:stop]
        i = vf.piece_index(pos)
        f = vf.piece_files[i]
        fd = self._fds.get(f)
        if fd is None:
            fd = os.open(vf.paths[f], os.O_RDONLY | os.O_CLOEXEC)
            self._fds[f] = fd
        within = pos - vf.piece_starts[i]
        want = min(vf.piece_lengths[i] - within, self._last + 1 - pos, self._chunk)
        data = os.pread(fd, want, vf.piece_offsets[i] + within)
        if len(data) != want:
            raise OSError(f"{os.path.basename(vf.paths[f])} is shorter than its index says")
        self._pos += want
        return data

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if not self._busy:
                self._close_fds()

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


async def stream(reader: RangeReader) -> AsyncIterator[bytes]:
    """The reader's chunks for a streaming response; the files are closed however it ends."""
    try:
        while True:
            chunk = await asyncio.to_thread(reader.read)
            if not chunk:
                return
            yield chunk
    finally:
        reader.close()


__all__ = [
    "Mp4Error",
    "PlanBusy",
    "PlaybackService",
    "RangeReader",
    "Recording",
    "SegmentIndexCache",
    "etag",
    "stream",
]


@dataclass(frozen=True)
class GapInfo:
    """A gap inside a virtual file (wall-clock ms) and the outages that explain it."""

    start_ms: int
    end_ms: int
    causes: tuple[tuple[str, str], ...]
    """(cause, detail) of each outage-ledger row overlapping the gap; `unknown` if none."""


def gap_causes(store: SegmentStore, camera: str, gaps: Sequence[tuple[int, int]]) -> list[GapInfo]:
    """The gaps of a virtual file with their causes from the outage ledger. Blocking."""
    if not gaps:
        return []
    outages = store.ledger.outages(camera, gaps[0][0])
    out = []
    for lo, hi in gaps:
        causes = tuple(
            (o.cause, o.detail)
            for o in outages
            if o.start_ms < hi and (o.end_ms is None or o.end_ms > lo)
        )
        out.append(GapInfo(lo, hi, causes or (("unknown", "no outage recorded for this gap"),)))
    return out


def gaps_header(gaps: Sequence[GapInfo]) -> str:
    """`X-Recording-Gaps`: `none`, or `<start>/<end> <cause>[+<cause>]` per gap (RFC 3339
    UTC), comma-separated."""
    if not gaps:
        return "none"
    return ", ".join(
        f"{iso(g.start_ms)}/{iso(g.end_ms)} {'+'.join(c for c, _ in g.causes)}" for g in gaps
    )
