"""Virtual MP4 files: one standard, seekable (non-fragmented) MP4 for any time range of a
camera, built from the recorded fragmented segments without copying or re-encoding them.

The approach is Moonfire NVR's: read the sample index of each segment (its `moof` boxes;
segments are immutable, so the result is cached), build one `moov` with complete sample
tables (`stts`, `ctts`, `stss`, `stsc`, `stsz`, `stco`/`co64`) for the whole range, and
describe the file as `header bytes + a list of byte ranges of the segment files` (the
samples, in their recorded order). Any byte range of the virtual file can then be served at
once, so HTTP Range requests, ETags and a browser's `<video>` seeking work without ever
writing the file. The video starts at the keyframe at or before the requested start.

Gaps (an outage between two segments) keep the file's time line on wall-clock time: the
last frame before a gap lasts until the next segment, so every frame after it is shown at
its true offset from the file's start in every player. That held frame is never silent:
the file gets a timed-text track (`tx3g`, shown as subtitles by VLC, QuickTime, mpv and
listed by ffprobe) whose cue over each gap says that nothing was recorded there, when and
why; `VirtualFile.gaps` lists them for the API's `X-Recording-Gaps` header and the export's
manifest and cover sheet. (Empty edits in an edit list would show no picture at all, but
FFmpeg, and so Chrome and every tool built on it, ignores empty edits after the first and
then puts every later frame at the wrong time: see docs/evidence.md.)

The cost of a plan is proportional to its output: the sample tables are written a batch of
segments at a time from views of the segments' indexes, and the header is kept as the blocks
it was written in, so a 24 h range (6 million samples with audio) needs ~40 MiB at the peak,
of which ~28 MiB (mostly `stsz`, 4 bytes a sample) is the plan (`bench.plan_cost`).

The segments' indexes come from `storage.media.segment` (or their stored form,
`storage.media.sampleindex`); boxes are written with `storage.media.boxes`.

Pure functions and value types plus blocking file reads (`VirtualFile.chunks`, a keyframe for
an H.265 sample entry): run them on a worker thread (`asyncio.to_thread`), never on the event
loop. Imports go down: `storage.media.boxes`, `segment`, `hevc`, numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from nvr.storage.media.boxes import Mp4Error, Node, box, full_box, full_node, node
from nvr.storage.media.hevc import hvc1_entry
from nvr.storage.media.segment import I64, U32, SegmentIndex, TrackIndex

MP4_EPOCH_OFFSET = 2_082_844_800
"""Seconds from 1904-01-01 (MP4 times) to 1970-01-01."""
MOVIE_TIMESCALE = 1000
GAP_TOLERANCE_MS = 50
"""A boundary between segments further than this from the previous sample's own end is a gap
(filled by holding the previous frame, and a cue in the gap text track); closer, the recorded
durations are kept as they are."""
MAX_SAMPLE_DURATION = 2**31 - 1


# --- planning a range -------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSegment:
    """One indexed segment as input to a plan: where it is and when it starts (UTC ms)."""

    path: str | os.PathLike[str]
    start_ms: int
    index: SegmentIndex


@dataclass
class _Part:
    """Samples [lo, hi) of one segment's track, selected for an output track (views of the
    segment's index: nothing is copied until the tables are written)."""

    track: TrackIndex
    lo: int
    hi: int
    file_no: int
    desc: int
    dur: U32 | None = None
    """Durations converted to the output timescale, when the segment's differs."""
    last: int | None = None
    """The last sample's duration when a gap or overlap moved it."""

    @property
    def count(self) -> int:
        return self.hi - self.lo

    def durations(self) -> I64:
        d = (self.track.duration[self.lo : self.hi] if self.dur is None else self.dur).astype(
            np.int64
        )
        if self.last is not None:
            d[-1] = self.last
        return d

    def last_duration(self) -> int:
        if self.last is not None:
            return self.last
        d = self.track.duration if self.dur is None else self.dur
        return int(d[self.hi - 1] if self.dur is None else d[-1])


