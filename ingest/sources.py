"""Where packets come from: the `Source` and `StreamOpener` seam, and RTSP cameras, its real
implementation (`ingest.testpattern` is the other: the built-in test camera).

An RTSP camera is read by our own client (`ingest.rtsp_session`, `ingest.rtsp_source`)
where it can be: RTSP over TCP, H.264/H.265 video, AAC or no audio, frames in presentation
order. Anything else goes to FFmpeg's RTSP demuxer through PyAV (`RtspSource`), and a camera
that needed it once keeps it.

Everything here runs on the recorder thread of one camera. FFmpeg's blocked reads are
interrupted by its own socket `timeout` option (cheap), never by closing the container from
another thread (unsafe) nor by PyAV's Python-level `timeout=` (it takes the GIL on every
poll); our client polls its socket with a deadline itself. Imports go down: the RTSP client
(`ingest.rtsp_session`, `ingest.rtsp_source`), `ingest.watchdog`, `ingest.errors`, PyAV.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import av
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.video.stream import VideoStream

from nvr.ingest.errors import (
    AuthRejected,
    CameraUnreachable,
    ConnectTimeout,
    StreamEnded,
    StreamError,
    StreamStalled,
    UnsupportedStream,
)
from nvr.ingest.redact import redact_text
from nvr.ingest.rtsp_session import NotForUs, RtspSession, TcpRefused
from nvr.ingest.rtsp_source import KEYFRAME_WAIT_SECONDS, NativeRtspSource
from nvr.ingest.watchdog import WATCHDOG, SocketCapture, Watched

log = logging.getLogger("nvr.ingest")

VIDEO_CODECS = frozenset({"h264", "hevc"})
PROBE_SECONDS = 0.5
"""How long `RtspOpener.probe_reachable` waits for a camera's RTSP answer."""


class Source(Protocol):
    """An open stream: one video stream, maybe one audio stream, and their packets."""

    @property
    def video(self) -> VideoStream | None:
        """The video template; a source may replace it at a keyframe (a new resolution):
        the recorder then starts a new segment with the new one. None: an audio-only camera
        (our own client only; then `audio` is set)."""
        ...

    audio: AudioStream | None
    description: str

    @property
    def audio_note(self) -> str:
        """Why the camera's audio is not recorded (empty if it is, or there is none)."""
        ...

    def packets(self) -> Iterator[av.Packet[Any]]:
        """Packets of `video` and `audio` in arrival order, each in its stream's time base;
        raises StreamError subclasses."""
        ...

    def close(self) -> None: ...


class StreamOpener(Protocol):
    """Opens a camera's stream (blocking; called on the recorder thread)."""

    def open(self) -> Source: ...

    def probe_reachable(self) -> bool:
        """Whether the camera answers again (blocking, bounded to about half a second)."""
        ...


def classify(
    err: BaseException, *, connecting: bool, secrets: tuple[str | None, ...]
) -> StreamError:
    """Map an FFmpeg/OS error to a typed StreamError with a redacted message."""
    code = getattr(err, "errno", None)
    text = getattr(err, "strerror", None) or str(err)
    detail = redact_text(f"{type(err).__name__}: {text}", *secrets)
    if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET):
        return CameraUnreachable(detail) if connecting else StreamEnded(detail)
    if code == errno.ETIMEDOUT or isinstance(err, TimeoutError):
        return ConnectTimeout(detail) if connecting else StreamStalled(detail)
    if code == errno.EACCES or "401" in text or "Unauthorized" in text:
        return AuthRejected(detail)
    if isinstance(err, EOFError | av.error.EOFError) or code == errno.EPIPE:
        return StreamEnded(detail)
    if code == errno.EIO and not connecting:
        return StreamEnded(detail)
    return StreamError(detail)


