"""WebRTC with aiortc, H.264 passed through, never encoded: `PassthroughTrack` hands out the
camera's own access units, packetised into RTP payloads once per frame for all the camera's
viewers and sent by `nvr.api.live.rtp`'s cheaper RTP loop, which `answer` installs in the
session's aiortc sender (aiortc's own loop, fed `av.Packet`s by `recv`, is the fallback).
`answer` makes the peer connection of one WHEP offer with an H.264-only transceiver created
before the offer is applied (else aiortc answers VP8). ICE host candidates come from
`[api] webrtc_addresses` (see `host_addresses`); no STUN or TURN server is ever asked.
`OpusTrack` is the camera's audio for an offer that asks for audio: decoded with PyAV
(`nvr.api.live.audio`, on a worker thread), encoded to Opus by aiortc's sender. Runs on the
daemon's event loop (aiortc is asyncio)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import aioice.ice
import av
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from nvr.api.live.annexb import with_parameter_sets
from nvr.api.live.audio import AudioDecoder, AudioFeed
from nvr.api.live.hub import Viewer
from nvr.api.live.rtp import frame_payloads, install
from nvr.ingest.tap import TapFrame

_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "nvr_webrtc_addresses", default=None
)
_aioice_host_addresses = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's host-address discovery, unless the calling context chose the addresses."""
    chosen = _ADDRESSES.get()
    if chosen is None:
        return _aioice_host_addresses(use_ipv4, use_ipv6)
    out = []
    for text in chosen:
        v6 = ipaddress.ip_address(text).version == 6
        if use_ipv6 if v6 else use_ipv4:
            out.append(text)
    return out


# aioice has no option for the candidate addresses and never offers 127.0.0.1: its module
# function is wrapped once, and only a context that set `_ADDRESSES` (through
# `host_addresses`) gets other addresses than aioice would pick. Gathering runs in tasks
# started inside that context, which inherit it.
aioice.ice.get_host_addresses = _host_addresses


@contextlib.contextmanager
def host_addresses(addresses: tuple[str, ...] | list[str]) -> Iterator[None]:
    """Gather ICE host candidates on exactly `addresses` inside this block (empty: aioice's
    own choice)."""
    token = _ADDRESSES.set(tuple(addresses) or None)
    try:
        yield
    finally:
        _ADDRESSES.reset(token)


RTP_CLOCK = Fraction(1, 90_000)
"""H.264's RTP clock rate."""


def rtc_configuration() -> RTCConfiguration:
    """No ICE servers: aiortc's default would ask Google's STUN server."""
    return RTCConfiguration(iceServers=[])


def h264_only(kind: str = "video") -> list[object]:
    """aiortc's H.264 codecs (and their retransmission), for `setCodecPreferences`."""
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in codecs if c.mimeType in ("video/H264", "video/rtx")]


def opus_only() -> list[object]:
    """aiortc's Opus codec, for `setCodecPreferences` (else it could answer G.711)."""
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/opus"]


class PassthroughTrack(MediaStreamTrack):
    """A video track whose `recv` returns the camera's access units as `av.Packet`s (aiortc
    then packetises them as they are). The GOP handed over at joining is sent with its
    timestamps pressed together just before the latest one, so the receiver decodes it at
    once and shows the latest picture instead of replaying the past second."""

    kind = "video"

    def __init__(self, viewer: Viewer, on_frame: Callable[[TapFrame], None] | None = None) -> None:
        super().__init__()
        self._viewer = viewer
        self._backlog = viewer.backlog
        self._on_frame = on_frame
        self._backlog_end: int | None = None
        self._last = -1
        self.sent = 0
        self.source_ended = False
        """The camera's stream ended (else aiortc stopped the track: the peer is gone)."""

    async def _next(self) -> tuple[TapFrame, int]:
        """The next frame and its pts (in the stream's time base) as this viewer sends it."""
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._viewer.get()
        if frame is None or frame.stream.codec != "h264":
            self.source_ended = True
            self.stop()
            raise MediaStreamError
        pts = frame.pts
        if self._backlog > 0:
            # Within the first GOP: count back from its last frame, one tick apart.
            if self._backlog_end is None:
                self._backlog_end = self._viewer.backlog_last_pts
            pts = self._backlog_end - (self._backlog - 1)
            self._backlog -= 1
        pts = max(pts, self._last + 1)
        self._last = pts
        self.sent += 1
        if self._on_frame is not None:
            self._on_frame(frame)
        return frame, pts

    async def recv(self) -> av.Packet[Any]:
        """The next access unit for aiortc's own sender (used when `rtp.install` could not
        replace it)."""
        frame, pts = await self._next()
        stream = frame.stream
        data = frame.data
        if frame.keyframe:
            data = with_parameter_sets("h264", data, stream.extradata)
        packet = av.Packet(data)
        packet.pts = pts
        packet.dts = pts
        packet.time_base = stream.time_base if stream.time_base else Fraction(1, 90_000)
        return packet

    async def payloads(self) -> tuple[list[bytes], int]:
        """The next access unit's RTP payloads (shared with the camera's other viewers) and
        its RTP time (90 kHz), for `rtp.install`'s sender."""
        frame, pts = await self._next()
        tb = frame.stream.time_base
        if tb and tb != RTP_CLOCK:
            pts = int(pts * tb * 90_000)
        return frame_payloads(frame), pts

    def stop(self) -> None:
        super().stop()
        self._viewer.close()


async def answer(
    offer_sdp: str,
    track: PassthroughTrack,
    addresses: tuple[str, ...],
    audio: MediaStreamTrack | None = None,
) -> tuple[RTCPeerConnection, str]:
    """The peer connection for one WHEP offer and its SDP answer (candidates included: WHEP
    answers are complete, no trickle); with `audio`, an Opus-only audio transceiver for the
    offer's audio section. Raises ValueError for an offer we cannot answer."""
    pc = RTCPeerConnection(rtc_configuration())
    try:
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(h264_only())  # type: ignore[arg-type]
        install(transceiver.sender, track)
        if audio is not None:
            sound = pc.addTransceiver(audio, direction="sendonly")
            sound.setCodecPreferences(opus_only())  # type: ignore[arg-type]
        with host_addresses(addresses):
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            local = await pc.createAnswer()
            assert local is not None
            await pc.setLocalDescription(local)
    except Exception as err:
        await pc.close()
        raise ValueError(f"cannot answer this offer: {err}") from err
    desc = pc.localDescription
    return pc, desc.sdp


class OpusTrack(MediaStreamTrack):
    """An audio track whose `recv` returns the camera's audio decoded (s16); aiortc encodes
    it to Opus. Ends when its feed ends."""

    kind = "audio"

    def __init__(self, feed: AudioFeed) -> None:
        super().__init__()
        self._feed = feed
        self._decoder = AudioDecoder()
        self._pending: list[av.AudioFrame] = []
        self.sent = 0
        self.failed = 0
        """Audio packets that did not decode (skipped)."""

    async def recv(self) -> av.AudioFrame:
        while not self._pending:
            if self.readyState != "live":
                raise MediaStreamError
            frame = await self._feed.get()
            if frame is None:
                self.stop()
                raise MediaStreamError
            try:
                self._pending = await asyncio.to_thread(self._decoder.decode, frame)
            except (av.FFmpegError, ValueError):
                self.failed += 1  # a damaged packet: the next one decodes on its own
        self.sent += 1
        return self._pending.pop(0)

    def stop(self) -> None:
        super().stop()
        self._feed.close()