@dataclass
class _TrackOut:
    """Samples selected for one output track, built segment by segment as a list of parts
    (views of the segments' indexes). The sample tables are written from the parts one
    segment at a time, so a plan's memory is its output (mostly `stsz`, 4 bytes a sample),
    never a copy of every sample's fields."""

    timescale: int
    handler: str
    width: int = 0
    height: int = 0
    entries: list[bytes] = field(default_factory=list)
    parts: list[_Part] = field(default_factory=list)
    end: int = 0
    """Output decode time after the last selected sample."""
    first_out: int | None = None
    """Output decode time of the first sample (ticks after the file's start)."""

    def entry_index(self, entry: bytes) -> int:
        if entry not in self.entries:
            if self.entries and self.entries[0][4:8] != entry[4:8]:
                raise Mp4Error(
                    f"the codec changes within the range ({self.entries[0][4:8]!r} to "
                    f"{entry[4:8]!r}); request the parts separately"
                )
            self.entries.append(entry)
        return self.entries.index(entry) + 1

    def add(
        self,
        track: TrackIndex,
        lo: int,
        hi: int,
        target: int,
        file_no: int,
        entry: bytes | None = None,
    ) -> None:
        """Append samples [lo, hi) of `track`, the first placed at output time `target`."""
        if hi <= lo:
            return
        converted: U32 | None = None
        if track.timescale != self.timescale:
            d64 = track.duration[lo:hi].astype(np.int64)
            times = np.concatenate([[0], np.cumsum(d64)]) * self.timescale // track.timescale
            converted = np.diff(times).astype(np.uint32)
            total = int(times[-1])
        else:
            total = int(track.duration[lo:hi].sum(dtype=np.int64))
        if self.parts:
            # Keep media time on wall-clock time: the previous sample lasts until this one
            # (a gap holds the last frame, and the gap track says so; an overlap shortens it).
            drift = target - self.end
            if abs(drift) > GAP_TOLERANCE_MS * self.timescale // 1000:
                prev = self.parts[-1]
                old = prev.last_duration()
                new_last = max(1, old + drift)
                if new_last <= MAX_SAMPLE_DURATION:
                    self.end += new_last - old
                    prev.last = new_last
        else:
            self.first_out = target
            self.end = target
        desc = self.entry_index(entry if entry is not None else track.sample_entry)
        self.parts.append(_Part(track, lo, hi, file_no, desc, converted))
        self.end += total
        if not self.width:
            self.width, self.height = track.width, track.height

    def shorten_last(self, ticks: int) -> None:
        """Cut `ticks` off the last sample (audio does not outlast the picture)."""
        prev = self.parts[-1]
        prev.last = prev.last_duration() - ticks
        self.end -= ticks

    @property
    def count(self) -> int:
        return sum(p.count for p in self.parts)

    @functools.cached_property
    def tables(self) -> _Tables:
        """The sample tables (all but the chunk offsets), written part by part."""
        return _tables(self)

    @property
    def presentation(self) -> tuple[int, int, int]:
        """(lead, first, end) in track ticks: the empty time before the track starts on the
        movie timeline, and the media times of its first and last presented instants
        (composition offsets move them off the decode times)."""
        t = self.tables
        return (self.first_out or 0), t.comp_first, t.comp_end


class Header:
    """A virtual file's header (`ftyp`, `moov`, the `mdat` box header and the gap track's
    text) as the blocks it was written in: a 24-hour `moov` is tens of MB, and joining
    them into one `bytes` would hold it twice while building. Sliceable like bytes."""

    __slots__ = ("_blocks", "_length", "_starts")

    def __init__(self, pieces: Sequence[bytes], small: int = 16 << 10) -> None:
        """Pieces of `small` bytes or more are kept as they are (never copied); runs of
        smaller ones are joined into blocks of about 16 times that."""
        block = 16 * small
        blocks: list[bytes] = []
        few: list[bytes] = []
        few_len = 0
        for x in pieces:
            if len(x) >= small:
                if few:
                    blocks.append(b"".join(few))
                    few, few_len = [], 0
                blocks.append(x)
            else:
                few.append(x)
                few_len += len(x)
                if few_len >= block:
                    blocks.append(b"".join(few))
                    few, few_len = [], 0
        if few:
            blocks.append(b"".join(few))
        self._blocks = blocks
        self._starts = np.concatenate([[0], np.cumsum([len(b) for b in blocks], dtype=np.int64)])
        self._length = int(self._starts[-1])

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, span: slice) -> bytes:
        start, stop, step = span.indices(self._length)
        if step != 1:
            raise ValueError("only contiguous slices")
        if stop <= start:
            return b""
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        out: list[bytes] = []
        pos = start
        while pos < stop:
            b0 = int(self._starts[i])
            block = self._blocks[i]
            out.append(block[pos - b0 : min(len(block), stop - b0)])
            pos = b0 + len(block)
            i += 1
        return out[0] if len(out) == 1 else b"".join(out)

    def __bytes__(self) -> bytes:
        return b"".join(self._blocks)