class RtspSource:
    """An RTSP stream demuxed by FFmpeg."""

    def __init__(
        self,
        container: InputContainer,
        description: str,
        secrets: tuple[str | None, ...],
        watch: Watched | None = None,
    ) -> None:
        self._container = container
        self._secrets = secrets
        self._watch = watch
        self.description = description
        videos = [s for s in container.streams.video if s.codec_context.name in VIDEO_CODECS]
        if not videos:
            found = ", ".join(s.codec_context.name for s in container.streams.video) or "none"
            container.close()
            raise UnsupportedStream(f"no H.264/H.265 video stream (found {found})")
        self.video = videos[0]
        self.audio: AudioStream | None = (
            container.streams.audio[0] if container.streams.audio else None
        )
        if watch is not None and self.video.time_base is not None:
            watch.time_base = float(self.video.time_base)  # before the first packet is read

    @property
    def audio_note(self) -> str:
        return ""  # an audio codec MP4 cannot hold is found by the recorder

    def packets(self) -> Iterator[av.Packet[Any]]:
        streams = [self.video] if self.audio is None else [self.video, self.audio]
        watch = self._watch
        vindex = self.video.index
        try:
            # The per-packet path: two attribute stores for the stall watchdog, nothing else.
            for packet in self._container.demux(streams):
                if packet.size == 0:
                    break
                if watch is not None and packet.stream_index == vindex:
                    watch.ts = packet.dts
                    watch.seen += 1
                yield packet
        except (av.FFmpegError, OSError) as err:
            if watch is not None and watch.fired:
                raise self._stalled() from None
            raise classify(err, connecting=False, secrets=self._secrets) from None
        if watch is not None and watch.fired:
            raise self._stalled()
        raise StreamEnded("camera ended the stream")

    def _stalled(self) -> StreamStalled:
        seconds = self._watch.stall_seconds if self._watch is not None else 0.0
        return StreamStalled(f"no media for {seconds:.1f} s while the connection stayed open")

    def camera_realtime_us(self) -> int | None:
        """The camera's clock at video pts 0 (µs since the Unix epoch): FFmpeg maps its
        first RTCP sender report there (`start_time_realtime`)."""
        return self._container.start_time_realtime

    def close(self) -> None:
        if self._watch is not None:
            WATCHDOG.unregister(self._watch)  # before the descriptor can be closed
        self._container.close()


