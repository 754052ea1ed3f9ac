"""`MaskService`: privacy-masked copies of recordings (R10) for users who may not see behind a
camera's privacy masks (`[[cameras.privacy_masks]]`; `User.unmasked` is the permission), and
by the same means H.264 copies of H.265 recordings for browsers that cannot decode H.265
(issue 17: Chromium on Linux), at reduced resolution (`max_height`) and with the masks filled
too when the user has them.

Originals are never altered (R4): a masked copy is made from the playback plan's virtual MP4
(`api.playback.VirtualFile`, read through `VirtualFileIO`), decoded with PyAV, the polygons
filled black in every picture, re-encoded with libx264 and written to a cache file under
`<root>/.masked/` (named by the plan's ETag and the masks, so a player's Range requests reuse
it; the oldest copies beyond `keep` are removed; they are named `<key>.masked`). Audio is
copied as it is. At most `max_jobs` copies are made at once (`asyncio.Semaphore` on the loop;
the work itself runs on worker threads via `asyncio.to_thread`), so masking never starves
recording of CPU.

A copy is made progressively (`MaskJob`): a fragmented MP4 written front to back to
`<key>.masked.tmp`, each write readable at once (`MaskJob.more` wakes readers on the loop), so
playback streams it while it is encoded; renamed to `<key>.masked` when finished. A job runs
to its end even when its readers leave (the player's next request finds the copy cached).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import av
import numpy as np
import numpy.typing as npt

from nvr.api.playback import RangeReader
from nvr.config.models import PrivacyMask
from nvr.storage.media.virtual import Header, VirtualFile

log = logging.getLogger("nvr.api.masking")

BOOL = npt.NDArray[np.bool_]
BLACK_Y, NEUTRAL_UV = 16, 128
CACHE_SUFFIX = ".masked"
"""MP4 files, but not named `.mp4`: the store's consistency walk takes every `.mp4` under
its root for a segment."""


class VirtualFileIO(io.RawIOBase):
    """A seekable, readable file over a virtual MP4 (for PyAV), reading its pieces on demand."""

    def __init__(self, vf: VirtualFile) -> None:
        self._vf = vf
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._vf.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self._vf.size or not len(view):
            return 0
        reader = RangeReader(self._vf, self._pos, self._vf.size - 1, chunk=len(view))
        try:
            data = reader.read()
        finally:
            reader.close()
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def polygon_mask(masks: Sequence[PrivacyMask], width: int, height: int) -> BOOL:
    """Pixels (by their centres) inside any of the polygons (even-odd rule per polygon)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    px, py = (xs + 0.5) / width, (ys + 0.5) / height
    out = np.zeros((height, width), dtype=bool)
    for mask in masks:
        inside = np.zeros((height, width), dtype=bool)
        pts = mask.points
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
            if y1 == y2:
                continue
            crosses = (py >= min(y1, y2)) & (py < max(y1, y2))
            x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (px < x_at)
        out |= inside
    return out