@dataclass(frozen=True)
class VirtualFile:
    """An MP4 file that exists as a header plus byte ranges of segment files."""

    header: Header
    paths: tuple[str, ...]
    """The segment files, as strings: a cached plan of 24 h names ~1,440 of them, and a
    `Path` each would be ~2,900 objects for every full garbage collection to walk."""
    piece_starts: I64
    """Virtual offset of each piece (after the header), ascending."""
    piece_files: I64
    piece_offsets: I64
    piece_lengths: I64
    size: int
    start_ms: int
    """Wall-clock time (UTC ms) of the first frame."""
    end_ms: int
    """Wall-clock time just after the last frame."""
    duration_ms: int
    gaps: tuple[tuple[int, int], ...] = ()
    """Wall-clock (start, end) of each gap between segments inside the file: no picture
    there (an empty edit), never a frozen frame."""

    @property
    def nbytes(self) -> int:
        """Memory the plan holds: its header and piece list."""
        return len(self.header) + sum(
            a.nbytes
            for a in (self.piece_starts, self.piece_files, self.piece_offsets, self.piece_lengths)
        )

    def piece_index(self, pos: int) -> int:
        """The piece holding virtual offset `pos` (at or after the header)."""
        return max(0, int(np.searchsorted(self.piece_starts, pos, side="right")) - 1)

    def chunks(self, first: int, last: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Bytes first..last (inclusive) of the file, in pieces of at most `chunk`. Blocking."""
        if first < 0 or last >= self.size or first > last:
            raise ValueError("range outside the file")
        pos = first
        hlen = len(self.header)
        if pos < hlen:
            stop = min(hlen, last + 1)
            yield self.header[pos:stop]
            pos = stop
        fds: dict[int, int] = {}
        try:
            i = self.piece_index(pos)
            while pos <= last and i < len(self.piece_starts):
                p_start = int(self.piece_starts[i])
                p_len = int(self.piece_lengths[i])
                if pos >= p_start + p_len:
                    i += 1
                    continue
                f = int(self.piece_files[i])
                fd = fds.get(f)
                if fd is None:
                    fd = os.open(self.paths[f], os.O_RDONLY | os.O_CLOEXEC)
                    fds[f] = fd
                within = pos - p_start
                want = min(p_len - within, last + 1 - pos, chunk)
                data = os.pread(fd, want, int(self.piece_offsets[i]) + within)
                if len(data) != want:
                    raise OSError(f"{self.paths[f]} is shorter than its index says")
                yield data
                pos += want
        finally:
            for fd in fds.values():
                os.close(fd)


def _read(path: str | os.PathLike[str], track: TrackIndex, i: int) -> bytes:
    """Sample `i` of `track` from its segment file (blocking)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, int(track.size[i]), int(track.offset[i]))
    finally:
        os.close(fd)


def _first_sync_at_or_before(track: TrackIndex, tick: int) -> int:
    sync_idx = np.flatnonzero(track.sync)
    if len(sync_idx) == 0:
        raise Mp4Error("segment without a keyframe")
    k = int(np.searchsorted(track.dts[sync_idx], tick, side="right")) - 1
    return int(sync_idx[max(0, k)])


def _cut(src: SourceSegment, start_ms: int, end_ms: int, first: bool) -> tuple[int, int]:
    """The video samples [lo, hi) of `src` that a plan of [start_ms, end_ms) takes: from
    the keyframe at or before `start_ms` (first segment only) to the last frame before
    `end_ms`."""
    v = src.index.video
    origin = int(v.dts[0])
    # Times are in milliseconds: a keyframe less than 1 ms after `start_ms` is at it.
    rel_lo = (start_ms - src.start_ms + 1) * v.timescale // 1000 + origin - 1
    rel_hi = (end_ms - src.start_ms) * v.timescale // 1000 + origin
    lo = _first_sync_at_or_before(v, rel_lo) if first else 0
    hi = int(np.searchsorted(v.dts, rel_hi, side="left"))
    if first and hi <= lo:
        hi = lo + 1  # at least the keyframe itself
    return lo, hi


def plan_key(
    first: SourceSegment, last: SourceSegment, start_ms: int, end_ms: int
) -> tuple[int, int, int]:
    """What of a range's plan depends on `start_ms` and `end_ms`, given its segments (the
    first and the last of them): the plan of every range with the same segments and the
    same key is the same file, so requests that differ only within a GOP share one."""
    lo, hi_first = _cut(first, start_ms, end_ms, True)
    if last is first:
        return lo, hi_first, hi_first
    return lo, hi_first, _cut(last, start_ms, end_ms, False)[1]


