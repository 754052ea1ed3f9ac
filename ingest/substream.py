"""`Substreams`: cameras' low-resolution substreams (`live_url`) for live view, pulled through
our RTSP client (`RtspOpener`, the recorder's own) only while someone watches, never
recorded. Each camera's `SubstreamPuller` is a packet source like the recorder's tap: the API's
live hub subscribes to it, and the first subscriber starts a thread (`live-sub-<camera>`)
that connects, hands every video packet to the tap (`nvr.ingest.tap`) and reconnects with
back-off (1 s up to 10 s) while subscribed; the last unsubscription stops it after the packet
in hand (or the read timeout, `stall_seconds`). Subscribing and unsubscribing happen on any
thread (the API's event loop); the packets are published on the puller's thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction

from nvr.config import NvrConfig
from nvr.config.models import CameraConfig
from nvr.ingest.errors import StreamError
from nvr.ingest.sources import RtspOpener, StreamOpener
from nvr.ingest.tap import PacketTap, TapFrame, TapStream, tap_stream

log = logging.getLogger("nvr.ingest.substream")

RETRY_S = (1.0, 2.0, 5.0, 10.0)


def substream_opener(camera: CameraConfig) -> StreamOpener:
    """Our RTSP client on the camera's `live_url` (same credentials; read now, never logged)."""
    assert camera.live_url is not None
    return RtspOpener(
        camera.live_url,
        username=camera.username,
        password=camera.password(),
        transport=camera.transport,
        timeout_s=camera.stall_seconds,
        camera=f"{camera.name}~sub",
        keyframe_wait_s=camera.keyframe_wait_seconds,
    )


class SubstreamPuller:
    """One camera's substream while subscribed (see the module docstring)."""

    def __init__(self, camera: str, opener: StreamOpener) -> None:
        self.camera = camera
        self.tap = PacketTap(f"{camera}~sub")
        self._opener = opener
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self.connections = 0

    def subscribe(
        self, fn: Callable[[TapFrame], None], *, keyframes_only: bool = False
    ) -> Callable[[], None]:
        leave = self.tap.subscribe(fn, keyframes_only=keyframes_only)
        with self._lock:
            if self._stop is None:
                self._stop = threading.Event()
                threading.Thread(
                    target=self._run,
                    args=(self._stop,),
                    name=f"live-sub-{self.camera}",
                    daemon=True,
                ).start()

        def unsubscribe() -> None:
            leave()
            with self._lock:
                if self.tap.subscribers == 0 and self._stop is not None:
                    self._stop.set()
                    self._stop = None

        return unsubscribe

    def _run(self, stop: threading.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                self._pull(stop)
                attempt = 0
            except StreamError as err:
                if stop.is_set():
                    break
                delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                attempt += 1
                log.warning(
                    "camera %s: substream failed (%s); trying again in %.0f s",
                    self.camera,
                    err,
                    delay,
                )
                stop.wait(delay)
        log.info("camera %s: substream closed (nobody watching)", self.camera)

    def _pull(self, stop: threading.Event) -> None:
        source = self._opener.open()
        self.connections += 1
        try:
            video = source.video
            if video is None:
                raise StreamError("the substream has no video")
            log.info("camera %s: substream open (%s)", self.camera, source.description)
            stream: TapStream | None = None
            last_dts: int | None = None
            for packet in source.packets():
                if stop.is_set():
                    return
                if packet.stream_index != video.index:
                    continue
                current = source.video  # replaced at a keyframe with a new resolution
                if stream is None or (current is not None and current is not video):
                    video = current or video
                    cc = video.codec_context
                    tb = video.time_base or Fraction(1, 90_000)
                    stream = tap_stream(cc.name, cc.width, cc.height, cc.extradata, tb)
                dts = packet.dts if packet.dts is not None else packet.pts
                if dts is None:
                    dts = 0 if last_dts is None else last_dts + int(packet.duration or 1)
                if last_dts is not None and dts <= last_dts:
                    dts = last_dts + 1
                last_dts = dts
                pts = packet.pts if packet.pts is not None else dts
                if self.tap.wants(packet.is_keyframe):
                    self.tap.publish(
                        TapFrame(
                            stream,
                            bytes(packet),
                            packet.is_keyframe,
                            pts,
                            dts,
                            int(packet.duration or 0),
                            time.monotonic(),
                        )
                    )
        finally:
            source.close()


class Substreams:
    """The pullers of the cameras that have a `live_url`, made on first use; `source` is
    the API's `SubstreamProvider`. A reloaded config (`reconfigure`) applies to pullers made
    after it."""

    def __init__(
        self, config: NvrConfig, opener: Callable[[CameraConfig], StreamOpener] = substream_opener
    ) -> None:
        self._config = config
        self._opener = opener
        self._pullers: dict[str, SubstreamPuller] = {}
        self._lock = threading.Lock()

    def reconfigure(self, config: NvrConfig) -> None:
        with self._lock:
            self._config = config
            for name in list(self._pullers):
                if self._pullers[name].tap.subscribers == 0:
                    del self._pullers[name]

    def source(self, camera: str) -> SubstreamPuller | None:
        with self._lock:
            found = self._pullers.get(camera)
            if found is not None:
                return found
            cam = next((c for c in self._config.cameras if c.name == camera), None)
            if cam is None or cam.live_url is None:
                return None
            found = self._pullers[camera] = SubstreamPuller(camera, self._opener(cam))
            return found
