"""Our own RTSP client for the usual camera: RTSP over TCP with RTP interleaved on the same
connection, H.264 or H.265 video, AAC audio or none. `RtspOpener` tries it first and falls
back to FFmpeg's RTSP demuxer (`NotForUs`) for anything else: UDP, other codecs, interleaved
packetization, B-frames (RTP carries no decode timestamps, FFmpeg's parser derives them).

Why our own: FFmpeg's demuxer reads the connection three times per RTP packet (marker,
length, body), each read a `poll` and a `recv`: about 2,300 system calls a second for one
4 Mbit/s camera, 40% of its CPU time in the kernel. Here the socket wakes us only once
`RCVLOWAT` bytes are waiting (or `POLL_SECONDS` passed), and one `recv_into` takes them all:
about 30 system calls a second. Frames go to PyAV's MP4 muxer exactly as FFmpeg's demuxer
would hand them over (Annex B, the same codec parameters), so segments look the same.

Stalls are seen here directly: no RTP on a media channel for `stall_seconds` raises
`StreamStalled`, even while the camera keeps sending RTCP or keep-alive answers.

Threads: everything here runs on the recorder thread of one camera. The socket is closed
by that thread only.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import itertools
import logging
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import av
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.stream import VideoStream

from ingest import progress
from ingest.errors import (
    AuthRejected,
    CameraUnreachable,
    ConnectTimeout,
    StreamEnded,
    StreamError,
    StreamStalled,
    UnsupportedStream,
)
from ingest.redact import redact_text
from ingest.rtp import (
    AacFrames,
    AudioFrames,
    Frame,
    G711Frames,
    PayloadError,
    SdpMedia,
    VideoFrames,
    audio_frames_for,
    parse_sdp,
    video_frames_for,
)

log = logging.getLogger("nvr.ingest")

RCVLOWAT = 32 * 1024
"""Bytes the kernel collects before waking the reader (`SO_RCVLOWAT`): 1/16 s of a 4 Mbit/s
camera. A slower camera is read when `POLL_SECONDS` have passed (what a crash can lose on
top of the fragment in flight)."""
POLL_SECONDS = 0.1
BUFFER_BYTES = 256 * 1024
"""Read buffer per camera: room for four of the largest interleaved packets (64 KiB)."""
REORDER_WINDOW_FRAMES = 4
"""Frames after the first keyframe that are looked at before recording starts: a stream
whose timestamps go backwards within them has B-frames (I P B B: the third frame already
goes back) and goes to FFmpeg's demuxer. Kept short: these frames reach the recorder late,
and the first segment's file is named after their arrival until its start settles."""
NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from 1900-01-01 (NTP) to 1970-01-01."""
AUDIO_WAIT_SECONDS = 1.0
"""How long the first audio frame is waited for once the video is ready."""
REORDER_TICKS = 90_000
"""A step back in video time shorter than this (1 s) onto a B picture is reordering; onto any
other picture, or longer, the camera's clock stepped back: a discontinuity."""
ANCHOR_TOLERANCE_S = 1.0
"""Audio placed by the PLAY answer's RTP-Info further than this from the video that arrived
with it is re-anchored to that video (the camera's RTP-Info does not match its packets)."""
KEYFRAME_WAIT_SECONDS = 60.0
"""Default wait for the first keyframe while media keeps arriving (long-GOP cameras)."""
KEEPALIVE_SECONDS = 25.0
"""Keep-alive request interval unless the server's session timeout asks for less."""
MAX_MESSAGE_BYTES = 64 * 1024
"""Largest RTSP message (headers and body) accepted from a camera."""
USER_AGENT = "nvr"
MAX_REDIRECTS = 3
"""Redirects (301/302/303/307/308 with `Location`) followed in one handshake, as FFmpeg does."""
AUDIO_ONLY_FRAMES = 4
"""Audio frames an audio-only camera must send before recording starts (its template)."""
OTHER_TYPE_ADOPT = 16
"""Packets in a row of one other payload type before a track that has taken nothing yet
adopts it (its SDP named another payload type than the camera uses)."""
HANDSHAKE_SLOTS = 8
"""RTSP handshakes in flight at once across all cameras. After a restart or a power cut every
camera connects at once; a camera server answering 64 DESCRIBEs together is slow, not dead, and
spreading the connects out lets each one answer in time."""
HANDSHAKE_PATIENCE = 3
"""A request to a server that is answering (on this connection or on another camera's) may
take this many timeouts; a server that says nothing for one timeout is dead as before."""
SSRC_SWITCH_SECONDS = 1.0
"""A track adopts another SSRC only when its own has sent nothing for this long while the other
kept sending (a camera that restarted its encoder, or a SETUP reply naming the wrong SSRC)."""
SSRC_LEARN_PACKETS = 32
"""Packets waited for the one RTP-Info announced (its sequence number) before a track takes
the SSRC of whatever arrives: a stale session's packets may come first."""
RESYNC_LINE_BYTES = 256
"""Longest first line of an RTSP message inline with the media: bytes that do not form one
within this many are stray."""
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(r"\r?\n")
_RTSP_LINE = re.compile(rb"(?:RTSP/\d\.\d \d{3}\b[^\r\n]*|[A-Z][A-Z_]+ \S+ RTSP/\d\.\d)\r?\n")
_RTSP_START = re.compile(rb"[A-Z][\x20-\x7e]*\r?")
"""The bytes of an RTSP line seen so far, before its line end arrived."""

log = logging.getLogger("nvr.ingest")


def _absolute(base: str, request_url: str) -> str:
    """`Content-Base` as an absolute URL: some cameras (Anjvision) send it without the
    scheme (`192.168.1.10:554/stream0/`), or as a path alone."""
    if "://" in base:
        return base
    parts = urlsplit(request_url)
    if base.startswith("/"):
        return urlunsplit((parts.scheme, parts.netloc, base, "", ""))
    return f"{parts.scheme}://{base}"


class _HandshakeGate:
    """Process-wide (all recorder threads): at most `HANDSHAKE_SLOTS` handshakes at once, and
    when each camera server last answered anything, so that one slow server's cameras wait for
    it instead of timing out one after the other."""

    def __init__(self, slots: int) -> None:
        self._cond = threading.Condition()
        self._free = slots
        self._last_release = time.monotonic()
        self._answered: dict[tuple[str, int], float] = {}

    def enter(self, patience: float) -> bool:
        """Take a slot. False (go ahead without one) if no handshake has ended for
        `patience` seconds: the slots are held by cameras that do not answer."""
        with self._cond:
            while self._free <= 0:
                idle = time.monotonic() - self._last_release
                if idle >= patience:
                    return False
                self._cond.wait(patience - idle)
            self._free -= 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._free += 1
            self._last_release = time.monotonic()
            self._cond.notify()

    def answered(self, server: tuple[str, int]) -> None:
        self._answered[server] = time.monotonic()  # one dict store: atomic under the GIL

    def last_answer(self, server: tuple[str, int]) -> float:
        return self._answered.get(server, 0.0)