def apply_mask(frame: av.VideoFrame, luma: BOOL, chroma: BOOL) -> av.VideoFrame:
    """A copy of `frame` (yuv420p) with the masked pixels black."""
    pic = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
    arr = pic.to_ndarray()
    h, w = luma.shape
    y = arr[:h]
    y[luma] = BLACK_Y
    u = arr[h : h + h // 4].reshape(h // 2, w // 2)
    v = arr[h + h // 4 :].reshape(h // 2, w // 2)
    u[chroma] = NEUTRAL_UV
    v[chroma] = NEUTRAL_UV
    out = av.VideoFrame.from_ndarray(arr, format="yuv420p")
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out


FRAGMENTED = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": "1000000",
}
"""Fragmented MP4, about one fragment a second, written front to back (never seeks back):
each fragment can be sent while the next is encoded."""


class Appender(Protocol):
    """Where a progressive copy's bytes go (no `seek`: the muxer writes front to back)."""

    def write(self, data: bytes) -> int: ...


def mask_file(
    source: io.RawIOBase | str,
    dest: Path | Appender,
    masks: Sequence[PrivacyMask],
    *,
    progressive: bool = False,
    max_height: int | None = None,
) -> None:
    """Decode `source`, fill the masks, encode H.264 (libx264) into `dest`; audio copied.
    `progressive`: fragmented MP4 from a fast, low-latency encoder (ultrafast, zerolatency,
    a keyframe every second), so the first fragment is out after about a second of footage;
    else a `faststart` MP4 (exports). `max_height`: pictures taller are scaled down to it
    (same aspect). Blocking (a worker thread)."""
    x264: dict[str, str]
    if progressive:
        options = FRAGMENTED
        x264 = {"preset": "ultrafast", "tune": "zerolatency", "crf": "20", "threads": "1"}
    else:
        options = {"movflags": "+faststart"}
        x264 = {"preset": "veryfast", "crf": "20", "threads": "1"}
    target: Any = str(dest) if isinstance(dest, Path) else dest
    with av.open(source, "r") as src, av.open(target, "w", "mp4", options=options) as out:
        vin = src.streams.video[0]
        width, height = vin.codec_context.width, vin.codec_context.height
        scaled = max_height is not None and height > max_height
        if scaled:
            assert max_height is not None
            width = round(width * max_height / height / 2) * 2
            height = max_height - max_height % 2
        vout = out.add_stream("libx264", rate=vin.average_rate or 25)
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.time_base = vin.time_base
        if vin.time_base is not None:
            vout.codec_context.time_base = vin.time_base
        if progressive:
            x264["g"] = str(round(vin.average_rate or 25))
        vout.options = dict(x264)
        ain = src.streams.audio[0] if src.streams.audio else None
        aout = out.add_stream_from_template(ain) if ain is not None else None
        luma = polygon_mask(masks, width, height)
        chroma = luma[0::2, 0::2] | luma[1::2, 0::2] | luma[0::2, 1::2] | luma[1::2, 1::2]
        streams = [vin] if ain is None else [vin, ain]
        for packet in src.demux(streams):
            if packet.stream is vin:
                for frame in packet.decode():
                    assert isinstance(frame, av.VideoFrame)
                    if scaled:
                        picture = frame.reformat(width, height, format="yuv420p")
                        picture.pts, picture.time_base = frame.pts, frame.time_base
                        frame = picture
                    if masks:
                        frame = apply_mask(frame, luma, chroma)
                    for p in vout.encode(frame):
                        out.mux(p)
            elif aout is not None and packet.dts is not None and packet.size:
                packet.stream = aout
                out.mux(packet)
        for p in vout.encode(None):
            out.mux(p)


def mask_jpeg(data: bytes, masks: Sequence[PrivacyMask]) -> bytes:
    """A JPEG picture with the masks filled black, re-encoded (in its own full-range YUV, so
    the rest of the picture keeps its levels). Blocking."""
    with av.open(io.BytesIO(data), "r", format="mjpeg") as src:
        frame = next(src.decode(video=0))
    fmt = "yuvj420p" if frame.format.name == "yuvj420p" else "yuv420p"
    pic = frame if frame.format.name == fmt else frame.reformat(format=fmt)
    arr = pic.to_ndarray()
    h, w = pic.height, pic.width
    luma = polygon_mask(masks, w, h)
    chroma = luma[0::2, 0::2] | luma[1::2, 0::2] | luma[0::2, 1::2] | luma[1::2, 1::2]
    arr[:h][luma] = 0 if fmt == "yuvj420p" else BLACK_Y
    arr[h : h + h // 4].reshape(h // 2, w // 2)[chroma] = NEUTRAL_UV
    arr[h + h // 4 :].reshape(h // 2, w // 2)[chroma] = NEUTRAL_UV
    out = av.VideoFrame.from_ndarray(arr, format=fmt)
    out.pts = 0
    enc = av.CodecContext.create("mjpeg", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = w, h, "yuvj420p"
    enc.time_base = Fraction(1, 1)
    enc.options = {"qmin": "2", "qmax": "6"}
    if fmt != "yuvj420p":
        out = out.reformat(format="yuvj420p")
    return b"".join(bytes(p) for p in [*enc.encode(out), *enc.encode(None)])


@dataclass(frozen=True)
class MaskedCopy:
    path: Path
    size: int
    etag: str


class MaskJob:
    """A masked copy being made (progressive): its bytes so far are in `tmp`, `written` of
    them; once `done` (and no `error`) the whole copy is at `path`. Its state is shared
    between the encoding thread and readers' threads under `cond`."""

    def __init__(self, path: Path, etag: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.etag = etag
        self.cond = threading.Condition()
        self.written = 0
        self.running = False
        """True while frames are being encoded (a state flag for tests and metrics)."""
        self.done = False
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        """The muxer's output: appended to `tmp`, then readable. Encoding thread."""
        assert self._out is not None
        self._out.write(data)
        self._out.flush()
        with self.cond:
            self.written += len(data)
            self._wake()
        return len(data)

    def _wake(self) -> None:
        """Wakes the readers waiting on the loop (`more`); called holding `cond`."""
        self.cond.notify_all()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(self._changed.set)

    async def more(self, pos: int) -> tuple[int, bool]:
        """`wait` for the loop: never holds a worker thread while the encoder works."""
        while True:
            with self.cond:
                if self.error is not None:
                    raise self.error
                if self.written > pos or self.done:
                    return self.written, self.done
                changed = self._changed = asyncio.Event()
            await changed.wait()

    _out: BinaryIO | None = None

    def wait(self, pos: int) -> tuple[int, bool]:
        """Blocks until more than `pos` bytes are written or the job ended; (written, done).
        Raises the job's error. A reader's thread."""
        with self.cond:
            while self.written <= pos and not self.done:
                self.cond.wait()
            if self.error is not None:
                raise self.error
            return self.written, self.done

    def open(self) -> BinaryIO:
        """The copy's bytes for a reader, from the start (the finished file once done)."""
        with self.cond:
            if self.error is not None:
                raise self.error
            return open(self.path if self.done else self.tmp, "rb")


def video_entry(header: Header) -> bytes | None:
    """The sample entry type of a virtual MP4's first track (its video): b"avc1", b"hvc1"...
    Reads only the box headers on the way (a 24-hour header is tens of MB)."""
    start, end = 0, len(header)
    for kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"):
        pos = start
        while True:
            if pos + 8 > end:
                return None
            size, found = struct.unpack(">I4s", header[pos : pos + 8])
            head = 8
            if size == 1:
                size, head = struct.unpack(">Q", header[pos + 8 : pos + 16])[0], 16
            if size < head or pos + size > end:
                return None
            if found == kind:
                start, end = pos + head, pos + size
                break
            pos += size
    entry = header[start + 8 : start + 16]  # after version, flags and the entry count
    return entry[4:8] if len(entry) == 8 else None


def masks_key(masks: Sequence[PrivacyMask]) -> str:
    text = json.dumps([m.points for m in masks])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class MaskService:
    """See the module docstring. Built and used on the event loop."""

    def __init__(
        self,
        cache_dir: Path,
        max_jobs: int = 1,
        keep: int = 16,
        before_finish: threading.Event | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.keep = keep
        self._jobs = asyncio.Semaphore(max_jobs)
        self._making: dict[str, MaskJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.made = 0
        """Copies made since the start (each a decode and re-encode)."""
        self.before_finish = before_finish
        """If given (tests), a job waits for it before its last frames: an explicit hook to
        observe a copy that is still being made."""

    async def copy(
        self,
        vf: VirtualFile,
        etag: str,
        masks: Sequence[PrivacyMask],
        max_height: int | None = None,
    ) -> MaskedCopy | MaskJob:
        """The masked (or, with `max_height`, reduced H.264) copy of the recording `vf`
        (made once per ETag, masks and size): the finished copy if cached, else the job
        making it (started now, or shared with the requests already reading it). The job
        runs to the end even when its readers go, so the copy is cached for the player's
        next requests."""
        scale = "" if max_height is None else f"|{max_height}"
        key = hashlib.sha256(f"{etag}|{masks_key(masks)}{scale}".encode()).hexdigest()[:40]
        path = self.cache_dir / f"{key}{CACHE_SUFFIX}"
        tag = f'"m{key}"'
        size = await asyncio.to_thread(_size, path)
        if size is not None:
            return MaskedCopy(path, size, tag)
        job = self._making.get(key)
        if job is None:
            job = MaskJob(path, tag)
            self._making[key] = job
            task = asyncio.create_task(
                self._run(key, job, vf, masks, max_height), name=f"mask-{key[:8]}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return job

    async def _run(
        self,
        key: str,
        job: MaskJob,
        vf: VirtualFile,
        masks: Sequence[PrivacyMask],
        max_height: int | None,
    ) -> None:
        try:
            async with self._jobs:
                await asyncio.to_thread(self._make, vf, job, masks, max_height)
            self.made += 1
        except (av.FFmpegError, OSError) as err:
            log.warning("cannot make a privacy-masked copy: %s", err)
        finally:
            del self._making[key]

    def _make(
        self,
        vf: VirtualFile,
        job: MaskJob,
        masks: Sequence[PrivacyMask],
        max_height: int | None,
    ) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with open(job.tmp, "wb") as out:
                job._out = out
                with job.cond:
                    job.running = True
                mask_file(
                    VirtualFileIO(vf),
                    _Gated(job, self.before_finish),
                    masks,
                    progressive=True,
                    max_height=max_height,
                )
            os.replace(job.tmp, job.path)
        except BaseException as err:
            with job.cond:
                job.error = err
            raise
        finally:
            job.tmp.unlink(missing_ok=True)
            with job.cond:
                job.running = False
                job.done = True
                job._wake()
        self._trim()

    def _trim(self) -> None:
        copies = sorted(self.cache_dir.glob(f"*{CACHE_SUFFIX}"), key=lambda p: p.stat().st_mtime)
        for old in copies[: max(0, len(copies) - self.keep)]:
            old.unlink(missing_ok=True)


class _Gated:
    """The job's output; with a test's `before_finish` hook, the muxer's writes after the
    first `GATE_AFTER` bytes wait for it (the copy stays in progress meanwhile)."""

    def __init__(self, job: MaskJob, gate: threading.Event | None) -> None:
        self._job = job
        self._gate = gate

    def write(self, data: bytes) -> int:
        if self._gate is not None and self._job.written >= GATE_AFTER:
            self._gate.wait()
        return self._job.write(data)


GATE_AFTER = 256 << 10
"""Bytes a job writes before it waits on `MaskService.before_finish` (tests only)."""


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
