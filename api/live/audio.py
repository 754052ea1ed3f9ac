"""Live audio: `AudioFeed`, one viewer's audio packets as the recorder writes them
(`PacketTap.subscribe_audio`: AAC, or G.711 as recorded), and `AudioDecoder`, those packets
decoded with PyAV into s16 `av.AudioFrame`s. Browsers take no AAC over WebRTC, so a WHEP
session gets them as Opus (`nvr.api.live.webrtc.OpusTrack`: aiortc's sender encodes the
decoded frames with libopus). The recordings are not touched. No aiortc here (the MSE
WebSocket uses the feed too).

Threads: the tap calls `AudioFeed._from_recorder` on the recorder's thread (`rec-<camera>`),
which only hands the frame to the event loop (`loop.call_soon_threadsafe`) into a bounded
queue (a viewer that falls behind loses its oldest audio, never the recorder's time).
`AudioDecoder` is blocking: a worker thread (`asyncio.to_thread`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import av

from nvr.api.live.hub import AudioSource
from nvr.ingest.tap import TapAudioFrame, TapAudioStream

AUDIO_QUEUE = 100
"""Audio frames a viewer may be behind (2-6 s of AAC) before the oldest are dropped."""


class AudioFeed:
    """One viewer's audio from a camera's tap, on the event loop: `get()` the next frame
    (None once closed)."""

    def __init__(self, source: AudioSource, limit: int = AUDIO_QUEUE) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[TapAudioFrame | None] = asyncio.Queue(limit)
        self.dropped = 0
        self.closed = False
        self._off: Callable[[], None] | None = source.subscribe_audio(self._from_recorder)

    def _from_recorder(self, frame: TapAudioFrame) -> None:
        """On the recorder's thread: hand over only."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the API has stopped
            self._loop.call_soon_threadsafe(self._put, frame)

    def _put(self, frame: TapAudioFrame | None) -> None:
        if self.closed and frame is not None:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(frame)

    async def get(self) -> TapAudioFrame | None:
        if self.closed and self._queue.empty():
            return None
        return await self._queue.get()

    def close(self) -> None:
        """Leave the tap (idempotent); a waiting `get` returns None."""
        if self._off is not None:
            self._off()
            self._off = None
        if not self.closed:
            self._put(None)
            self.closed = True


class AudioDecoder:
    """The camera's audio packets to s16 frames (mono or stereo, the camera's rate); a new
    decoder whenever the stream's parameters change. Blocking (PyAV)."""

    def __init__(self) -> None:
        self._stream: TapAudioStream | None = None
        self._codec: av.AudioCodecContext | None = None
        self._resampler: av.AudioResampler | None = None

    def decode(self, frame: TapAudioFrame) -> list[av.AudioFrame]:
        stream = frame.stream
        if stream is not self._stream or self._codec is None:
            codec = av.CodecContext.create(stream.codec, "r")
            assert isinstance(codec, av.AudioCodecContext)
            codec.sample_rate = stream.sample_rate
            codec.layout = "stereo" if stream.channels > 1 else "mono"
            if stream.extradata:
                codec.extradata = stream.extradata
            self._codec, self._stream = codec, stream
            self._resampler = av.AudioResampler(
                format="s16", layout=codec.layout.name, rate=stream.sample_rate
            )
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = frame.pts
        packet.time_base = stream.time_base
        assert self._resampler is not None
        out: list[av.AudioFrame] = []
        for decoded in self._codec.decode(packet):
            out += self._resampler.resample(decoded)
        return out