class RtspOpener:
    """Opens `url` with credentials added only at connect time, never logged."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None,
        password: str | None,
        transport: str,
        timeout_s: float,
        camera: str = "",
        keyframe_wait_s: float = KEYFRAME_WAIT_SECONDS,
    ) -> None:
        self._camera = camera
        self._keyframe_wait_s = keyframe_wait_s
        self.longest_gop_s = 0.0
        """The longest keyframe interval seen on this camera: a reconnect waits for at
        least three of them before it gives up on a keyframe."""
        self._url = url
        self._username = username
        self._password = password
        self._transport = transport
        self._timeout_s = timeout_s
        parts = urlsplit(url)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or (322 if parts.scheme == "rtsps" else 554)
        self._ffmpeg_reason: str | None = None
        """Why this camera needs FFmpeg's demuxer, once our client found out."""
        self._ffmpeg_transport = transport
        """FFmpeg's `rtsp_transport`: the configured one, or udp once TCP was refused."""
        self._skipped_media = ""
        """The SDP sections last logged as left out (logged again only when they change)."""

    def _full_url(self) -> str:
        if self._username is None:
            return self._url
        parts = urlsplit(self._url)
        auth = quote(self._username, safe="")
        if self._password is not None:
            auth += ":" + quote(self._password, safe="")
        netloc = f"{auth}@{parts.netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def open(self) -> Source:
        """Our own RTSP client where it applies (TCP, H.264/H.265, AAC or no audio, no
        B-frames), else FFmpeg's demuxer; a camera that needed FFmpeg once keeps it."""
        if self._transport == "tcp" and self._scheme == "rtsp" and self._ffmpeg_reason is None:
            try:
                return self._open_native()
            except TcpRefused as why:
                # A UDP-only camera with the default transport: record it over UDP rather
                # than fail forever (what to set instead is in the log line).
                self._ffmpeg_transport = "udp"
                self._prefer_ffmpeg(
                    f'{why}; recording over udp (set transport = "udp" for this camera)'
                )
            except NotForUs as why:
                self._prefer_ffmpeg(str(why))
        return self._open_ffmpeg()

    def _prefer_ffmpeg(self, reason: str) -> None:
        if self._ffmpeg_reason is None:
            self._ffmpeg_reason = reason
            log.warning(
                "camera %s: recording through FFmpeg's RTSP demuxer from now on: %s",
                self._camera,
                reason,
            )

    def _open_native(self) -> NativeRtspSource:
        session = RtspSession(
            self._url, username=self._username, password=self._password, timeout_s=self._timeout_s
        )
        source: NativeRtspSource | None = None
        try:
            session.connect()
            if session.skipped_media and session.skipped_media != self._skipped_media:
                self._skipped_media = session.skipped_media
                log.warning(
                    "camera %s: ignoring SDP media sections that cannot be parsed, recording "
                    "the others: %s",
                    self._camera,
                    session.skipped_media,
                )
            source = NativeRtspSource(
                session,
                self._timeout_s,
                f"rtsp {self._host}:{self._port}",
                self._prefer_ffmpeg,
                self._learn_gop,
            )
            source.start(keyframe_seconds=self.keyframe_wait_s())
        except BaseException:
            if source is not None:
                source.close()
            else:
                session.close()
            raise
        if session.anchor_note:
            log.warning("camera %s: %s", self._camera, session.anchor_note)
        return source

    def keyframe_wait_s(self) -> float:
        """How long a connection waits for its first keyframe while media arrives."""
        return max(self._keyframe_wait_s, 3 * self.longest_gop_s)

    def _learn_gop(self, seconds: float) -> None:
        self.longest_gop_s = max(self.longest_gop_s, seconds)

    def _open_ffmpeg(self) -> RtspSource:
        micros = str(int(self._timeout_s * 1_000_000))
        options = {
            "rtsp_transport": self._ffmpeg_transport,
            "timeout": micros,  # socket I/O timeout: a silent camera raises ETIMEDOUT
            "allowed_media_types": "video+audio",
            "analyzeduration": "2000000",
            "probesize": "1000000",
        }
        if self._ffmpeg_transport == "udp":
            options["buffer_size"] = str(4 * 1024 * 1024)
            options["reorder_queue_size"] = "64"
        secrets = (self._password, self._username)
        capture = SocketCapture(self._host, self._port)
        tcp_refused = False
        with capture:
            started = time.monotonic()
            try:
                container = av.open(self._full_url(), options=options, timeout=None)
            except (av.FFmpegError, OSError) as err:
                tcp_refused = (
                    getattr(err, "errno", None) == errno.EPROTONOSUPPORT
                    and self._ffmpeg_transport == "tcp"
                )
                if tcp_refused:
                    pass  # SETUP answered 461: retried over UDP below
                elif time.monotonic() - started >= 0.9 * self._timeout_s:
                    # FFmpeg reports an unanswered handshake as invalid data once its socket
                    # timeout expires; the elapsed time says what really happened.
                    detail = redact_text(f"{type(err).__name__}: {err.strerror}", *secrets)
                    raise ConnectTimeout(
                        f"no RTSP answer within {self._timeout_s:.1f} s ({detail})"
                    ) from None
                else:
                    raise classify(err, connecting=True, secrets=secrets) from None
        if tcp_refused:
            # A UDP-only camera that FFmpeg's demuxer reads anyway (B-frames, rtsps, ...).
            self._ffmpeg_transport = "udp"
            log.warning(
                "camera %s: refuses RTP over TCP; recording over udp from now on "
                '(set transport = "udp" for this camera)',
                self._camera,
            )
            return self._open_ffmpeg()
        fd = capture.fd
        watch = None
        if fd is not None:
            watch = WATCHDOG.register(self._camera, fd, self._timeout_s)
        try:
            return RtspSource(
                container, f"rtsp {self._host}:{self._port} (FFmpeg demuxer)", secrets, watch
            )
        except StreamError:
            if watch is not None:
                WATCHDOG.unregister(watch)
            raise

    def probe_reachable(self) -> bool:
        """Whether the camera's RTSP server answers: an OPTIONS request gets any RTSP reply
        (401 too: the server is alive) within `PROBE_SECONDS`. A TCP connect alone is not
        enough: a camera whose server hangs, or a port held by something that never
        answers, accepts connections all the same."""
        deadline = time.monotonic() + PROBE_SECONDS
        request = (
            f"OPTIONS {self._url} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: nvr-probe\r\n\r\n"
        ).encode()
        try:
            with socket.create_connection((self._host, self._port), timeout=PROBE_SECONDS) as raw:
                sock: socket.socket = raw
                if self._scheme == "rtsps":
                    # Only "is a server there": no credentials are sent, nothing is trusted.
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    raw.settimeout(max(0.01, deadline - time.monotonic()))
                    sock = context.wrap_socket(raw, server_hostname=self._host)
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.sendall(request)
                reply = b""
                while len(reply) < 7:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                return reply.startswith(b"RTSP/1.")
        except (OSError, ValueError):
            return False