HANDSHAKES = _HandshakeGate(HANDSHAKE_SLOTS)


class NotForUs(Exception):
    """This stream needs FFmpeg's demuxer; the message says why (logged once)."""


class TcpRefused(NotForUs):
    """The camera refuses RTP over the RTSP connection (SETUP answered 461): UDP only."""


class _Redirect(Exception):
    """The camera answered with a redirect to `location`."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ', ' (WWW-Authenticate kept apart)."""
    challenges: list[str]
    body: bytes


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class _Digest:
    """HTTP Basic/Digest authentication (RFC 2617) for RTSP requests."""

    def __init__(self, username: str, password: str, challenges: list[str]) -> None:
        self._user = username
        self._password = password
        self._digest: dict[str, str] | None = None
        self._nc = 0
        for challenge in challenges:
            scheme, _, rest = challenge.strip().partition(" ")
            if scheme.lower() == "digest":
                self._digest = {
                    k.lower(): v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]*)', rest)
                }
                break
        if self._digest is None and not any(
            c.strip().lower().startswith("basic") for c in challenges
        ):
            raise AuthRejected("camera asks for an authentication scheme other than Basic/Digest")

    def header(self, method: str, uri: str) -> str:
        d = self._digest
        if d is None:
            token = base64.b64encode(f"{self._user}:{self._password}".encode()).decode()
            return f"Basic {token}"
        realm, nonce = d.get("realm", ""), d.get("nonce", "")
        algorithm = d.get("algorithm", "MD5")
        if algorithm.upper() not in ("MD5", ""):
            raise AuthRejected(f"camera asks for digest algorithm {algorithm}")

        def md5(text: str) -> str:
            return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

        ha1 = md5(f"{self._user}:{realm}:{self._password}")
        ha2 = md5(f"{method}:{uri}")
        fields = [
            f'username="{self._user}"',
            f'realm="{realm}"',
            f'nonce="{nonce}"',
            f'uri="{uri}"',
        ]
        qop = d.get("qop", "")
        if "auth" in [q.strip() for q in qop.split(",")]:
            self._nc += 1
            nc = f"{self._nc:08x}"
            cnonce = os.urandom(8).hex()
            response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            fields += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
        else:
            response = md5(f"{ha1}:{nonce}:{ha2}")
        fields.append(f'response="{response}"')
        if "opaque" in d:
            fields.append(f'opaque="{d["opaque"]}"')
        return "Digest " + ", ".join(fields)


class _Track:
    """One set-up media stream: its interleaved channel, payload parser and RTP clock."""

    def __init__(self, media: SdpMedia, frames: VideoFrames | AudioFrames, url: str) -> None:
        self.media = media
        self.frames = frames
        self.url = url
        self.channel = 0
        self.rtcp_channel = 1
        self.base: int | None = None
        """RTP timestamp that is tick 0 (the PLAY answer's rtptime, else the first packet)."""
        self.last_raw = 0
        self.ext = 0
        self.started = False
        self.ssrc: int | None = None
        """The session's SSRC on this track (the SETUP reply's, else learned from packets)."""
        self.info_seq: int | None = None
        """The first sequence number the PLAY answer's RTP-Info announced."""
        self.own_at = 0.0
        """When the last packet of `ssrc` arrived (monotonic)."""
        self.waited = 0
        self.payload_type = media.payload_type
        """Packets of another payload type on the track's channel are dropped (Geovision
        sends payload type 50 among the video), unless they are all the camera sends."""
        self.other_type_run = 0


