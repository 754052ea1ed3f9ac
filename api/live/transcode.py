"""Live view of H.265 cameras, which Chromium cannot decode: `TranscodeSource` makes an
H.264 stream at reduced resolution (PyAV: the camera's decoder, then libx264 `ultrafast` /
`zerolatency`, an IDR wherever the camera has a keyframe), and `SnapshotSource` turns the
camera's keyframes into JPEG pictures when the transcode budget is spent. Recordings are never
touched: both read a live hub's frames.

Threads: each source, while subscribed, has a task on the event loop moving frames from its
hub viewer into a bounded thread queue, and a worker thread (`live-x264-<camera>`,
`live-jpeg-<camera>`) doing the PyAV work and handing results to the subscriber (a
`LiveHub`, which passes them back to the loop with `call_soon_threadsafe`)."""

from __future__ import annotations

import abc
import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction

import av

from nvr.api.live.annexb import with_parameter_sets
from nvr.api.live.hub import LiveHub, Viewer
from nvr.api.masking import BOOL, apply_mask, polygon_mask
from nvr.config.models import PrivacyMask
from nvr.ingest.tap import TapFrame, TapStream

log = logging.getLogger("nvr.api.live")

MAX_HEIGHT = 360
"""Transcoded and snapshot pictures are scaled down to at most this height."""
QUEUE = 30


def reduced(width: int, height: int, max_height: int = MAX_HEIGHT) -> tuple[int, int]:
    """A size at most `max_height` high with the same aspect, both sides even."""
    if height <= max_height:
        return width - width % 2, height - height % 2
    w = round(width * max_height / height)
    return w - w % 2, max_height


class _WorkerSource(abc.ABC):
    """A packet source fed by a hub viewer and produced on a worker thread."""

    kind = "worker"

    def __init__(self, name: str, hub: LiveHub, keyframes_only: bool) -> None:
        self.name = name
        self._hub = hub
        self._keyframes_only = keyframes_only
        self._subscriber: Callable[[TapFrame], None] | None = None
        self._viewer: Viewer | None = None
        self._pump: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue[TapFrame | None] = queue.Queue(QUEUE)

    @property
    def active(self) -> bool:
        return self._subscriber is not None

    def subscribe(
        self, fn: Callable[[TapFrame], None], *, keyframes_only: bool = False
    ) -> Callable[[], None]:
        """Start (on the event loop): one subscriber, the hub of this source."""
        self._subscriber = fn
        self._viewer = self._hub.join(keyframes_only=self._keyframes_only)
        self._queue = queue.Queue(QUEUE)
        self._thread = threading.Thread(
            target=self._work,
            args=(self._queue, fn),
            name=f"live-{self.kind}-{self.name}",
            daemon=True,
        )
        self._thread.start()
        self._pump = asyncio.create_task(self._feed(self._viewer, self._queue), name=self.name)
        return self.stop

    def stop(self) -> None:
        """Stop (on the event loop; idempotent): the thread ends after its current frame."""
        self._subscriber = None
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            with_room = self._queue
            while True:
                try:
                    with_room.get_nowait()
                except queue.Empty:
                    break
            with_room.put_nowait(None)

    async def _feed(self, viewer: Viewer, out: queue.Queue[TapFrame | None]) -> None:
        skipping = False
        while True:
            frame = await viewer.get()
            if frame is None:
                return
            if skipping and not frame.keyframe:
                continue
            try:
                out.put_nowait(frame)
                skipping = False
            except queue.Full:  # the worker is behind: restart at the next keyframe
                skipping = True

    @abc.abstractmethod
    def _work(self, q: queue.Queue[TapFrame | None], out: Callable[[TapFrame], None]) -> None:
        """The worker thread: turn the frames from `q` into frames for `out`."""


def masks_at(masks: Sequence[PrivacyMask], width: int, height: int) -> tuple[BOOL, BOOL]:
    """The luma and chroma (4:2:0) pixels inside the privacy masks at this size."""
    luma = polygon_mask(masks, width, height)
    chroma = luma[0::2, 0::2] | luma[1::2, 0::2] | luma[0::2, 1::2] | luma[1::2, 1::2]
    return luma, chroma


