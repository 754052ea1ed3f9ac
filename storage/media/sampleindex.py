"""The sample-index codec: `encode_index` packs a segment's `SegmentIndex` into the compact,
compressed form the index database keeps (runs of contiguous samples instead of a file
offset and decode time per sample); `decode_index` is its inverse, so playback never reads
a segment's boxes twice. Pure; any thread. Imports go down to `storage.media.segment`.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import numpy.typing as npt

from nvr.storage.media.boxes import Mp4Error
from nvr.storage.media.segment import I64, SegmentIndex, TrackIndex

_INDEX_MAGIC = b"NVRI"
_INDEX_VERSION = 1
_TRACK_HEAD = struct.Struct(">I4sIIIIII")


def _runs_of(t: TrackIndex) -> tuple[I64, I64, I64]:
    """Where each run of contiguous samples (in bytes and in decode time) starts."""
    n = t.count
    size = t.size.astype(np.int64)
    dur = t.duration.astype(np.int64)
    new = np.ones(n, np.bool_)
    if n > 1:
        new[1:] = (t.offset[1:] != t.offset[:-1] + size[:-1]) | (t.dts[1:] != t.dts[:-1] + dur[:-1])
    starts = np.flatnonzero(new).astype(np.int64)
    return starts, t.offset[starts].astype(np.int64), t.dts[starts].astype(np.int64)


def encode_index(index: SegmentIndex) -> bytes:
    """A compact, compressed form of a segment's sample index, for the index database."""
    parts = [_INDEX_MAGIC, bytes([_INDEX_VERSION])]
    for t in (index.video, index.audio):
        if t is None:
            continue
        starts, pos, dts = _runs_of(t)
        parts.append(
            _TRACK_HEAD.pack(
                t.track_id,
                t.handler.encode("latin-1")[:4].ljust(4),
                t.timescale,
                t.width,
                t.height,
                t.count,
                len(starts),
                len(t.sample_entry),
            )
        )
        parts.append(t.sample_entry)
        parts.append(t.duration.astype("<u4").tobytes())
        parts.append(t.size.astype("<u4").tobytes())
        parts.append(t.cto.astype("<i4").tobytes())
        parts.append(t.sync.astype(np.uint8).tobytes())
        parts.append(starts.astype("<i8").tobytes())
        parts.append(pos.astype("<i8").tobytes())
        parts.append(dts.astype("<i8").tobytes())
    return zlib.compress(b"".join(parts), 1)


def decode_index(data: bytes) -> SegmentIndex:
    """Inverse of `encode_index`; Mp4Error if the data is not a stored index."""
    try:
        raw = zlib.decompress(data)
    except zlib.error as err:
        raise Mp4Error(f"stored sample index unreadable: {err}") from err
    if raw[:4] != _INDEX_MAGIC or raw[4] != _INDEX_VERSION:
        raise Mp4Error("stored sample index has an unknown format")
    pos = 5
    tracks: list[TrackIndex] = []
    try:
        while pos < len(raw):
            tid, handler, ts, width, height, n, runs, entry_len = _TRACK_HEAD.unpack_from(raw, pos)
            pos += _TRACK_HEAD.size
            entry = raw[pos : pos + entry_len]
            pos += entry_len

            def take(dtype: str, count: int) -> npt.NDArray[np.generic]:
                nonlocal pos
                arr = np.frombuffer(raw, dtype=dtype, count=count, offset=pos)
                pos += arr.nbytes
                return arr

            dur = take("<u4", n).astype(np.uint32)
            size = take("<u4", n).astype(np.uint32)
            cto = take("<i4", n).astype(np.int32)
            sync = take("u1", n).astype(np.bool_)
            starts = take("<i8", runs).astype(np.int64)
            run_pos = take("<i8", runs).astype(np.int64)
            run_dts = take("<i8", runs).astype(np.int64)
            counts = np.diff(np.concatenate([starts, [n]]))
            size64 = size.astype(np.int64)
            dur64 = dur.astype(np.int64)
            cs = np.cumsum(size64) - size64
            cd = np.cumsum(dur64) - dur64
            tracks.append(
                TrackIndex(
                    track_id=tid,
                    handler=handler.decode("latin-1"),
                    timescale=ts,
                    sample_entry=bytes(entry),
                    width=width,
                    height=height,
                    dts=np.repeat(run_dts - cd[starts], counts) + cd,
                    duration=dur,
                    size=size,
                    cto=cto,
                    sync=sync,
                    offset=np.repeat(run_pos - cs[starts], counts) + cs,
                )
            )
    except (struct.error, ValueError, IndexError) as err:
        raise Mp4Error(f"stored sample index truncated: {err}") from err
    video = next((t for t in tracks if t.handler == "vide"), None)
    audio = next((t for t in tracks if t.handler == "soun"), None)
    if video is None or video.count == 0:
        raise Mp4Error("stored sample index has no video")
    return SegmentIndex(video, audio)
