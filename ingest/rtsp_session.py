"""Our own RTSP client's session for the usual camera: RTSP over TCP with RTP interleaved on
the same connection, H.264 or H.265 video, AAC audio or none. It owns the wire: the
handshake (OPTIONS, DESCRIBE, SETUP, PLAY, redirects, keep-alives, TEARDOWN), the read
buffer, the interleaved RTP/RTCP it demultiplexes into `ingest.rtp`'s frame assemblers, and
the process-wide handshake gate. `ingest.rtsp_source` turns a session into PyAV packets;
`ingest.rtsp_auth` signs its requests. `RtspOpener` tries it first and falls back to
FFmpeg's RTSP demuxer (`NotForUs`) for anything else: UDP, other codecs, interleaved
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
by that thread only. Imports go down: `ingest.rtp`, `ingest.rtsp_auth`, `ingest.errors`;
no PyAV here.
"""

from __future__ import annotations

import errno
import logging
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

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
from nvr.ingest.rtp import (
    AudioFrames,
    PayloadError,
    Sdp,
    SdpMedia,
    VideoFrames,
    audio_frames_for,
    parse_sdp,
    video_frames_for,
)
from nvr.ingest.rtsp_auth import DigestAuth

log = logging.getLogger("nvr.ingest")

RCVLOWAT = 32 * 1024
"""Bytes the kernel collects before waking the reader (`SO_RCVLOWAT`): 1/16 s of a 4 Mbit/s
camera. A slower camera is read when `POLL_SECONDS` have passed (what a crash can lose on
top of the fragment in flight)."""
POLL_SECONDS = 0.1
BUFFER_BYTES = 128 * 1024
"""Read buffer per camera (all of it resident: a bytearray is zeroed when made). The unread
rest of a read (a packet cut by it, rarely more than one) moves to the front after every
parse, so there is always room for the largest interleaved packet (64 KiB) and a read of as
much again; a slower read only means another `recv_into`. Was 256 KiB: 1 MiB more at 8
cameras for nothing."""
NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from 1900-01-01 (NTP) to 1970-01-01."""
ANCHOR_TOLERANCE_S = 1.0
"""Audio placed by the PLAY answer's RTP-Info further than this from the video that arrived
with it is re-anchored to that video (the camera's RTP-Info does not match its packets)."""
KEEPALIVE_SECONDS = 25.0
"""Keep-alive request interval unless the server's session timeout asks for less."""
MAX_MESSAGE_BYTES = 64 * 1024
"""Largest RTSP message (headers and body) accepted from a camera."""
USER_AGENT = "nvr"
MAX_REDIRECTS = 3
"""Redirects (301/302/303/307/308 with `Location`) followed in one handshake, as FFmpeg does."""
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
_HEADER = struct.Struct(">BBHBBHII")
"""An interleaved frame's 4 bytes ($, channel, length) and the first 12 of its RTP header."""
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(r"\r?\n")
_RTSP_LINE = re.compile(rb"(?:RTSP/\d\.\d \d{3}\b[^\r\n]*|[A-Z][A-Z_]+ \S+ RTSP/\d\.\d)\r?\n")
_RTSP_START = re.compile(rb"[A-Z][\x20-\x7e]*\r?")
"""The bytes of an RTSP line seen so far, before its line end arrived."""


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


def _no_payload(p: memoryview, ts: int, marker: bool) -> None:
    """Stands in for a depacketiser where there is none yet (never called)."""


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


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
        self._auth: DigestAuth | None = None
        self._session = ""
        self._keepalive_every = KEEPALIVE_SECONDS
        self._keepalive_method = "OPTIONS"
        self._next_keepalive = 0.0
        self.video: _Track | None = None
        self.audio: _Track | None = None
        self.audio_note = ""
        """Why the camera's audio is not recorded (empty if it is, or there is none)."""
        self.skipped_media = ""
        """The SDP's media sections that could not be parsed and were left out, and why."""
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
        sdp = parse_sdp(describe.body.decode("utf-8", "replace"))
        self.skipped_media = sdp.skipped_text()
        self._choose(sdp, base)
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

    def _choose(self, sdp: Sdp, base: str) -> None:
        """The video (and audio) track to record. Sections of the SDP that could not be
        parsed are left out (the caller logs them); only when the video may be among them
        does the camera go to FFmpeg's demuxer, which may read what we could not."""
        medias = sdp.medias
        video = [m for m in medias if m.kind == "video"]
        last = "no video over RTP/AVP"
        skipped = sdp.skipped_kinds()
        if not video and skipped - {"audio", "application", "text", "message"}:
            raise NotForUs(f"no video section of the SDP could be parsed: {sdp.skipped_text()}")
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
        if not audio and "audio" in skipped:
            self.audio_note = f"the SDP's audio section could not be parsed: {sdp.skipped_text()}"
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
            self._auth = DigestAuth(self._username, self._password or "", reply.challenges)
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
                self._compact()
                return None
            self._start += size
        self._compact()
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
        """Move the unread bytes to the front (usually part of one packet: a copy of a few
        hundred bytes), so that the next read has the rest of the buffer."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._start:
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
        them. The per-packet path (about 400 packets a second for a 4 Mbit/s camera): the
        usual video packet (version 2, no padding, extension or CSRC, the track's SSRC and
        payload type, after the first) takes one unpack of its 16 header bytes and one call
        into the depacketiser; every other packet goes through `_packet`. Bytes that are
        neither an interleaved packet on a set-up channel nor an RTSP message are skipped
        (`_resync`)."""
        buf, view = self._buf, self._view
        pos, end = self._start, self._end
        video = self.video
        media = False
        if video is not None and video.started:
            vch, vssrc, vpt = video.channel, video.ssrc, video.payload_type
            vlast, vext = video.last_raw, video.ext
            vpayload = video.frames.payload
        else:
            vch = -1  # the first video packet goes through `_packet`
            vssrc = vpt = vlast = vext = 0
            vpayload = _no_payload
        unpack = _HEADER.unpack_from
        vgot = False
        while end - pos >= 4:
            if end - pos >= 16:
                dollar, channel, size, b0, b1, _, ts, ssrc = unpack(buf, pos)
                nxt = pos + 4 + size
                if (
                    channel == vch
                    and dollar == 0x24
                    and b0 == 0x80
                    and ssrc == vssrc
                    and (b1 & 0x7F) == vpt
                    and 12 <= size
                    and nxt <= end
                ):
                    if ts != vlast:
                        delta = (ts - vlast) & 0xFFFFFFFF
                        vext += delta - 0x100000000 if delta & 0x80000000 else delta
                        vlast = ts
                    vpayload(view[pos + 16 : nxt], vext, b1 > 0x7F)
                    vgot = True
                    pos = nxt
                    continue
            # Anything else: the video state kept in locals goes back to the track first.
            if vgot and video is not None:
                video.last_raw, video.ext, video.own_at = vlast, vext, self._now
                media, vgot = True, False
            self._start = pos
            taken = self._packet(pos, end)
            pos, end = self._start, self._end  # an RTSP message taken may move the bytes
            if taken < 0:
                break  # more bytes must arrive
            media = media or taken == 2
            if video is not None and video.started:
                vch, vssrc, vpt = video.channel, video.ssrc, video.payload_type
                vlast, vext = video.last_raw, video.ext
                vpayload = video.frames.payload
        if vgot and video is not None:
            video.last_raw, video.ext, video.own_at = vlast, vext, self._now
            media = True
        self._start = pos
        self._compact()
        return media

    def _packet(self, pos: int, end: int) -> int:
        """The message at `pos`, in full: an interleaved packet (RTP of a track, an RTCP
        sender report, a packet of a channel not set up), an RTSP message inline with the
        media, or stray bytes; `pos` is `_start`. Sets `_start` past what was taken (an
        RTSP message may move the unread bytes: `_start` and `_end` change, also when it is
        not all here yet). Returns -1 if more bytes must arrive first, 2 if RTP went to a
        track, else 1."""
        buf = self._buf
        video, audio = self.video, self.audio
        avail = end - pos
        rtp_like = avail <= 4 or buf[pos + 4] >> 6 == 2  # version 2 (RTP and RTCP alike)
        if buf[pos] == 0x24 and rtp_like:
            channel = buf[pos + 1]
            nxt = pos + 4 + ((buf[pos + 2] << 8) | buf[pos + 3])
            track = (
                video
                if video is not None and channel == video.channel
                else audio
                if audio is not None and channel == audio.channel
                else None
            )
            if track is not None or channel in self._channels():
                if nxt > end:
                    return -1
                self._start = nxt
                if track is not None:
                    return 2 if self._rtp(track, pos + 4, nxt) else 1
                if video is not None and channel == video.rtcp_channel:
                    if self.realtime_us is None:
                        self._sender_report(buf, pos + 4, nxt)
                return 1
            # A packet on a channel this session did not set up (old live555 keeps streaming
            # a closed session's): skipped whole if another packet or an RTSP message follows
            # it, else the "$" was a stray byte.
            if avail > 4:
                if nxt >= end:
                    return -1
                if buf[nxt] == 0x24 or buf[nxt] == 0x52:
                    self.foreign_packets += 1
                    self._start = nxt
                    return 1
        return 1 if self._inline_message(pos, end, self._channels()) else -1

    def _channels(self) -> set[int]:
        return {
            c
            for t in (self.video, self.audio)
            if t is not None
            for c in (t.channel, t.rtcp_channel)
        }

    def _rtp(self, track: _Track, p: int, nxt: int) -> bool:
        """The RTP packet `buf[p:nxt]` on `track`'s channel: its payload to the track's
        depacketiser unless its SSRC or payload type is not the track's. True if it went."""
        size = nxt - p
        if size < 12:
            return False
        buf = self._buf
        b0, b1, seq, raw_ts, ssrc = struct.unpack_from(">BBHII", buf, p)
        if not self._admit(track, ssrc, seq, b1 & 0x7F):
            return False
        track.own_at = self._now
        head = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10 and head + 4 <= size:
            head += 4 + 4 * ((buf[p + head + 2] << 8) | buf[p + head + 3])
        stop = nxt
        if b0 & 0x20:
            stop -= buf[nxt - 1]
        if p + head > stop:
            return False
        if track.started:
            delta = (raw_ts - track.last_raw) & 0xFFFFFFFF
            track.ext += delta - (1 << 32) if delta & 0x80000000 else delta
        else:
            self._first_packet(track, raw_ts)
        track.last_raw = raw_ts
        track.frames.payload(self._view[p + head : stop], track.ext, bool(b1 & 0x80))
        return True

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

    def _admit(self, track: _Track, ssrc: int, seq: int, payload_type: int) -> bool:
        """Whether an RTP packet on `track`'s channel is the track's: its SSRC (learnt from
        the first packets when SETUP named none, replaced when the track's own fell silent,
        `_takes_ssrc`) and its payload type (adopted when it is all a new track gets,
        `_takes_type`). Any other packet is dropped and counted; the first of each kind on a
        connection is logged."""
        if ssrc != track.ssrc and not self._takes_ssrc(track, ssrc, seq):
            first = self.foreign_packets == 0
            self.foreign_packets += 1
            what, theirs = "SSRC", f"{ssrc:08X}"
            ours = "not known yet" if track.ssrc is None else f"{track.ssrc:08X}"
        elif payload_type != track.payload_type and not self._takes_type(track, payload_type):
            first = self.other_type_packets == 0
            self.other_type_packets += 1
            what, theirs, ours = "payload type", str(payload_type), str(track.payload_type)
        else:
            return True
        if first:
            log.warning(
                "RTSP %s:%s: dropping %s packets of %s %s (the track's is %s)",
                self.host,
                self.port,
                track.media.kind,
                what,
                theirs,
                ours,
            )
        return False

    def _takes_ssrc(self, track: _Track, ssrc: int, seq: int) -> bool:
        """A packet whose SSRC is not the track's: True if it is the session's after all (the
        packet RTP-Info announced; the first packets when SETUP named no SSRC; another SSRC
        once the track's own has been silent for `SSRC_SWITCH_SECONDS`)."""
        if not track.started and seq == track.info_seq:
            track.ssrc = ssrc  # the packet RTP-Info announced, whatever SETUP said
            return True
        if track.ssrc is None:
            if track.info_seq is not None and seq != track.info_seq:
                track.waited += 1
                if track.waited <= SSRC_LEARN_PACKETS:
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
        return False

    def _takes_type(self, track: _Track, payload_type: int) -> bool:
        """A packet of the track's SSRC with another payload type than the SDP gave: True
        once `OTHER_TYPE_ADOPT` packets in a row of this type came before the track took
        anything (a camera whose SDP names another number than its packets carry)."""
        if track.started:
            return False
        track.other_type_run += 1
        if track.other_type_run < OTHER_TYPE_ADOPT:
            return False
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