def gap_cue(start_ms: int, end_ms: int, causes: Sequence[str] = ()) -> str:
    """The text shown over a gap (UTC; the cause when the ledger knows it)."""
    lo = _utc(start_ms)
    hi = _utc(end_ms)
    why = f" ({', '.join(causes)})" if causes else ""
    return (
        f"NO RECORDING / 无录像 {lo} - {hi} UTC, {(end_ms - start_ms) / 1000:.1f} s{why}: "
        "the last frame before the gap is held"
    )


def _utc(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def plan(
    sources: Sequence[SourceSegment],
    start_ms: int,
    end_ms: int,
    label: Callable[[int, int], str] = gap_cue,
) -> VirtualFile:
    """The virtual MP4 of [start_ms, end_ms) from `sources` (ordered by start, overlapping
    the range). The video starts at the keyframe at or before `start_ms`. Each gap gets a
    cue `label(gap start, gap end)` in a timed-text track."""
    if not sources:
        raise Mp4Error("no footage in the range")
    vts = sources[0].index.video.timescale
    video = _TrackOut(timescale=vts, handler="vide")
    ats = next((s.index.audio.timescale for s in sources if s.index.audio is not None), 0)
    audio = _TrackOut(timescale=ats, handler="soun") if ats else None
    paths: list[str] = []
    out_wall0: int | None = None
    last_wall_end = 0
    gaps: list[tuple[int, int]] = []
    for n, src in enumerate(sources):
        v = src.index.video
        origin = int(v.dts[0])
        lo, hi = _cut(src, start_ms, end_ms, n == 0)
        if hi <= lo:
            continue
        first_wall = src.start_ms + (int(v.dts[lo]) - origin) * 1000 // v.timescale
        if out_wall0 is None:
            out_wall0 = first_wall
        elif first_wall - last_wall_end > GAP_TOLERANCE_MS:
            gaps.append((last_wall_end, first_wall))
        file_no = len(paths)
        paths.append(os.fspath(src.path))
        target = (first_wall - out_wall0) * vts // 1000
        # Sample `lo` is a keyframe (the first segment starts at one; every segment does).
        entry = hvc1_entry(v.sample_entry, functools.partial(_read, src.path, v, lo))
        video.add(v, lo, hi, target, file_no, entry)
        sel_end_tick = int(v.dts[hi - 1]) + int(v.duration[hi - 1])
        seg_wall_lo = first_wall
        seg_wall_hi = src.start_ms + (sel_end_tick - origin) * 1000 // v.timescale
        last_wall_end = max(last_wall_end, seg_wall_hi)
        a = src.index.audio
        if audio is not None and a is not None:
            # Audio shares the segment's time origin with the video and is cut where the
            # segment's selected video is (it may run on a little past the last frame).
            a_origin = origin * a.timescale // v.timescale
            a_lo_tick = (seg_wall_lo - src.start_ms) * a.timescale // 1000 + a_origin
            a_hi_tick = (seg_wall_hi - src.start_ms) * a.timescale // 1000 + a_origin
            alo = int(np.searchsorted(a.dts, a_lo_tick, side="left"))
            ahi = int(np.searchsorted(a.dts, a_hi_tick, side="left"))
            if ahi > alo:
                a_wall = src.start_ms + (int(a.dts[alo]) - a_origin) * 1000 // a.timescale
                a_target = (a_wall - out_wall0) * audio.timescale // 1000
                audio.add(a, alo, ahi, max(0, a_target), file_no)
    if out_wall0 is None or video.count == 0:
        raise Mp4Error("no footage in the range")
    if audio is not None and audio.count:
        # Audio does not outlast the picture (a hole in the camera's audio timestamps can
        # make the last sample long): end it with the last frame.
        video_end = video.end * audio.timescale // video.timescale
        excess = audio.end - video_end
        if excess > 0:
            audio.shorten_last(min(excess, audio.parts[-1].last_duration() - 1))
    tracks = [video] + ([audio] if audio is not None and audio.count else [])
    cues = [(lo - out_wall0, hi - out_wall0, label(lo, hi)) for lo, hi in gaps]
    return dataclasses.replace(
        _build(tracks, paths, out_wall0, last_wall_end, cues), gaps=tuple(gaps)
    )


# --- writing the file ---------------------------------------------------------------------------


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _runs(values: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Run-length encoding: (counts, values)."""
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [len(values)]]))
    return counts.astype(np.int64), values[starts].astype(np.int64)


def _pairs(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], signed_b: bool = False) -> bytes:
    out = np.empty((len(a), 2), dtype=">u4")
    out[:, 0] = a
    out[:, 1] = b.astype(np.int64).astype(np.uint32) if signed_b else b
    return out.tobytes()


class _RunWriter:
    """(count, value) runs of a track-long column, written segment by segment: runs that
    continue across a segment boundary are merged, so the table is the same as one built
    from the whole column at once."""

    def __init__(self, signed: bool = False) -> None:
        self.signed = signed
        self.pieces: list[bytes] = []
        self.entries = 0
        self.pending: tuple[int, int] | None = None
        self.negative = False
        self.nonzero = False

    def add(self, values: I64) -> None:
        counts, vals = _runs(values)
        if len(counts) == 0:
            return
        if self.pending is not None:
            if int(vals[0]) == self.pending[1]:
                counts[0] += self.pending[0]
            else:
                self._write(np.array([self.pending[0]]), np.array([self.pending[1]]))
        self.pending = (int(counts[-1]), int(vals[-1]))
        self._write(counts[:-1], vals[:-1])
        if self.signed:
            self.negative = self.negative or bool((vals < 0).any())
        self.nonzero = self.nonzero or bool(vals.any())

    def _write(self, counts: I64, vals: I64) -> None:
        if len(counts):
            self.pieces.append(_pairs(counts, vals, self.signed))
            self.entries += len(counts)

    def finish(self) -> tuple[int, list[bytes]]:
        if self.pending is not None:
            self._write(np.array([self.pending[0]]), np.array([self.pending[1]]))
            self.pending = None
        return self.entries, self.pieces


@dataclass
class _Tables:
    """One output track's sample tables (all but the chunk offsets) and its chunks."""

    boxes: list[bytes | Node]
    chunk_file: I64
    chunk_offset: I64
    """Where each chunk's bytes sit in its segment file."""
    chunk_length: I64
    comp_first: int
    comp_end: int


BATCH_SAMPLES = 32_768
"""Samples whose columns are joined and written at once: few numpy calls per table, and at
most a few MB of temporaries whatever the range's length."""


def _batches(parts: Sequence[_Part]) -> Iterator[list[_Part]]:
    batch: list[_Part] = []
    n = 0
    for part in parts:
        batch.append(part)
        n += part.count
        if n >= BATCH_SAMPLES:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def _join(arrays: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _tables(t: _TrackOut) -> _Tables:
    """Write `t`'s sample tables a batch of parts (segments) at a time; only the output
    and one batch's temporaries are ever in memory."""
    stts = _RunWriter()
    ctts = _RunWriter(signed=True)
    stss: list[bytes | tuple[int, int]] = []
    """Sync sample numbers per batch; (first, count) for a batch of only sync samples
    (audio), written out only if some other batch has a non-sync sample."""
    all_sync = True
    stsz: list[bytes] = []
    first_size: int | None = None
    same_size = True
    c_count: list[I64] = []
    c_desc: list[I64] = []
    c_file: list[I64] = []
    c_offset: list[I64] = []
    c_length: list[I64] = []
    base = 0  # samples before this batch
    dts0 = 0  # output decode time of this batch's first sample
    comp_first: int | None = None
    comp_end: int | None = None
    for batch in _batches(t.parts):
        counts_p = np.array([p.count for p in batch], np.int64)
        starts_p = np.concatenate([[0], np.cumsum(counts_p)[:-1]])
        n = int(counts_p.sum())
        dur = _join([p.durations() for p in batch])
        sizes = _join([p.track.size[p.lo : p.hi] for p in batch])
        cto = _join([p.track.cto[p.lo : p.hi] for p in batch]).astype(np.int64)
        sync = _join([p.track.sync[p.lo : p.hi] for p in batch])
        offsets = _join([p.track.offset[p.lo : p.hi] for p in batch])
        stts.add(dur)
        ctts.add(cto)
        if sync.all():
            stss.append((base + 1, n))
        else:
            all_sync = False
            stss.append((np.flatnonzero(sync) + 1 + base).astype(">u4").tobytes())
        if first_size is None:
            first_size = int(sizes[0])
        if same_size and not (sizes == first_size).all():
            same_size = False
        stsz.append(sizes.astype(">u4").tobytes())
        # Chunks: runs of samples contiguous in one file (a part is one file, one entry).
        new = np.ones(n, np.bool_)
        if n > 1:
            new[1:] = offsets[1:] != offsets[:-1] + sizes[:-1].astype(np.int64)
        new[starts_p] = True
        first = np.flatnonzero(new).astype(np.int64)
        ends = np.concatenate([first[1:], [n]])
        csum = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        part_of = np.searchsorted(starts_p, first, side="right") - 1
        c_count.append(ends - first)
        c_desc.append(np.array([p.desc for p in batch], np.int64)[part_of])
        c_file.append(np.array([p.file_no for p in batch], np.int64)[part_of])
        c_offset.append(offsets[first].astype(np.int64))
        c_length.append(csum[ends] - csum[first])
        # Presentation: composition times on the output time line.
        dts = dts0 + np.cumsum(dur) - dur
        comp = dts + cto
        lo_c, hi_c = int(comp.min()), int((comp + dur).max())
        comp_first = lo_c if comp_first is None else min(comp_first, lo_c)
        comp_end = hi_c if comp_end is None else max(comp_end, hi_c)
        base += n
        dts0 += int(dur.sum())
    n_all = base
    counts = np.concatenate(c_count) if c_count else np.zeros(0, np.int64)
    descs = np.concatenate(c_desc) if c_desc else np.zeros(0, np.int64)
    boxes: list[bytes | Node] = [
        full_box(b"stsd", 0, 0, struct.pack(">I", len(t.entries)), *t.entries)
    ]
    entries, pieces = stts.finish()
    boxes.append(full_node(b"stts", 0, 0, struct.pack(">I", entries), *pieces))
    entries, pieces = ctts.finish()
    if ctts.nonzero:
        version = 1 if ctts.negative else 0
        boxes.append(full_node(b"ctts", version, 0, struct.pack(">I", entries), *pieces))
    if not all_sync:
        numbers = [
            x if isinstance(x, bytes) else np.arange(x[0], x[0] + x[1]).astype(">u4").tobytes()
            for x in stss
        ]
        n_sync = sum(len(x) for x in numbers) // 4
        boxes.append(full_node(b"stss", 0, 0, struct.pack(">I", n_sync), *numbers))
    # stsc: runs of (samples per chunk, description) over chunks.
    key = counts * 1_000_000 + descs
    change = np.concatenate([[True], key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.bool_)
    first_chunk = np.flatnonzero(change)
    stsc = np.empty((len(first_chunk), 3), dtype=">u4")
    stsc[:, 0] = first_chunk + 1
    stsc[:, 1] = counts[first_chunk]
    stsc[:, 2] = descs[first_chunk]
    boxes.append(full_box(b"stsc", 0, 0, struct.pack(">I", len(stsc)), stsc.tobytes()))
    if n_all and same_size:
        assert first_size is not None
        boxes.append(full_box(b"stsz", 0, 0, struct.pack(">II", first_size, n_all)))
    else:
        boxes.append(full_node(b"stsz", 0, 0, struct.pack(">II", 0, n_all), *stsz))
    return _Tables(
        boxes=boxes,
        chunk_file=np.concatenate(c_file) if c_file else np.zeros(0, np.int64),
        chunk_offset=np.concatenate(c_offset) if c_offset else np.zeros(0, np.int64),
        chunk_length=np.concatenate(c_length) if c_length else np.zeros(0, np.int64),
        comp_first=comp_first or 0,
        comp_end=comp_end or 0,
    )


def _chunk_offsets(offsets: npt.NDArray[np.int64], co64: bool) -> bytes:
    kind, dtype = (b"co64", ">u8") if co64 else (b"stco", ">u4")
    return full_box(kind, 0, 0, struct.pack(">I", len(offsets)), offsets.astype(dtype).tobytes())


def _chunk_offsets_size(n: int, co64: bool) -> int:
    return 16 + n * (8 if co64 else 4)


def _trak(t: _TrackOut, track_id: int, stbl: Node, created: int, movie_duration: int) -> Node:
    media_duration = t.end - (t.first_out or 0)
    video = t.handler == "vide"
    tkhd = full_box(
        b"tkhd",
        1,
        3,
        struct.pack(">QQIIQ", created, created, track_id, 0, movie_duration),
        struct.pack(">IIhhhH", 0, 0, 0, 0, 0 if video else 0x100, 0),
        _MATRIX,
        struct.pack(">II", (t.width << 16) if video else 0, (t.height << 16) if video else 0),
    )
    lead, media_start, media_end = t.presentation
    edits: list[bytes] = []
    if lead > 0:
        edits.append(struct.pack(">Qqhh", lead * MOVIE_TIMESCALE // t.timescale, -1, 1, 0))
    if lead > 0 or media_start != 0 or media_end != media_duration:
        shown = (media_end - media_start) * MOVIE_TIMESCALE // t.timescale
        edits.append(struct.pack(">Qqhh", shown, media_start, 1, 0))
    boxes: list[bytes | Node] = [tkhd]
    if edits:
        boxes.append(box(b"edts", full_box(b"elst", 1, 0, struct.pack(">I", len(edits)), *edits)))
    mdhd = full_box(
        b"mdhd",
        1,
        0,
        struct.pack(">QQIQHH", created, created, t.timescale, media_duration, 0x55C4, 0),
    )
    name = b"VideoHandler\0" if video else b"SoundHandler\0"
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, t.handler.encode("latin-1")), name)
    media_header = (
        full_box(b"vmhd", 0, 1, struct.pack(">HHHH", 0, 0, 0, 0))
        if video
        else full_box(b"smhd", 0, 0, struct.pack(">hH", 0, 0))
    )
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    minf = node(b"minf", media_header, dinf, stbl)
    boxes.append(node(b"mdia", mdhd, hdlr, minf))
    return node(b"trak", *boxes)


_TX3G = (
    struct.pack(">6xH", 1)  # reserved, data_reference_index
    + struct.pack(">IbbBBBB", 0, 1, -1, 0, 0, 0, 0)  # flags, centred at the bottom, no background
    + struct.pack(">hhhh", 0, 0, 0, 0)  # default text box
    + struct.pack(">HHHBBBBBB", 0, 0, 1, 0, 18, 0xFF, 0xFF, 0x00, 0xFF)  # style: yellow
    + box(b"ftab", struct.pack(">HHB", 1, 1, 5), b"Serif")
)


def _text_track(
    cues: Sequence[tuple[int, int, str]], duration_ms: int, offset: int, track_id: int, created: int
) -> tuple[bytes, bytes]:
    """A `tx3g` timed-text track (ms timescale) whose samples are empty but for one cue per
    gap; (the trak box, its sample bytes, which sit at `offset` in the file)."""
    durations: list[int] = []
    samples: list[bytes] = []
    cursor = 0
    for lo, hi, text in cues:
        lo, hi = max(lo, cursor), min(max(hi, lo), duration_ms)
        if hi <= lo:
            continue
        if lo > cursor:
            durations.append(lo - cursor)
            samples.append(b"\0\0")
        body = text.encode("utf-8")[:0xFFFF]
        durations.append(hi - lo)
        samples.append(struct.pack(">H", len(body)) + body)
        cursor = hi
    if duration_ms > cursor:
        durations.append(duration_ms - cursor)
        samples.append(b"\0\0")
    data = b"".join(samples)
    n = len(samples)
    stsd = full_box(b"stsd", 0, 0, struct.pack(">I", 1), box(b"tx3g", _TX3G))
    stts = full_box(
        b"stts", 0, 0, struct.pack(">I", n), b"".join(struct.pack(">II", 1, d) for d in durations)
    )
    stsc = full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, n, 1))
    sizes = b"".join(struct.pack(">I", len(x)) for x in samples)
    stsz = full_box(b"stsz", 0, 0, struct.pack(">II", 0, n), sizes)
    stco = full_box(b"co64", 0, 0, struct.pack(">IQ", 1, offset))
    stbl = box(b"stbl", stsd, stts, stsc, stsz, stco)
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    minf = box(b"minf", full_box(b"nmhd", 0, 0), dinf, stbl)
    mdhd = full_box(
        b"mdhd", 1, 0, struct.pack(">QQIQHH", created, created, 1000, duration_ms, 0x55C4, 0)
    )
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"sbtl"), b"Gaps in the recording\0")
    tkhd = full_box(
        b"tkhd",
        1,
        3,
        struct.pack(">QQIIQ", created, created, track_id, 0, duration_ms),
        struct.pack(">IIhhhH", 0, 0, 0, 0, 0, 0),
        _MATRIX,
        struct.pack(">II", 0, 0),
    )
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf)), data