class TranscodeSource(_WorkerSource):
    """H.265 (or anything PyAV decodes) to H.264 at reduced resolution, for live viewers; with
    `masks`, the privacy masks filled black in every picture (R10), whatever the codec."""

    kind = "x264"

    def __init__(self, name: str, hub: LiveHub, masks: Sequence[PrivacyMask] = ()) -> None:
        super().__init__(name, hub, keyframes_only=False)
        self.masks = list(masks)

    def _work(self, q: queue.Queue[TapFrame | None], out: Callable[[TapFrame], None]) -> None:
        decoder: av.VideoCodecContext | None = None
        encoder: av.VideoCodecContext | None = None
        source: TapStream | None = None
        stream: TapStream | None = None
        masked: tuple[BOOL, BOOL] | None = None
        while True:
            frame = q.get()
            if frame is None:
                return
            try:
                if frame.stream != source:
                    if not frame.keyframe:
                        continue
                    source = frame.stream
                    decoder = _decoder(source)
                    encoder = None
                assert decoder is not None
                data = frame.data
                if frame.keyframe:
                    data = with_parameter_sets(source.codec, data, source.extradata)
                packet = av.Packet(data)
                packet.pts = frame.pts
                packet.dts = frame.dts
                packet.time_base = source.time_base
                for picture in decoder.decode(packet):
                    if encoder is None:
                        w, h = reduced(picture.width, picture.height)
                        encoder = _encoder(w, h, source.time_base)
                        stream = TapStream("h264", w, h, b"", source.time_base)
                        masked = masks_at(self.masks, w, h) if self.masks else None
                    scaled = picture.reformat(encoder.width, encoder.height, format="yuv420p")
                    scaled.time_base = source.time_base
                    if masked is not None:
                        scaled = apply_mask(scaled, *masked)
                    scaled.pts = picture.pts if picture.pts is not None else frame.pts
                    scaled.time_base = source.time_base
                    scaled.pict_type = (
                        av.video.frame.PictureType.I
                        if picture.key_frame
                        else av.video.frame.PictureType.NONE
                    )
                    assert stream is not None
                    for encoded in encoder.encode(scaled):
                        pts = encoded.pts if encoded.pts is not None else frame.pts
                        dts = encoded.dts if encoded.dts is not None else pts
                        out(
                            TapFrame(
                                stream,
                                bytes(encoded),
                                encoded.is_keyframe,
                                pts,
                                dts,
                                frame.duration,
                                frame.arrival,
                            )
                        )
            except (av.FFmpegError, ValueError) as err:
                log.warning("live %s: transcoding failed (%s); restarting", self.name, err)
                source = None
                decoder = encoder = None


class SnapshotSource(_WorkerSource):
    """The camera's keyframes as JPEG pictures (`TapStream.codec` "mjpeg") at reduced size,
    privacy masks filled."""

    kind = "jpeg"

    def __init__(self, hub: LiveHub, masks: Sequence[PrivacyMask] = ()) -> None:
        super().__init__(f"{hub.name}~jpeg", hub, keyframes_only=True)
        self.masks = list(masks)

    def _work(self, q: queue.Queue[TapFrame | None], out: Callable[[TapFrame], None]) -> None:
        while True:
            frame = q.get()
            if frame is None:
                return
            try:
                jpeg, w, h = keyframe_jpeg(frame, self.masks)
            except (av.FFmpegError, ValueError) as err:
                log.warning("live %s: no snapshot of a keyframe (%s)", self.name, err)
                continue
            stream = TapStream("mjpeg", w, h, b"", frame.stream.time_base)
            out(TapFrame(stream, jpeg, True, frame.pts, frame.dts, 0, frame.arrival))


def keyframe_jpeg(
    frame: TapFrame, masks: Sequence[PrivacyMask] = (), max_height: int = MAX_HEIGHT
) -> tuple[bytes, int, int]:
    """One keyframe decoded on its own, masks filled, encoded as JPEG at reduced size.
    Blocking."""
    source = frame.stream
    decoder = _decoder(source)
    packet = av.Packet(with_parameter_sets(source.codec, frame.data, source.extradata))
    pictures = [*decoder.decode(packet), *decoder.decode(None)]
    if not pictures:
        raise ValueError("the keyframe decoded to no picture")
    picture = pictures[0]
    w, h = reduced(picture.width, picture.height, max_height)
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height = w, h
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    scaled = picture.reformat(w, h, format="yuv420p")
    scaled.time_base = source.time_base  # a lone packet's picture has none (apply_mask copies it)
    if masks:
        scaled = apply_mask(scaled, *masks_at(masks, w, h))
    scaled = scaled.reformat(format="yuvj420p")
    scaled.pts = 0
    data = b"".join(bytes(p) for p in [*encoder.encode(scaled), *encoder.encode(None)])
    return data, w, h


def _decoder(stream: TapStream) -> av.VideoCodecContext:
    decoder = av.CodecContext.create(stream.codec, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    if stream.extradata:
        decoder.extradata = stream.extradata
    decoder.thread_count = 1
    return decoder


def _encoder(width: int, height: int, time_base: Fraction) -> av.VideoCodecContext:
    encoder = av.CodecContext.create("libx264", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = time_base
    encoder.framerate = Fraction(25)
    encoder.gop_size = 250  # an IDR wherever the camera has a keyframe (pict_type I)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"}
    encoder.thread_count = 1
    return encoder