class RtspSession:
    """One RTSP connection: handshake, then the interleaved RTP it carries."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None,
        password: str | None,
        timeout_s: float,
    ) -> None:
        self.url = self.host = ""
        self.port = 554
        self._username = username
        self._password = password
        self._set_url(url, userinfo=username is None)
        self._secrets: tuple[str | None, ...] = (self._password, self._username)
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._buf = bytearray(BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._cseq = 0
        self._auth: _Digest | None = None
        self._session = ""
        self._keepalive_every = KEEPALIVE_SECONDS
        self._keepalive_method = "OPTIONS"
        self._next_keepalive = 0.0
        self.video: _Track | None = None
        self.audio: _Track | None = None
        self.audio_note = ""
        """Why the camera's audio is not recorded (empty if it is, or there is none)."""
        self.anchor_note = ""
        """Set once when the audio's RTP-Info did not match its packets (re-anchored)."""
        self._poller = select.poll()
        self.last_media = 0.0
        self.realtime_us: int | None = None
        """The camera's clock (µs since the Unix epoch) at video tick 0, from the first
        RTCP sender report; None until one came."""
        self.skipped_bytes = 0
        """Stray bytes skipped between interleaved packets (and how many runs of them)."""
        self.skips = 0
        self.foreign_packets = 0
        """RTP packets dropped because their SSRC was not the session's."""
        self.other_type_packets = 0
        """RTP packets of the session's SSRC dropped because of their payload type."""
        self._now = 0.0

    # --- handshake ---------------------------------------------------------------------------

    def _set_url(self, url: str, userinfo: bool = True) -> None:
        """Connect to `url` from now on, with the credentials in it if `userinfo`."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = host if ":" not in host else f"[{host}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self.host = host
        self.port = parts.port or 554
        if userinfo and parts.username is not None:
            self._username = unquote(parts.username)
            self._password = unquote(parts.password) if parts.password is not None else None

    def connect(self) -> None:
        """OPTIONS .. PLAY, following redirects. Raises StreamError subclasses, or NotForUs.
        Waits for one of the `HANDSHAKE_SLOTS` first (see `_HandshakeGate`)."""
        slot = HANDSHAKES.enter(self._timeout)
        try:
            for _ in range(MAX_REDIRECTS):
                try:
                    return self._handshake()
                except _Redirect as moved:
                    self._follow(moved.location)
            try:
                return self._handshake()
            except _Redirect:
                raise StreamError(
                    f"camera redirected more than {MAX_REDIRECTS} times (last to "
                    f"{self._redact(self.url)})"
                ) from None
        finally:
            if slot:
                HANDSHAKES.leave()

    def _follow(self, location: str) -> None:
        """Go where a redirect points. Credentials go along only to the same host and port
        (or where the new URL carries its own), as a browser does."""
        target = urljoin(self.url, location)
        scheme = urlsplit(target).scheme.lower()
        if scheme != "rtsp":
            raise NotForUs(f"camera redirects to a {scheme or 'relative'} URL")
        before = (self.host, self.port)
        parts = urlsplit(target)
        if (parts.hostname or "", parts.port or 554) != before and parts.username is None:
            self._username = self._password = None
        self._set_url(target)
        self._secrets = (*self._secrets, self._password, self._username)
        log.info("RTSP redirect to %s", self._redact(self.url))
        self._auth = None
        self._session = ""
        self.video = self.audio = None

    def _handshake(self) -> None:
        self._reconnect()
        options = self._request("OPTIONS", self.url)
        public = options.headers.get("public", "").upper()
        if "GET_PARAMETER" in public:
            self._keepalive_method = "GET_PARAMETER"
        describe = self._request("DESCRIBE", self.url, {"Accept": "application/sdp"})
        base = _absolute(
            describe.headers.get("content-base")
            or describe.headers.get("content-location")
            or self.url,
            self.url,
        )
        try:
            medias = parse_sdp(describe.body.decode("utf-8", "replace"))
        except PayloadError as err:
            raise NotForUs(str(err)) from None
        self._choose(medias, base)
        channel = 0
        for track in (self.video, self.audio):
            if track is None:
                continue
            headers = {"Transport": f"RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1}"}
            reply = self._request("SETUP", track.url, headers)
            transport = reply.headers.get("transport", "")
            found = re.search(r"interleaved=(\d+)(?:-(\d+))?", transport)
            if "TCP" not in transport.upper() or found is None:
                raise NotForUs(f"camera did not accept RTP over the RTSP connection ({transport})")
            track.channel = int(found.group(1))
            track.rtcp_channel = int(found.group(2) or track.channel + 1)
            ssrc = re.search(r"ssrc=([0-9A-Fa-f]{1,8})\b", transport)
            if ssrc is not None:
                track.ssrc = int(ssrc.group(1), 16)
            session = reply.headers.get("session", "")
            if session:
                sid, _, params = session.partition(";")
                self._session = sid.strip()
                timeout = re.search(r"timeout=(\d+)", params)
                if timeout:
                    self._keepalive_every = min(
                        KEEPALIVE_SECONDS, max(1, int(timeout.group(1))) / 2
                    )
            channel += 2
        play = self._request("PLAY", base, {"Range": "npt=0.000-"})
        self._rtp_info(play.headers.get("rtp-info", ""))
        self._next_keepalive = time.monotonic() + self._keepalive_every
        self.last_media = self._now = time.monotonic()
        for track in (self.video, self.audio):
            if track is not None:
                track.own_at = self._now  # an SSRC silent from here on may be replaced
        sock = self._sock
        assert sock is not None  # set by _reconnect
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, RCVLOWAT)
        except OSError:
            pass  # not available: each wake-up then reads what has arrived
        self._poller.register(sock.fileno(), select.POLLIN)

    def _reconnect(self) -> None:
        """A fresh TCP connection (the first, or after a camera hung up on a 401)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._start = self._end = 0
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        except ConnectionRefusedError as err:
            raise CameraUnreachable(f"connection refused by {self.host}:{self.port}") from err
        except TimeoutError as err:
            raise ConnectTimeout(
                f"no TCP connection to {self.host}:{self.port} within {self._timeout:.1f} s"
            ) from err
        except OSError as err:
            if err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET):
                raise CameraUnreachable(f"{self.host}:{self.port}: {err.strerror}") from err
            raise StreamError(
                self._redact(f"connecting to {self.host}:{self.port}: {err}")
            ) from err
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def _choose(self, medias: list[SdpMedia], base: str) -> None:
        video = [m for m in medias if m.kind == "video"]
        last = "no video over RTP/AVP"
        if not video:
            self._choose_audio_only(medias, base)
            return
        for m in video:
            if "AVP" not in m.protocol.upper():
                continue
            try:
                self.video = _Track(m, video_frames_for(m), self._control_url(base, m.control))
                break
            except PayloadError as err:
                last = str(err)
        if self.video is None:
            raise NotForUs(last)
        audio = [m for m in medias if m.kind == "audio"]
        if audio:
            try:
                self.audio = _Track(
                    audio[0], audio_frames_for(audio[0]), self._control_url(base, audio[0].control)
                )
            except PayloadError as err:
                # FFmpeg's demuxer could not keep it either (remux only): record the video
                # here, and say plainly why there is no audio.
                self.audio_note = str(err)

    def _choose_audio_only(self, medias: list[SdpMedia], base: str) -> None:
        """A camera without video (an audio-only device): its audio is recorded alone if a
        segment can hold it as it comes, else the camera cannot be recorded and says why."""
        audio = [m for m in medias if m.kind == "audio" and "AVP" in m.protocol.upper()]
        if not audio:
            kinds = ", ".join(m.kind for m in medias) or "none"
            raise UnsupportedStream(f"no video or audio stream in the camera's SDP (found {kinds})")
        try:
            frames = audio_frames_for(audio[0])
        except PayloadError as err:
            raise UnsupportedStream(
                f"no video stream in the camera's SDP, and its audio cannot be kept: {err}"
            ) from None
        self.audio = _Track(audio[0], frames, self._control_url(base, audio[0].control))

    @staticmethod
    def _control_url(base: str, control: str) -> str:
        if not control or control == "*":
            return base
        if control.lower().startswith("rtsp://") or control.lower().startswith("rtsps://"):
            return control
        return base.rstrip("/") + "/" + control

    def _rtp_info(self, value: str) -> None:
        tracks = [t for t in (self.video, self.audio) if t is not None]
        for entry in value.split(","):
            fields = {}
            for item in entry.split(";"):
                key, sep, val = item.strip().partition("=")
                if sep:
                    fields[key.strip().lower()] = val.strip()
            url, rtptime, seq = fields.get("url", ""), fields.get("rtptime"), fields.get("seq")
            for track in tracks:
                if url and (
                    url == track.url
                    or track.url.endswith(url)
                    or url.endswith(track.media.control or "\0")
                ):
                    if rtptime is not None and rtptime.isdigit():
                        track.base = int(rtptime)
                    if seq is not None and seq.isdigit():
                        track.info_seq = int(seq) & 0xFFFF
                    break

    def _request(self, method: str, url: str, headers: dict[str, str] | None = None) -> Response:
        reply = self._send_and_read(method, url, headers or {})
        if reply.status == 401:
            if self._username is None:
                raise AuthRejected(f"camera requires credentials ({method} answered 401)")
            if self._auth is not None and "stale=true" not in " ".join(reply.challenges).lower():
                raise AuthRejected(f"camera rejected the credentials ({method} answered 401)")
            self._auth = _Digest(self._username, self._password or "", reply.challenges)
            if reply.headers.get("connection", "").lower() == "close":
                self._reconnect()  # some cameras hang up after a 401
            reply = self._send_and_read(method, url, headers or {})
            if reply.status == 401:
                raise AuthRejected(f"camera rejected the credentials ({method} answered 401)")
        if reply.status == 461 or (reply.status == 400 and method == "SETUP"):
            raise TcpRefused(f"camera refused RTP over TCP ({method} answered {reply.status})")
        location = reply.headers.get("location")
        if (
            reply.status in (301, 302, 303, 305, 307, 308)
            and location
            and method
            in (
                "OPTIONS",
                "DESCRIBE",
            )
        ):
            raise _Redirect(location)
        if reply.status != 200:
            raise StreamError(
                self._redact(f"camera answered {method} with {reply.status} {reply.reason}")
            )
        return reply

    def _message(self, method: str, url: str, headers: dict[str, str]) -> bytes:
        self._cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self._cseq}", f"User-Agent: {USER_AGENT}"]
        if self._session:
            lines.append(f"Session: {self._session}")
        if self._auth is not None:
            lines.append(f"Authorization: {self._auth.header(method, url)}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _send_and_read(self, method: str, url: str, headers: dict[str, str]) -> Response:
        """Send one request and wait for its answer. The camera is given `timeout` seconds of
        silence; while its server answers (this connection or another camera's on the same
        server) the wait goes on, up to `HANDSHAKE_PATIENCE` timeouts: slow is not dead."""
        sock = self._sock
        assert sock is not None
        server = (self.host, self.port)
        sent = heard = time.monotonic()
        give_up = sent + HANDSHAKE_PATIENCE * self._timeout
        try:
            sock.sendall(self._message(method, url, headers))
            while True:
                reply = self._take_message()
                if reply is not None:
                    HANDSHAKES.answered(server)
                    if reply.status != 0:  # 0: a request from the server, skipped
                        return reply
                    continue
                now = time.monotonic()
                quiet_until = max(heard, HANDSHAKES.last_answer(server)) + self._timeout
                wait = min(quiet_until, give_up) - now
                if wait <= 0:
                    raise ConnectTimeout(f"no RTSP answer to {method} within {now - sent:.1f} s")
                sock.settimeout(min(wait, 0.5))  # wake up to see other connections' answers
                try:
                    n = sock.recv_into(self._view[self._end :])
                except TimeoutError:
                    continue
                if n == 0:
                    raise StreamEnded(f"camera closed the connection during {method}")
                self._end += n
                heard = time.monotonic()
        except ConnectionError as err:
            raise StreamEnded(f"connection lost during {method}: {err.strerror}") from None
        except TimeoutError:
            raise ConnectTimeout(f"{method} not sent within {self._timeout:.1f} s") from None
        except OSError as err:
            raise StreamError(self._redact(f"{method}: {err}")) from None

    def _take_message(self) -> Response | None:
        """An RTSP response at the read position, consumed; None if not all here yet.
        Interleaved packets before it are skipped (none are expected during the handshake)."""
        buf = self._buf
        while self._end - self._start >= 4 and buf[self._start] == 0x24:
            size = 4 + ((buf[self._start + 2] << 8) | buf[self._start + 3])
            if self._end - self._start < size:
                return None
            self._start += size
        found = _HEAD_END.search(buf, self._start, self._end)  # lines may end in LF alone
        if found is None:
            if self._end - self._start > MAX_MESSAGE_BYTES or self._end == len(buf):
                raise StreamError("camera sent an RTSP header that is too long or not RTSP")
            return None
        head_end, body_start = found.span()
        head = bytes(buf[self._start : head_end]).decode("latin-1")
        lines = _LINE_END.split(head)
        status_line = lines[0].split(" ", 2)
        request = len(status_line) == 3 and status_line[2].startswith("RTSP/")
        if not request and (len(status_line) < 2 or not status_line[0].startswith("RTSP/")):
            raise StreamError(f"camera did not answer in RTSP: {lines[0][:60]!r}")
        headers: dict[str, str] = {}
        challenges: list[str] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            value = value.strip()
            if key == "www-authenticate":
                challenges.append(value)
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            length = int(headers.get("content-length", "0"))
            status = 0 if request else int(status_line[1])
        except ValueError:
            raise StreamError(f"camera sent a malformed RTSP answer: {lines[0][:60]!r}") from None
        if length > MAX_MESSAGE_BYTES:
            raise StreamError(f"camera sent an RTSP body of {length} bytes")
        total = body_start + length
        if total > self._end:
            return None
        body = bytes(buf[body_start:total])
        self._start = total
        self._compact()
        return Response(
            status, status_line[2] if len(status_line) > 2 else "", headers, challenges, body
        )

    def _compact(self) -> None:
        """Keep room for a full read: move the unread bytes to the front when needed."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._start and len(self._buf) - self._end < 2 * MAX_MESSAGE_BYTES:
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start : self._end]
            self._start, self._end = 0, n

    def _redact(self, text: str) -> str:
        return redact_text(text, *self._secrets)

    # --- streaming ---------------------------------------------------------------------------

    def read(self, stall_seconds: float) -> bool:
        """Wait for data (up to `POLL_SECONDS`), parse what came into the tracks' `out`
        lists. True if any media arrived. Raises StreamStalled/StreamEnded/StreamError."""
        sock = self._sock
        assert sock is not None
        self._poller.poll(POLL_SECONDS * 1000)
        got_media = False
        if self._end == len(self._buf):
            raise StreamError("camera sent an interleaved packet larger than the read buffer")
        try:
            n = sock.recv_into(self._view[self._end :])
        except BlockingIOError:
            n = -1
        except ConnectionError as err:
            raise StreamEnded(f"connection lost: {err.strerror}") from None
        except OSError as err:
            raise StreamError(self._redact(f"reading the stream: {err}")) from None
        now = self._now = time.monotonic()
        if n == 0:
            raise StreamEnded("camera closed the connection")
        if n > 0:
            self._end += n
            got_media = self._parse()
            if got_media:
                self.last_media = now
        if now - self.last_media > stall_seconds:
            raise StreamStalled(
                f"no media for {now - self.last_media:.1f} s while the connection stayed open"
            )
        if now >= self._next_keepalive:
            self._next_keepalive = now + self._keepalive_every
            self._keepalive()
        return got_media

    def _keepalive(self) -> None:
        assert self._sock is not None
        try:
            self._sock.send(self._message(self._keepalive_method, self.url, {}))
        except BlockingIOError:
            pass  # the send buffer is full: try again next time
        except OSError as err:
            raise StreamEnded(f"connection lost: {err.strerror}") from None

    def _parse(self) -> bool:
        """Consume the complete messages in the buffer. True if RTP for a track was among
        them. The per-packet path: indexing only, one unpack per RTP header. Bytes that are
        neither an interleaved packet on a set-up channel nor an RTSP message are skipped
        (`_resync`); packets of another SSRC than the track's are dropped (`_other_ssrc`)."""
        buf, view = self._buf, self._view
        pos, end = self._start, self._end
        video, audio = self.video, self.audio
        vch = video.channel if video is not None else -1
        ach = audio.channel if audio is not None else -1
        vrtcp = video.rtcp_channel if video is not None and self.realtime_us is None else -1
        channels = {t.channel for t in (video, audio) if t is not None}
        channels |= {t.rtcp_channel for t in (video, audio) if t is not None}
        media = False
        unpack = struct.unpack_from
        while end - pos >= 4:
            channel = buf[pos + 1]
            if (
                buf[pos] != 0x24
                or channel not in channels
                or (end - pos > 4 and buf[pos + 4] >> 6 != 2)
            ):
                if buf[pos] == 0x24 and end - pos > 4 and buf[pos + 4] >> 6 == 2:
                    # A packet on a channel this session did not set up (old live555 keeps
                    # streaming a closed session's): skipped whole if another packet or an
                    # RTSP message follows it, else the "$" was a stray byte.
                    nxt = pos + 4 + ((buf[pos + 2] << 8) | buf[pos + 3])
                    if nxt >= end:
                        break
                    if buf[nxt] == 0x24 or buf[nxt] == 0x52:
                        self.foreign_packets += 1
                        pos = nxt
                        continue
                self._start = pos
                if not self._inline_message(pos, end, channels):
                    self._end = end
                    pos = self._start
                    break
                pos, end = self._start, self._end
                continue
            size = (buf[pos + 2] << 8) | buf[pos + 3]
            nxt = pos + 4 + size
            if nxt > end:
                break
            if channel == vrtcp:
                self._sender_report(buf, pos + 4, nxt)
            elif (channel == vch or channel == ach) and size >= 12:
                p = pos + 4
                b0, b1, seq, raw_ts, ssrc = unpack(">BBHII", buf, p)
                track = video if channel == vch else audio
                assert track is not None
                if (ssrc == track.ssrc or self._other_ssrc(track, ssrc, seq)) and (
                    (b1 & 0x7F) == track.payload_type or self._other_type(track, b1 & 0x7F)
                ):
                    track.own_at = self._now
                    head = 12 + 4 * (b0 & 0x0F)
                    if b0 & 0x10 and head + 4 <= size:
                        head += 4 + 4 * ((buf[p + head + 2] << 8) | buf[p + head + 3])
                    stop = nxt
                    if b0 & 0x20:
                        stop -= buf[nxt - 1]
                    if p + head <= stop:
                        if track.started:
                            delta = (raw_ts - track.last_raw) & 0xFFFFFFFF
                            track.ext += delta - (1 << 32) if delta & 0x80000000 else delta
                        else:
                            self._first_packet(track, raw_ts)
                        track.last_raw = raw_ts
                        track.frames.payload(view[p + head : stop], track.ext, bool(b1 & 0x80))
                        media = True
            pos = nxt
        self._start = pos
        self._compact()
        return media

    def _inline_message(self, pos: int, end: int, channels: set[int]) -> bool:
        """At `pos` (== `_start`) is no interleaved packet: take the RTSP message there (the
        answer to a keep-alive, or a request of the server), or skip stray bytes up to the
        next plausible packet or RTSP line (Axis and Canon cameras send CRLFs and junk
        between packets). False if more bytes must arrive first."""
        buf = self._buf
        line_end = buf.find(b"\n", pos, min(end, pos + RESYNC_LINE_BYTES))
        if line_end >= 0:
            rtsp = _RTSP_LINE.fullmatch(buf, pos, line_end + 1) is not None
        elif end - pos < RESYNC_LINE_BYTES and _RTSP_START.fullmatch(buf, pos, end):
            return False  # the start of an RTSP line: wait for the rest of it
        else:
            rtsp = False
        if rtsp:
            return self._take_message() is not None
        nxt = self._resync(pos + 1, end, channels)
        skipped = nxt - pos
        if self.skips == 0:
            log.warning(
                "RTSP %s:%s: skipping %d stray bytes between interleaved packets (%r)",
                self.host,
                self.port,
                skipped,
                bytes(buf[pos : min(nxt, pos + 16)]),
            )
        self.skips += 1
        self.skipped_bytes += skipped
        self._start = nxt
        return True

    def _resync(self, pos: int, end: int, channels: set[int]) -> int:
        """The first position from `pos` where a packet on a set-up channel with an RTP/RTCP
        version 2 header, or an RTSP status line, may begin (`end` if none)."""
        buf = self._buf
        start = pos
        while pos < end:
            dollar = buf.find(b"$", pos, end)
            line = buf.find(b"RTSP/", pos, end)
            if line >= 0 and (dollar < 0 or line < dollar):
                return line
            if dollar < 0:
                break
            if (dollar + 1 < end and buf[dollar + 1] not in channels) or (
                dollar + 4 < end and buf[dollar + 4] >> 6 != 2
            ):
                pos = dollar + 1
                continue
            return dollar  # plausible, or cut by the read: the next read tells
        for q in range(max(start, end - 4), end):  # "RTSP/" cut by the read
            if b"RTSP/".startswith(bytes(buf[q:end])):
                return q
        return end

    def _other_ssrc(self, track: _Track, ssrc: int, seq: int) -> bool:
        """A packet whose SSRC is not the track's: True if it is the session's after all (the
        first packets teach the SSRC when SETUP did not name it), else dropped and counted."""
        if not track.started and seq == track.info_seq:
            track.ssrc = ssrc  # the packet RTP-Info announced, whatever SETUP said
            return True
        if track.ssrc is None:
            if track.info_seq is not None and seq != track.info_seq:
                track.waited += 1
                if track.waited <= SSRC_LEARN_PACKETS:
                    self.foreign_packets += 1
                    return False  # wait for the packet the PLAY answer announced
            track.ssrc = ssrc
            return True
        if self._now - track.own_at >= SSRC_SWITCH_SECONDS:
            log.warning(
                "RTSP %s:%s: %s SSRC %08X silent for %.1f s, taking %08X",
                self.host,
                self.port,
                track.media.kind,
                track.ssrc,
                self._now - track.own_at,
                ssrc,
            )
            track.ssrc = ssrc
            return True
        if self.foreign_packets == 0:
            log.warning(
                "RTSP %s:%s: dropping %s packets of SSRC %08X (the session's is %08X)",
                self.host,
                self.port,
                track.media.kind,
                ssrc,
                track.ssrc,
            )
        self.foreign_packets += 1
        return False

    def _other_type(self, track: _Track, payload_type: int) -> bool:
        """A packet of the session's SSRC with another payload type than the SDP gave the
        track: dropped and counted, unless the track has taken nothing yet and
        `OTHER_TYPE_ADOPT` packets in a row came with this type (a camera whose SDP names
        another number than its packets carry): then the track takes that type."""
        if not track.started:
            track.other_type_run += 1
            if track.other_type_run >= OTHER_TYPE_ADOPT:
                log.warning(
                    "RTSP %s:%s: %s packets carry payload type %d, the SDP said %d: taking %d",
                    self.host,
                    self.port,
                    track.media.kind,
                    payload_type,
                    track.payload_type,
                    payload_type,
                )
                track.payload_type = payload_type
                return True
        elif self.other_type_packets == 0:
            log.warning(
                "RTSP %s:%s: dropping %s packets of payload type %d (the track's is %d)",
                self.host,
                self.port,
                track.media.kind,
                payload_type,
                track.payload_type,
            )
        self.other_type_packets += 1
        return False

    def _sender_report(self, buf: bytearray, pos: int, end: int) -> None:
        """The video's first RTCP sender report: the camera's wall clock at video tick 0,
        `realtime_us` (as FFmpeg's `start_time_realtime`), for the camera clock check."""
        video = self.video
        if video is None or not video.started or video.base is None:
            return
        while pos + 20 <= end:
            first, kind, words = struct.unpack_from(">BBH", buf, pos)
            if first >> 6 != 2:
                return
            if kind == 200:  # SR: ssrc, NTP seconds and fraction, RTP timestamp
                ssrc, ntp_s, ntp_frac, rtp_ts = struct.unpack_from(">IIII", buf, pos + 4)
                if ssrc != video.ssrc:
                    return  # a stale session's report
                camera_s = ntp_s - NTP_UNIX_OFFSET + ntp_frac / 2**32
                ticks = video.ext + _signed32(rtp_ts - video.last_raw)
                self.realtime_us = round((camera_s - ticks / 90_000) * 1e6)
                return
            pos += 4 * (words + 1)

    def _first_packet(self, track: _Track, raw_ts: int) -> None:
        """Place a track's first RTP timestamp on the common timeline: by the PLAY answer's
        RTP-Info where it gave one; else audio that starts after video is put at the video
        time that has just arrived, and a track that starts first at zero."""
        track.started = True
        video, audio = self.video, self.audio
        if track.base is None:
            track.base = raw_ts
            if track is not video and video is not None and video.started:
                clock = track.media.clock_rate or 90_000
                track.base = (raw_ts - video.ext * clock // 90_000) & 0xFFFFFFFF
        track.ext = _signed32(raw_ts - track.base)
        if video is None or audio is None or not (video.started and audio.started):
            return
        # Both tracks have begun: the one that began last arrived at about the other's
        # current time. Audio placed far from that by RTP-Info is re-anchored to the video.
        clock = audio.media.clock_rate or 90_000
        skew = audio.ext / clock - video.ext / 90_000
        if abs(skew) > ANCHOR_TOLERANCE_S:
            shift = round(-skew * clock)
            audio.base = ((audio.base or 0) - shift) & 0xFFFFFFFF
            audio.ext += shift
            frames = audio.frames.out
            frames[:] = [(data, ts + shift, key) for data, ts, key in frames]
            self.anchor_note = (
                f"audio RTP-Info puts it {skew:+.1f} s from the video; "
                "re-anchored to the video's time"
            )

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self.skips or self.foreign_packets or self.other_type_packets:
            log.info(
                "RTSP %s:%s: %d stray bytes skipped in %d places, %d packets of other SSRCs "
                "and %d of other payload types dropped on this connection",
                self.host,
                self.port,
                self.skipped_bytes,
                self.skips,
                self.foreign_packets,
                self.other_type_packets,
            )
        try:
            if self._session:
                sock.send(self._message("TEARDOWN", self.url, {}))
        except OSError:
            pass
        sock.close()


# --- the Source ------------------------------------------------------------------------------


class NativeRtspSource:
    """A `Source` reading an `RtspSession`: PyAV packets in the time base of `video` and
    `audio`, template streams that carry the camera's codec parameters.

    `video` is replaced when a keyframe brings a different SPS (a new resolution): the
    recorder sees a new template at that keyframe and starts a new segment with it."""

    def __init__(
        self,
        session: RtspSession,
        stall_seconds: float,
        description: str,
        on_reordered: Callable[[str], None],
        on_gop: Callable[[float], None] | None = None,
    ) -> None:
        self._session = session
        self._stall = stall_seconds
        self._on_reordered = on_reordered
        self._on_gop = on_gop
        self.description = description
        self._vframes: VideoFrames | None = None
        """None: an audio-only camera (`video` is None too)."""
        if session.video is not None:
            assert not isinstance(session.video.frames, AacFrames | G711Frames)
            self._vframes = session.video.frames
        self._aframes: AudioFrames | None = None
        if session.audio is not None and isinstance(session.audio.frames, AacFrames | G711Frames):
            self._aframes = session.audio.frames
        self._sps_type = self._vframes.PARAM_TYPES[-2] if self._vframes is not None else 0
        self._sps: bytes | None = None
        """The SPS the current video template was made from."""
        self._held: list[Frame] = []
        self._probes: list[InputContainer] = []
        self._dummy: OutputContainer | None = None
        self._audio_scale = Fraction(1)
        self._audio_clock = 90_000
        self.video: VideoStream | None = None
        self.audio: AudioStream | None = None
        self.resolution_changes = 0
        self._held_at: list[float] = []
        """When each held frame arrived (monotonic)."""
        self.arrival_timed = False
        """The camera sends one RTP timestamp for every picture: frames are timed by their
        arrival instead (see `_by_arrival`)."""
        self._arrival_base = 0
        self._arrival_t0 = 0.0
        self._last_out = 0

    @property
    def audio_note(self) -> str:
        """Why the camera's audio is not in the recording (empty if it is or there is none)."""
        return self._session.audio_note

    def start(self, keyframe_seconds: float) -> None:
        """Wait for the first keyframe (as long as media keeps arriving, at most
        `keyframe_seconds`: a long-GOP camera sends one every 12-20 s), then
        `REORDER_WINDOW_FRAMES` more frames and some audio; make the template streams.
        Each read counts as progress of the recorder thread (`ingest.progress`), so the
        supervisor does not take a long wait for a stuck thread. NotForUs if frames arrive
        out of presentation order (B-frames: FFmpeg's parser derives their decode times)."""
        session, vf, af = self._session, self._vframes, self._aframes
        if vf is None:
            self._start_audio_only()
            return
        began = time.monotonic()
        deadline = began + keyframe_seconds
        audio_deadline = deadline
        key_at = -1
        while True:
            video_seen = key_at >= 0 and len(self._held) - key_at > REORDER_WINDOW_FRAMES
            if video_seen and (af is None or af.out):
                break
            if video_seen:
                # A camera may announce audio and send none (microphone off): wait a
                # little for it, then record video only (`audio_note` says why).
                audio_deadline = min(audio_deadline, time.monotonic() + AUDIO_WAIT_SECONDS)
                if time.monotonic() > audio_deadline:
                    break
            session.read(self._stall)  # raises StreamStalled when media stops coming
            progress.report()
            for frame in vf.out:
                if key_at < 0 and not frame[2]:
                    continue  # nothing before the first keyframe can be decoded
                if key_at < 0:
                    key_at = len(self._held)
                    deadline = max(deadline, time.monotonic() + 2 * AUDIO_WAIT_SECONDS)
                self._held.append(frame)
                self._held_at.append(time.monotonic())
            vf.out.clear()
            if key_at < 0 and af is not None:
                af.out.clear()  # audio from before the first keyframe is of no use
            if time.monotonic() > deadline:
                if key_at < 0:
                    raise UnsupportedStream(
                        f"no keyframe within {time.monotonic() - began:.0f} s of connecting "
                        "although media kept arriving (raise keyframe_wait_seconds for a "
                        "camera with a longer GOP)"
                    )
                break
        max_ts = -(1 << 62)
        for data, ts, _ in self._held:
            if ts < max_ts and max_ts - ts < REORDER_TICKS and vf.is_b_picture(data):
                raise NotForUs("frames arrive out of presentation order (B-frames)")
            max_ts = ts if ts < max_ts else max(max_ts, ts)
        if len(self._held) > 1 and len({ts for _, ts, _ in self._held}) == 1:
            first = self._held[0][1]
            self._time_by_arrival(first, self._held_at[0], first - 1)
            self._held = [
                f
                for at, group in itertools.groupby(
                    zip(self._held_at, self._held, strict=True), key=lambda x: x[0]
                )
                for f in self._by_arrival([frame for _, frame in group], at)
            ]
        self._make_templates()

    def _start_audio_only(self) -> None:
        """An audio-only camera: wait for its first audio frames (while they arrive), then
        make the audio template."""
        session, af = self._session, self._aframes
        if af is None:
            raise UnsupportedStream(
                f"no video stream, and no audio that can be kept ({session.audio_note})"
            )
        while len(af.out) < AUDIO_ONLY_FRAMES:
            session.read(self._stall)  # raises StreamStalled when audio stops coming
            progress.report()
        self._audio_template(None)
        if self.audio is None:
            raise UnsupportedStream(
                f"no video stream, and its audio could not be used ({session.audio_note})"
            )

    def _time_by_arrival(self, base: int, at: float, last_out: int) -> None:
        """Switch to timing pictures by their arrival: tick `base` is monotonic time `at`,
        `last_out` the last timestamp handed out."""
        self.arrival_timed = True
        self._arrival_base = base
        self._arrival_t0 = at
        self._last_out = last_out
        log.warning(
            "%s: the camera gives every picture the same RTP timestamp; timing pictures by "
            "their arrival",
            self.description,
        )

    def _by_arrival(self, frames: list[Frame], at: float) -> list[Frame]:
        """`frames` that arrived together at `at`, spread evenly from the previous frame's
        time to `at` (their own timestamps say nothing)."""
        end = self._arrival_base + round((at - self._arrival_t0) * 90_000)
        start = self._last_out
        out: list[Frame] = []
        k = len(frames)
        for i, (data, _, key) in enumerate(frames):
            ts = max(start + (end - start) * (i + 1) // k, self._last_out + 1)
            self._last_out = ts
            out.append((data, ts, key))
        return out

    def _make_templates(self) -> None:
        """Template streams from the first frames run through FFmpeg's own probes (raw
        H.264/H.265, ADTS AAC) in memory: the codec parameters its RTSP demuxer would find."""
        self.video = self._video_template(self._held[0][0])
        if self._aframes is not None:
            self._audio_template(self.video)

    def _video_template(self, keyframe: bytearray) -> VideoStream:
        vf = self._vframes
        assert vf is not None
        sample = vf.parameter_sets() + bytes(keyframe)
        deltas = sorted(b[1] - a[1] for a, b in itertools.pairwise(self._held) if b[1] > a[1])
        rate = Fraction(90_000, deltas[len(deltas) // 2]) if deltas else Fraction(25)
        try:
            probe = av.open(
                io.BytesIO(sample),
                "r",
                format=vf.codec,
                options={"framerate": str(rate.limit_denominator(1001))},
            )
        except (av.FFmpegError, OSError) as err:
            raise UnsupportedStream(
                f"the camera's {vf.codec} parameters are unusable: {err}"
            ) from None
        self._probes.append(probe)
        if not probe.streams.video:
            raise UnsupportedStream(f"the camera's {vf.codec} stream could not be probed")
        video = probe.streams.video[0]
        video.time_base = Fraction(1, 90_000)
        self._sps = vf.nal_of(keyframe, self._sps_type) or vf.params.get(self._sps_type)
        return video

    def _audio_template(self, video: VideoStream | None) -> None:
        """The audio template lives in an in-memory file after a copy of the video stream
        (if there is one), so its stream index differs from the video's. AAC: its extradata
        is the SDP's AAC config; G.711: the codec, rate and channels say it all."""
        af = self._aframes
        assert af is not None and self._session.audio is not None
        if not af.out:
            self._session.audio_note = "no audio arrived while the stream was being set up"
            self._aframes = None
            return
        if isinstance(af, G711Frames):
            clock = af.sample_rate
            dummy = av.open(io.BytesIO(), "w", format="mov")
            self._dummy = dummy
            if video is not None:
                dummy.add_stream_from_template(video, opaque=True)
            audio = cast(AudioStream, dummy.add_stream(af.codec, rate=clock))
            audio.layout = "stereo" if af.channels == 2 else "mono"
            audio.time_base = Fraction(1, clock)
            dummy.start_encoding()
        else:
            template = self._aac_template(af, video)
            if template is None:
                return
            audio, clock = template
        tb = audio.time_base
        if tb is None:
            raise UnsupportedStream(f"the {af.codec} template has no time base")
        self._audio_scale = Fraction(1, clock) / tb
        self._audio_clock = clock
        self.audio = audio

    def _aac_template(
        self, af: AacFrames, video: VideoStream | None
    ) -> tuple[AudioStream, int] | None:
        assert self._session.audio is not None
        config = af.config
        adts = b"".join(config.adts(bytes(f[0])) for f in af.out[:4])
        try:
            probe = av.open(io.BytesIO(adts), "r", format="aac")
        except (av.FFmpegError, OSError) as err:
            self._session.audio_note = f"the AAC stream could not be probed ({err})"
            self._aframes = None
            return None
        try:
            if not probe.streams.audio:
                self._session.audio_note = "the AAC stream could not be probed"
                self._aframes = None
                return None
            clock = self._session.audio.media.clock_rate or config.sample_rate
            dummy = av.open(io.BytesIO(), "w", format="mp4")
            self._dummy = dummy
            if video is not None:
                dummy.add_stream_from_template(video, opaque=True)
            audio = dummy.add_stream_from_template(probe.streams.audio[0], opaque=True)
            audio.codec_context.extradata = config.raw
            audio.time_base = Fraction(1, clock)
            dummy.start_encoding()  # codec parameters (with the extradata) are final now
        finally:
            probe.close()
        return audio, clock

    def _new_resolution(self, keyframe: bytearray) -> bool:
        """Whether `keyframe` carries an SPS other than the template's; if so `video` is now
        a template made from it."""
        assert self._vframes is not None and self.video is not None
        sps = self._vframes.nal_of(keyframe, self._sps_type)
        if sps is None or sps == self._sps:
            return False
        old = self.video
        try:
            self.video = self._video_template(keyframe)
        except UnsupportedStream:
            self._sps = sps  # unusable: keep the old template, do not probe this one again
            return False
        ctx, new = old.codec_context, self.video.codec_context
        if (ctx.width, ctx.height) != (new.width, new.height):
            self.resolution_changes += 1
        return True

    def packets(self) -> Iterator[av.Packet[Any]]:
        video, vtb = self.video, Fraction(1, 90_000)
        vf, af = self._vframes, self._aframes
        if vf is None:
            yield from self._audio_packets()
            return
        assert video is not None
        session = self._session
        max_ts = -(1 << 62)  # the held frames were checked in `start`; checked again here
        last_key = -1
        scale = self._audio_scale
        Packet = av.Packet
        pending: list[Frame] = self._held
        self._held = []
        prev_ts = pending[-1][1] if pending else -1
        batch_at = prev_at = time.monotonic()
        if af is not None and pending:
            # Audio from before the first keyframe is of no use: keep what plays with it.
            first = pending[0][1] * self._audio_clock // 90_000
            af.out[:] = [f for f in af.out if f[1] >= first]
        while True:
            if self.arrival_timed:
                pending = self._by_arrival(pending, batch_at)
            elif pending and pending[0][1] == prev_ts:
                # A picture with its predecessor's timestamp: the camera's clock stands still.
                self._time_by_arrival(prev_ts, prev_at, prev_ts)
                pending = self._by_arrival(pending, batch_at)
            if pending:
                prev_ts = pending[-1][1]
            for data, ts, key in pending:
                if ts < max_ts:
                    if max_ts - ts < REORDER_TICKS and vf.is_b_picture(data):
                        self._on_reordered("frames began to arrive out of presentation order")
                        raise StreamError(
                            "camera began sending B-frames; reconnecting through FFmpeg's demuxer"
                        )
                    max_ts = ts  # the camera's clock stepped back: the recorder cuts there
                elif ts > max_ts:
                    max_ts = ts
                if key:
                    if last_key >= 0 and self._on_gop is not None and ts > last_key:
                        self._on_gop((ts - last_key) / 90_000)
                    last_key = ts
                    if self._new_resolution(data) and self.video is not None:
                        video = self.video
                packet = Packet(cast(bytes, data))  # any buffer will do: no copy to bytes
                packet.pts = packet.dts = ts
                packet.time_base = vtb
                packet.stream = video
                if key:
                    packet.is_keyframe = True
                yield packet
            if af is not None:
                audio = self.audio
                atb = audio.time_base if audio is not None else None
                if audio is not None and atb is not None:
                    for data, ts, _ in af.out:
                        packet = Packet(cast(bytes, data))
                        packet.pts = packet.dts = ts if scale == 1 else int(ts * scale)
                        packet.duration = int(af.samples(data) * scale)
                        packet.time_base = atb
                        packet.stream = audio
                        yield packet
                af.out.clear()
            session.read(self._stall)
            if vf.out:
                prev_at, batch_at = batch_at, time.monotonic()
            pending = vf.out
            vf.out = []

    def _audio_packets(self) -> Iterator[av.Packet[Any]]:
        """An audio-only camera's packets."""
        af, audio, session = self._aframes, self.audio, self._session
        assert af is not None and audio is not None and audio.time_base is not None
        atb, scale = audio.time_base, self._audio_scale
        Packet = av.Packet
        while True:
            for data, ts, _ in af.out:
                packet = Packet(cast(bytes, data))
                packet.pts = packet.dts = ts if scale == 1 else int(ts * scale)
                packet.duration = int(af.samples(data) * scale)
                packet.time_base = atb
                packet.stream = audio
                yield packet
            af.out.clear()
            session.read(self._stall)

    def camera_realtime_us(self) -> int | None:
        """The camera's clock at video pts 0 (µs since the Unix epoch), from RTCP."""
        return self._session.realtime_us

    def close(self) -> None:
        self._session.close()
        for probe in self._probes:
            probe.close()
        if self._dummy is not None:
            self._dummy.close()
