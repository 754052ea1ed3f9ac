"""Reading a recorded segment: the sample index of a fragmented MP4 (`parse_segment`), every
sample of its video and audio track (decode time, duration, size, composition offset, sync
flag, file offset) as numpy columns in a `SegmentIndex`, from its `moov` and `moof` boxes
(walked with `storage.media.boxes`). Nothing is copied out of the samples themselves.

Blocking file reads: run on a worker thread (`asyncio.to_thread`), never on the event loop.
Imports go down to `storage.media.boxes` and numpy.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from nvr.storage.media.boxes import FileBox, Mp4Error, boxes, child, file_boxes

U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TrackIndex:
    """Every sample of one track of one segment file, in decode order."""

    track_id: int
    handler: str
    """`vide` or `soun`."""
    timescale: int
    sample_entry: bytes
    """The `stsd` child box (e.g. `avc1` with its `avcC`), copied verbatim."""
    width: int
    height: int
    dts: I64
    """Decode times in `timescale` units (from `tfdt`)."""
    duration: U32
    size: U32
    cto: npt.NDArray[np.int32]
    sync: BOOL
    offset: I64
    """Byte offset of each sample in the file."""

    @property
    def count(self) -> int:
        return len(self.dts)

    @property
    def nbytes(self) -> int:
        return int(
            self.dts.nbytes
            + self.duration.nbytes
            + self.size.nbytes
            + self.cto.nbytes
            + self.sync.nbytes
            + self.offset.nbytes
        )


@dataclass(frozen=True)
class SegmentIndex:
    """The sample index of one segment file: its video track and optional audio track."""

    video: TrackIndex
    audio: TrackIndex | None

    @property
    def nbytes(self) -> int:
        return self.video.nbytes + (self.audio.nbytes if self.audio else 0) + 512


@dataclass
class _Run:
    """One `trun` box, not yet expanded into samples."""

    layout: int
    """Which per-sample fields it carries (trun flags 0xF00) and whether cto is signed."""
    count: int
    raw: bytes
    data_pos: int
    dts0: int
    first_flags: int
    """-1 when absent."""
    d_duration: int
    d_size: int
    d_flags: int


@dataclass
class _Trak:
    track_id: int = 0
    handler: str = ""
    timescale: int = 0
    sample_entry: bytes = b""
    width: int = 0
    height: int = 0
    d_duration: int = 0
    d_size: int = 0
    d_flags: int = 0
    runs: list[_Run] = field(default_factory=list)


def _parse_trak(data: bytes, start: int, end: int) -> _Trak:
    t = _Trak()
    tkhd = child(data, start, end, b"tkhd")
    mdia = child(data, start, end, b"mdia")
    if tkhd is None or mdia is None:
        raise Mp4Error("trak without tkhd or mdia")
    version = data[tkhd[0]]
    if version == 1:
        t.track_id = struct.unpack_from(">I", data, tkhd[0] + 4 + 16)[0]
    else:
        t.track_id = struct.unpack_from(">I", data, tkhd[0] + 4 + 8)[0]
    w, h = struct.unpack_from(">II", data, tkhd[1] - 8)
    t.width, t.height = w >> 16, h >> 16
    mdhd = child(data, mdia[0], mdia[1], b"mdhd")
    hdlr = child(data, mdia[0], mdia[1], b"hdlr")
    minf = child(data, mdia[0], mdia[1], b"minf")
    if mdhd is None or hdlr is None or minf is None:
        raise Mp4Error("mdia without mdhd, hdlr or minf")
    off = 4 + (16 if data[mdhd[0]] == 1 else 8)
    t.timescale = struct.unpack_from(">I", data, mdhd[0] + off)[0]
    t.handler = bytes(data[hdlr[0] + 8 : hdlr[0] + 12]).decode("latin-1")
    stbl = child(data, minf[0], minf[1], b"stbl")
    if stbl is None:
        raise Mp4Error("minf without stbl")
    stsd = child(data, stbl[0], stbl[1], b"stsd")
    stsz = child(data, stbl[0], stbl[1], b"stsz")
    if stsd is None:
        raise Mp4Error("stbl without stsd")
    if stsz is not None and struct.unpack_from(">I", data, stsz[0] + 8)[0] != 0:
        raise Mp4Error("samples in the moov: not a fragmented segment")
    entries = list(boxes(data, stsd[0] + 8, stsd[1]))
    if len(entries) != 1:
        raise Mp4Error(f"expected one sample description, found {len(entries)}")
    _kind, body, box_end = entries[0]
    t.sample_entry = bytes(data[body - 8 : box_end])  # sample entries never use a 64-bit size
    return t


def _parse_moov(data: bytes) -> dict[int, _Trak]:
    traks: dict[int, _Trak] = {}
    trex: dict[int, tuple[int, int, int]] = {}
    for kind, body, end in boxes(data, 0, len(data)):
        if kind == b"trak":
            t = _parse_trak(data, body, end)
            traks[t.track_id] = t
        elif kind == b"mvex":
            for k2, b2, _e2 in boxes(data, body, end):
                if k2 == b"trex":
                    tid, _sdi, dur, size, flags = struct.unpack_from(">IIIII", data, b2 + 4)
                    trex[tid] = (dur, size, flags)
    for tid, (dur, size, flags) in trex.items():
        if tid in traks:
            traks[tid].d_duration, traks[tid].d_size, traks[tid].d_flags = dur, size, flags
    return traks


_READ = frozenset({b"moov", b"moof"})
_UNPACK_I = struct.Struct(">I").unpack_from
_UNPACK_Q = struct.Struct(">Q").unpack_from
_UNPACK_i = struct.Struct(">i").unpack_from
_FIELDS = (0x100, 0x200, 0x400, 0x800)


def _parse_moof(box: FileBox, traks: dict[int, _Trak]) -> None:
    """Record the runs of one `moof` (read with its bytes) in `traks`.

    Kept to plain struct reads: this runs once per fragment (thousands per hour of footage);
    the samples are expanded per segment with numpy in `_expand`."""
    data, moof_pos = box.data, box.pos
    assert data is not None
    next_base = moof_pos
    last_run: _Run | None = None
    for kind, traf_body, traf_end in boxes(data, box.header, len(data)):
        if kind != b"traf":
            continue
        t: _Trak | None = None
        base = moof_pos
        dts0 = -1
        d_dur = d_size = d_flags = 0
        data_pos = 0
        for bkind, body, _box_end in boxes(data, traf_body, traf_end):
            if bkind == b"tfhd":
                flags = _UNPACK_I(data, body)[0] & 0xFFFFFF
                tid = _UNPACK_I(data, body + 4)[0]
                t = traks.get(tid)
                if t is None:
                    raise Mp4Error(f"fragment of unknown track {tid}")
                p = body + 8
                if flags & 0x20000:
                    base = moof_pos
                elif next_base >= 0:
                    base = next_base
                else:
                    base = _run_end(last_run)[0] if last_run is not None else moof_pos
                if flags & 0x1:
                    base = _UNPACK_Q(data, p)[0]
                    p += 8
                if flags & 0x2:
                    p += 4
                d_dur, d_size, d_flags = t.d_duration, t.d_size, t.d_flags
                if flags & 0x8:
                    d_dur = _UNPACK_I(data, p)[0]
                    p += 4
                if flags & 0x10:
                    d_size = _UNPACK_I(data, p)[0]
                    p += 4
                if flags & 0x20:
                    d_flags = _UNPACK_I(data, p)[0]
                data_pos = base
            elif bkind == b"tfdt":
                if data[body] == 1:
                    dts0 = _UNPACK_Q(data, body + 4)[0]
                else:
                    dts0 = _UNPACK_I(data, body + 4)[0]
            elif bkind == b"trun":
                if t is None:
                    raise Mp4Error("trun before tfhd")
                if dts0 < 0:
                    dts0 = _run_end(t.runs[-1])[1] if t.runs else 0
                head = _UNPACK_I(data, body)[0]
                version, tflags = head >> 24, head & 0xFFFFFF
                count = _UNPACK_I(data, body + 4)[0]
                r = body + 8
                if tflags & 0x1:
                    data_pos = base + _UNPACK_i(data, r)[0]
                    r += 4
                elif data_pos < 0:
                    data_pos = _run_end(last_run)[0] if last_run is not None else base
                first_flags = -1
                if tflags & 0x4:
                    first_flags = _UNPACK_I(data, r)[0]
                    r += 4
                ncols = bin(tflags & 0xF00).count("1")
                raw = data[r : r + 4 * ncols * count]
                if len(raw) != 4 * ncols * count:
                    raise Mp4Error("trun shorter than its sample count")
                layout = (tflags & 0xF00) | (0x1000 if version else 0)
                run = _Run(layout, count, raw, data_pos, dts0, first_flags, d_dur, d_size, d_flags)
                t.runs.append(run)
                last_run = run
                data_pos = -1  # resolved from the run's sizes only if something needs it
                dts0 = -1
        next_base = -1


def _run_end(run: _Run) -> tuple[int, int]:
    """(byte offset, decode time) just after the last sample of `run`."""
    cols = [b for b in _FIELDS if run.layout & b]
    table = np.frombuffer(run.raw, ">u4").reshape(run.count, len(cols))
    sizes = int(table[:, cols.index(0x200)].sum()) if 0x200 in cols else run.d_size * run.count
    durs = int(table[:, cols.index(0x100)].sum()) if 0x100 in cols else run.d_duration * run.count
    return run.data_pos + sizes, run.dts0 + durs


def _column(
    table: npt.NDArray[np.uint32], cols: list[int], bit: int, defaults: list[int], counts: I64
) -> U32:
    """One per-sample field: from the runs' tables, or each run's default repeated."""
    if bit in cols:
        return table[:, cols.index(bit)].astype(np.uint32)
    return np.repeat(np.asarray(defaults, dtype=np.uint32), counts)


def _expand(t: _Trak) -> TrackIndex:
    """All samples of a track from its runs, vectorised over runs of the same layout."""
    parts: list[tuple[I64, U32, U32, npt.NDArray[np.int32], BOOL, I64]] = []
    i = 0
    runs = t.runs
    while i < len(runs):
        j = i
        while j < len(runs) and runs[j].layout == runs[i].layout:
            j += 1
        group = runs[i:j]
        i = j
        layout = group[0].layout
        cols = [b for b in _FIELDS if layout & b]
        counts = np.fromiter((r.count for r in group), np.int64, len(group))
        n = int(counts.sum())
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        table = (
            np.frombuffer(b"".join(r.raw for r in group), ">u4").reshape(n, len(cols))
            if cols
            else np.zeros((n, 0), ">u4")
        )

        dur = _column(table, cols, 0x100, [r.d_duration for r in group], counts)
        size = _column(table, cols, 0x200, [r.d_size for r in group], counts)
        flags = _column(table, cols, 0x400, [r.d_flags for r in group], counts)
        if 0x400 not in cols:
            firsts = np.fromiter((r.first_flags for r in group), np.int64, len(group))
            has = firsts >= 0
            flags[starts[has]] = firsts[has].astype(np.uint32)
        if 0x800 in cols:
            raw_cto = table[:, cols.index(0x800)].astype(np.int64)
            if layout & 0x1000:
                raw_cto = np.where(raw_cto >= 2**31, raw_cto - 2**32, raw_cto)
            cto = raw_cto.astype(np.int32)
        else:
            cto = np.zeros(n, np.int32)
        size64 = size.astype(np.int64)
        dur64 = dur.astype(np.int64)
        cs = np.cumsum(size64) - size64
        cd = np.cumsum(dur64) - dur64
        data_pos = np.fromiter((r.data_pos for r in group), np.int64, len(group))
        dts0 = np.fromiter((r.dts0 for r in group), np.int64, len(group))
        offset = np.repeat(data_pos - cs[starts], counts) + cs
        dts = np.repeat(dts0 - cd[starts], counts) + cd
        parts.append((dts, dur, size, cto, (flags & 0x10000) == 0, offset))
    return TrackIndex(
        track_id=t.track_id,
        handler=t.handler,
        timescale=t.timescale,
        sample_entry=t.sample_entry,
        width=t.width,
        height=t.height,
        dts=np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64),
        duration=np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint32),
        size=np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.uint32),
        cto=np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int32),
        sync=np.concatenate([p[4] for p in parts]) if parts else np.zeros(0, np.bool_),
        offset=np.concatenate([p[5] for p in parts]) if parts else np.zeros(0, np.int64),
    )


def parse_segment(path: Path) -> SegmentIndex:
    """Read the sample index of a recorded (fragmented) segment file. Blocking. A box cut
    short at the end (a file being written, or cut by a crash) ends the walk: the complete
    fragments before it still count."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        traks: dict[int, _Trak] | None = None
        for box in file_boxes(fd, os.fstat(fd).st_size, read=_READ):
            if not box.complete:
                break
            if box.kind == b"moov":
                assert box.data is not None
                traks = _parse_moov(box.data[box.header :])
            elif box.kind == b"moof":
                if traks is None:
                    raise Mp4Error(f"{path.name}: moof before moov")
                _parse_moof(box, traks)
    finally:
        os.close(fd)
    if traks is None:
        raise Mp4Error(f"{path.name}: no moov box")
    video: TrackIndex | None = None
    audio: TrackIndex | None = None
    for t in sorted(traks.values(), key=lambda x: x.track_id):
        ti = _expand(t)
        if t.handler == "vide" and video is None:
            video = ti
        elif t.handler == "soun" and audio is None:
            audio = ti
    if video is None or video.count == 0:
        raise Mp4Error(f"{path.name}: no video samples")
    if video.timescale <= 0:
        raise Mp4Error(f"{path.name}: video track without a timescale")
    if audio is not None and (audio.count == 0 or audio.timescale <= 0):
        audio = None
    return SegmentIndex(video, audio)