def _build(
    tracks: list[_TrackOut],
    paths: list[str],
    wall0: int,
    wall_end: int,
    cues: Sequence[tuple[int, int, str]] = (),
) -> VirtualFile:
    created = wall0 // 1000 + MP4_EPOCH_OFFSET
    tables = [t.tables for t in tracks]
    # Interleave the tracks' chunks in the order their bytes sit in the segment files.
    order_file = np.concatenate([c.chunk_file for c in tables])
    order_off = np.concatenate([c.chunk_offset for c in tables])
    lengths = np.concatenate([c.chunk_length for c in tables])
    order = np.lexsort((order_off, order_file))
    positions = np.empty(len(order), np.int64)
    positions[order] = np.concatenate([[0], np.cumsum(lengths[order])[:-1]]) if len(order) else []
    payload = int(lengths.sum())
    durations_ms = []
    for t in tracks:
        lead, media_start, media_end = t.presentation
        durations_ms.append((lead + media_end - media_start) * MOVIE_TIMESCALE // t.timescale)
    movie_duration = max(durations_ms)
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    mvhd = full_box(
        b"mvhd",
        1,
        0,
        struct.pack(">QQIQ", created, created, MOVIE_TIMESCALE, movie_duration),
        struct.pack(">IH10x", 0x10000, 0x100),
        _MATRIX,
        bytes(24),
        struct.pack(">I", len(tracks) + 2),
    )
    _, text_probe = _text_track(cues, movie_duration, 0, 0, created) if cues else (b"", b"")
    text_len = len(text_probe)

    def moov(header_len: int, co64: bool, sizing: bool) -> Node:
        """The moov; with `sizing`, chunk offsets are placeholders of the right length."""
        traks: list[bytes | Node] = []
        start = 0
        for i, (t, c) in enumerate(zip(tracks, tables, strict=True)):
            n = len(c.chunk_file)
            if sizing:
                offsets: bytes = bytes(_chunk_offsets_size(n, co64))
            else:
                offsets = _chunk_offsets(positions[start : start + n] + header_len, co64)
            start += n
            stbl = node(b"stbl", *c.boxes, offsets)
            traks.append(_trak(t, i + 1, stbl, created, durations_ms[i]))
        if cues:
            # The gap track's few bytes open the mdat, ahead of the recorded samples.
            trak, _text = _text_track(
                cues, movie_duration, max(0, header_len - text_len), len(tracks) + 1, created
            )
            traks.append(trak)
        return node(b"moov", mvhd, *traks)

    co64 = False
    moov_size = moov(0, co64, True).size
    if len(ftyp) + moov_size + text_len + 16 + payload > 0xFFFFFFFF:
        co64 = True
        moov_size = moov(0, co64, True).size
    header_len = len(ftyp) + moov_size + text_len + 16
    mdat_header = struct.pack(">I4sQ", 1, b"mdat", 16 + text_len + payload)
    built = moov(header_len, co64, False)
    if built.size != moov_size:
        raise Mp4Error("internal: the moov changed size between layout and build")
    pieces = [ftyp]
    built.emit(pieces)
    del built
    pieces.append(mdat_header)
    if cues:
        pieces.append(
            _text_track(cues, movie_duration, header_len - text_len, len(tracks) + 1, created)[1]
        )
    header = Header(pieces)
    del pieces
    if len(header) != header_len:
        raise Mp4Error("internal: the header is not the length laid out")
    # Pieces in mdat order; neighbours that continue each other in the same file are one.
    p_files = order_file[order]
    p_offs = order_off[order]
    p_lens = lengths[order]
    del order_file, order_off, lengths, order
    if len(p_files):
        new = np.ones(len(p_files), np.bool_)
        new[1:] = (p_files[1:] != p_files[:-1]) | (p_offs[1:] != p_offs[:-1] + p_lens[:-1])
        idx = np.flatnonzero(new)
        m_lens = np.add.reduceat(p_lens, idx)
        m_starts = header_len + np.concatenate([[0], np.cumsum(m_lens)[:-1]])
        m_files, m_offs = p_files[idx], p_offs[idx]
    else:
        m_lens = m_starts = m_files = m_offs = np.zeros(0, np.int64)
    return VirtualFile(
        header=header,
        paths=tuple(paths),
        piece_starts=m_starts.astype(np.int64, copy=False),
        piece_files=m_files.astype(np.int64, copy=False),
        piece_offsets=m_offs.astype(np.int64, copy=False),
        piece_lengths=m_lens.astype(np.int64, copy=False),
        size=header_len + payload,
        start_ms=wall0,
        end_ms=wall_end,
        duration_ms=movie_duration,
    )
