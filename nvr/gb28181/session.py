"""The platform's media dialogs (GB/T 28181-2016 9.2, 9.8, 9.9): an INVITE with SDP asks
for a channel live (`s=Play`), recorded (`s=Playback`, `t=<start> <end>` in Unix seconds)
or as a download (`s=Download`, `a=downloadspeed:<n>`); we answer 200 with our SDP (the
same SSRC in `y=`, PS over RTP/AVP 96, UDP or TCP with `a=setup`), and after the ACK send
the stream: PS packs (`nvr.gb28181.ps`) in RTP (`nvr.gb28181.rtp`) from `nvr.gb28181.media`.
BYE ends it from either side; INFO with MANSRTSP pauses, plays and scales a playback; at
the end of a recorded range we send `MediaStatus` 121 and then BYE if the platform has not.

Every stream the platform opens is audited under its own principal (`gb28181:<server id>`,
R5): what, which camera, which range, where to, and what was refused.

Runs on the daemon's event loop (one task per stream, `gb28181-<kind>-<camera>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiosipua import SipRequest, SipResponse

from nvr.gb28181 import manscdp, sip
from nvr.gb28181.errors import GbError
from nvr.gb28181.media import GopCache, LiveSource, MediaFrame, Pace, recorded_frames
from nvr.gb28181.ps import PsMuxer
from nvr.gb28181.rtp import RtpSender
from nvr.ingest.tap import PacketTap

if TYPE_CHECKING:
    from nvr.gb28181.device import Audit, ChannelConfig, GbDevice, SegmentIndex

log = logging.getLogger("nvr.gb28181.session")

ACK_TIMEOUT = 5.0
BYE_AFTER_END = 5.0
SEEK_GAP_90K = 3600
"""After a seek the stream goes on 40 ms (90 kHz) after the last frame sent."""
MASKED = "privacy masks: the platform may not see behind them ([gb28181] unmasked)"
"""Why a masked camera's stream is refused (SIP Warning text and the audit's reason)."""
"""Seconds after MediaStatus 121 before we send BYE ourselves."""
MIN_SCALE, MAX_SCALE = 0.25, 4.0


@dataclass(frozen=True)
class Offer:
    """What the platform's SDP asks for."""

    kind: str
    """Play, Playback or Download."""
    host: str
    port: int
    transport: str
    """udp, tcp-active (we connect) or tcp-passive (we listen)."""
    ssrc: str
    start_ms: int = 0
    end_ms: int = 0
    speed: float = 1.0


class OfferError(ValueError):
    """An SDP offer we cannot serve (answered 488)."""


def parse_offer(body: bytes) -> Offer:
    """The platform's SDP (GB/T 28181-2016 appendix F)."""
    lines = [ln.strip() for ln in body.decode("utf-8", "replace").splitlines() if "=" in ln]
    kind, host, port, proto, ssrc = "Play", "", 0, "RTP/AVP", ""
    setup = "passive"
    start_ms = end_ms = 0
    speed = 1.0
    for line in lines:
        key, _, value = line.partition("=")
        if key == "s":
            kind = value.strip()
        elif key == "c":
            host = value.split()[-1]
        elif key == "m" and value.startswith("video"):
            parts = value.split()
            port, proto = int(parts[1]), parts[2]
        elif key == "y":
            ssrc = value.strip()
        elif key == "t":
            a, _, b = value.partition(" ")
            start_ms, end_ms = int(a or 0) * 1000, int(b or 0) * 1000
        elif key == "a" and value.startswith("setup:"):
            setup = value.split(":", 1)[1].strip()
        elif key == "a" and value.startswith("downloadspeed:"):
            speed = float(value.split(":", 1)[1])
    if kind not in ("Play", "Playback", "Download"):
        raise OfferError(f"unsupported session {kind!r}")
    if not host or not port:
        raise OfferError("no c= address or m=video port")
    if not ssrc.isdigit():
        raise OfferError("no y= SSRC")
    if proto.upper().startswith("TCP"):
        # the platform's role: passive means it listens and we connect (active)
        transport = "tcp-active" if setup == "passive" else "tcp-passive"
    else:
        transport = "udp"
    if kind != "Play" and end_ms <= start_ms:
        raise OfferError(f"{kind} needs t=<start> <end>")
    return Offer(kind, host, port, transport, ssrc, start_ms, end_ms, max(0.25, min(speed, 32)))


def range_start_ms(value: str, start_ms: int) -> int | None:
    """Where a MANSRTSP `Range` asks a playback to go (Unix ms), None for no seek (absent,
    `npt=now-`): `npt=<s>-` is `<s>` seconds after the playback's start, `clock=<UTC>-`
    (RFC 2326 3.7 absolute time, `YYYYMMDDThhmmss[.fff]Z`) that instant. The end of a range
    is ignored (the INVITE's stays). ValueError for anything else."""
    value = value.strip()
    if not value:
        return None
    unit, sep, spec = value.partition("=")
    if not sep:
        raise ValueError(f"Range {value!r}")
    first = spec.split("-", 1)[0].strip()
    unit = unit.strip().lower()
    if unit == "npt":
        if first in ("", "now"):
            return None
        return start_ms + round(float(first) * 1000)
    if unit == "clock":
        if not first:
            return None
        if not first.endswith("Z"):
            raise ValueError(f"Range {value!r}: clock time without Z (UTC)")
        body = first[:-1]
        fmt = "%Y%m%dT%H%M%S.%f" if "." in body else "%Y%m%dT%H%M%S"
        at = datetime.strptime(body, fmt).replace(tzinfo=UTC)
        return round(at.timestamp() * 1000)
    raise ValueError(f"Range {value!r}: unit {unit!r}")


def answer_sdp(offer: Offer, channel_id: str, local_ip: str, port: int) -> bytes:
    proto = "TCP/RTP/AVP" if offer.transport != "udp" else "RTP/AVP"
    lines = [
        "v=0",
        f"o={channel_id} 0 0 IN IP4 {local_ip}",
        f"s={offer.kind}",
        f"c=IN IP4 {local_ip}",
        f"t={offer.start_ms // 1000} {offer.end_ms // 1000}",
        f"m=video {port or 9} {proto} 96",
        "a=sendonly",
        "a=rtpmap:96 PS/90000",
    ]
    if offer.transport == "tcp-active":
        lines += ["a=setup:active", "a=connection:new"]
    elif offer.transport == "tcp-passive":
        lines += ["a=setup:passive", "a=connection:new"]
    lines += [f"y={offer.ssrc}", "f="]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


@dataclass
class Session:
    call_id: str
    channel: ChannelConfig
    offer: Offer
    sender: RtpSender
    invite: SipRequest
    addr: sip.Addr
    to_tag: str
    pace: Pace = field(default_factory=Pace)
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    ended_by_platform: asyncio.Event = field(default_factory=asyncio.Event)
    frames: int = 0
    audio_frames: int = 0
    seek_ms: int | None = None
    """Where a MANSRTSP `Range` asked the playback to go (Unix ms), until it went there."""
    first_rtp_s: float | None = None
    invited_at: float = field(default_factory=time.monotonic)


def _user_of(uri: str) -> str:
    return uri.split(":", 1)[-1].split("@", 1)[0]


@dataclass
class Sessions:
    """The media side of a `GbDevice` (its `media`)."""

    device: GbDevice
    index: SegmentIndex
    taps: Callable[[str], PacketTap] | None
    audit: Audit | None = None
    sessions: dict[str, Session] = field(default_factory=dict)
    finished: list[Session] = field(default_factory=list)
    """Ended sessions, newest last (the last 50; tests and the benchmark read them)."""
    gop_cache: bool = True
    """Keep each channel's current GOP so live starts at once (`media.GopCache`), while
    registered (`cache_live`)."""
    _caches: dict[str, GopCache] = field(default_factory=dict)

    def cache_live(self, on: bool) -> None:
        """Keep the channels' current GOPs (on: registered, a live INVITE can come) or drop
        them (off: no platform to ask). A cache makes the recorder build a tap frame for
        every packet of its camera, so it exists only while it can be used, and only for
        the channels offered to the platform."""
        if on and self.gop_cache and self.taps is not None:
            for ch in self.device.channels:
                if ch.camera not in self._caches:
                    self._caches[ch.camera] = GopCache(self.taps(ch.camera))
        elif not on:
            caches, self._caches = self._caches, {}
            for cache in caches.values():
                cache.close()

    async def _audit(
        self, action: str, camera: str, outcome: str, detail: dict[str, object]
    ) -> None:
        if self.audit is None:
            return
        await asyncio.to_thread(self.audit, self.device.principal, action, camera, outcome, detail)

    async def handle(self, req: SipRequest, addr: sip.Addr) -> SipResponse | None:
        call_id = req.headers.get_first("Call-ID", "") or ""
        session = self.sessions.get(call_id)
        if req.method == "INVITE":
            if session is not None:  # a re-INVITE: not supported, keep the stream
                return sip.response_to(req, 488, "Not Acceptable Here")
            return await self._invite(req, addr)
        if req.method == "ACK":
            if session is not None:
                session.acked.set()
            return None
        if req.method == "BYE":
            if session is None:
                return sip.response_to(req, 481, "Call/Transaction Does Not Exist")
            session.ended_by_platform.set()
            await self._end(session)
            return sip.response_to(req, 200, "OK")
        if req.method == "INFO":
            if session is None:
                return sip.response_to(req, 481, "Call/Transaction Does Not Exist")
            return self._info(req, session)
        return sip.response_to(req, 200, "OK")  # CANCEL: the INVITE is answered at once

    async def _invite(self, req: SipRequest, addr: sip.Addr) -> SipResponse:
        channel_id = _user_of(req.uri)
        subject = req.headers.get_first("Subject", "") or ""
        channel = self.device.channel(channel_id) or self.device.channel(subject.split(":", 1)[0])
        try:
            offer = parse_offer(req.body)
        except (OfferError, ValueError, IndexError) as err:
            log.info("GB/T 28181: INVITE refused: %s", err)
            return sip.response_to(req, 488, "Not Acceptable Here")
        action = {"Play": "live", "Playback": "playback", "Download": "download"}[offer.kind]
        detail: dict[str, object] = {
            "channel": channel_id,
            "destination": f"{offer.host}:{offer.port}",
            "transport": offer.transport,
            "ssrc": offer.ssrc,
        }
        if offer.kind != "Play":
            detail |= {"start_ms": offer.start_ms, "end_ms": offer.end_ms}
        if channel is None:
            await self._audit(action, "?", "refused", {**detail, "reason": "no such channel"})
            return sip.response_to(req, 404, "Not Found")
        if channel.masked:
            # Privacy masks (R10): the platform is a principal like a user, masked unless
            # `[gb28181] unmasked`; its streams are the camera's own bitstream, never masked.
            await self._audit(action, channel.camera, "refused", {**detail, "reason": MASKED})
            res = sip.response_to(req, 403, "Forbidden")
            res.headers.set_single("Warning", f'399 {self.device.config.device_id} "{MASKED}"')
            return res
        if offer.kind == "Play" and self.taps is None:
            await self._audit(action, channel.camera, "refused", {**detail, "reason": "no live"})
            return sip.response_to(req, 488, "Not Acceptable Here")
        if offer.kind != "Play":
            segments = await asyncio.to_thread(
                self.index.segments, channel.camera, offer.start_ms, offer.end_ms
            )
            if not segments:
                await self._audit(
                    action, channel.camera, "refused", {**detail, "reason": "no footage"}
                )
                return sip.response_to(req, 404, "Not Found")
        sender = RtpSender(
            offer.transport,
            (offer.host, offer.port),
            int(offer.ssrc) & 0xFFFFFFFF,
            bind_host=self.device.bind_host,
        )
        port = await sender.prepare()
        tag = sip.new_tag()
        session = Session(
            req.headers.get_first("Call-ID", "") or "", channel, offer, sender, req, addr, tag
        )
        if offer.kind != "Play":
            session.pace.scale = offer.speed
        self.sessions[session.call_id] = session
        await self._audit(action, channel.camera, "ok", detail)
        session.task = asyncio.create_task(
            self._stream(session), name=f"gb28181-{action}-{channel.camera}"
        )
        session.task.add_done_callback(_report_crash)
        res = sip.response_to(req, 200, "OK", to_tag=tag)
        local_ip, local_port = self.device.local
        res.headers.set_single("Contact", f"<sip:{channel.channel_id}@{local_ip}:{local_port}>")
        res.headers.set_single("Content-Type", "application/sdp")
        res.body = answer_sdp(offer, channel.channel_id, local_ip, port)
        log.info(
            "GB/T 28181: %s of %s to %s:%d (%s)",
            action,
            channel.camera,
            offer.host,
            offer.port,
            offer.transport,
        )
        return res

    def _info(self, req: SipRequest, session: Session) -> SipResponse:
        """MANSRTSP (GB/T 28181-2016 appendix B): PLAY [Scale, Range], PAUSE."""
        text = req.body.decode("utf-8", "replace")
        lines = text.strip().splitlines()
        if not lines or session.offer.kind == "Play":
            return sip.response_to(req, 400, "Bad Request")
        method = lines[0].split()[0].upper()
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
        }
        if method == "PAUSE":
            session.pace.pause()
        elif method == "PLAY":
            scale = None
            if "scale" in headers:
                try:
                    scale = min(max(float(headers["scale"]), MIN_SCALE), MAX_SCALE)
                except ValueError:
                    return sip.response_to(req, 400, "Bad Request")
            try:
                at_ms = range_start_ms(headers.get("range", ""), session.offer.start_ms)
            except ValueError:
                return sip.response_to(req, 400, "Bad Request")
            if at_ms is not None:
                start, end = session.offer.start_ms, session.offer.end_ms
                session.seek_ms = min(max(at_ms, start), end - 1)
            session.pace.play(scale)
        else:
            return sip.response_to(req, 400, "Bad Request")
        return sip.response_to(req, 200, "OK")

    async def _stream(self, session: Session) -> None:
        ch = session.channel
        live: LiveSource | None = None
        try:
            await asyncio.wait_for(session.acked.wait(), ACK_TIMEOUT)
            await session.sender.open()
            muxer: PsMuxer | None = None
            if session.offer.kind == "Play":
                assert self.taps is not None
                live = LiveSource(self._caches.get(ch.camera) or self.taps(ch.camera))
                async for frame in live.frames():
                    if muxer is None:
                        muxer = PsMuxer(live.codec or "h264", frame.audio_codec)
                    await self._send(session, muxer, frame)
                return
            start, end = session.offer.start_ms, session.offer.end_ms
            shift = 0  # after a seek: keeps the RTP/PS timestamps going forward
            last_dts = 0
            while True:
                segments = await asyncio.to_thread(self.index.segments, ch.camera, start, end)
                sought = False
                async for codec, frame in recorded_frames(segments, start, end, session.pace):
                    if session.seek_ms is not None:  # MANSRTSP Range: from its keyframe
                        start, session.seek_ms = session.seek_ms, None
                        sought = True
                        break
                    if muxer is None:
                        muxer = PsMuxer(codec, frame.audio_codec)
                    if shift:
                        frame = replace(frame, pts=frame.pts + shift, dts=frame.dts + shift)
                    last_dts = max(last_dts, frame.dts)
                    await self._send(session, muxer, frame)
                if not sought:
                    break
                shift = last_dts + SEEK_GAP_90K - 9000  # the next generator starts at 9000
            await self._end_of_file(session)
        except TimeoutError:
            log.info("GB/T 28181: %s: no ACK or no connection from the platform", ch.camera)
        except (ConnectionError, OSError) as err:
            log.info("GB/T 28181: %s stream to the platform ended: %s", ch.camera, err)
        finally:
            if live is not None:
                live.close()
            await session.sender.close()
            if self.sessions.pop(session.call_id, None) is not None:
                # ended on our side (end of file, connection lost, no ACK): BYE
                await self._bye(session)
            self.finished = [*self.finished[-49:], session]

    async def _send(self, session: Session, muxer: PsMuxer, frame: MediaFrame) -> None:
        if frame.audio:
            # new or changed audio: declared by the next keyframe's PSM, not sent until then
            muxer.audio_codec = frame.audio_codec
            audio = (
                muxer.audio(frame.data, frame.pts) if muxer.declared == frame.audio_codec else None
            )
            if audio is not None:
                await session.sender.send(audio, frame.pts)
                session.audio_frames += 1
            return
        if muxer.audio_codec is None:
            muxer.audio_codec = frame.audio_codec
        pack = muxer.video(frame.data, frame.pts, frame.dts, frame.keyframe)
        await session.sender.send(pack, frame.dts)
        session.frames += 1
        if session.first_rtp_s is None:
            session.first_rtp_s = time.monotonic() - session.invited_at

    async def _end_of_file(self, session: Session) -> None:
        """MediaStatus 121, then wait for the platform's BYE (or send ours)."""
        body = manscdp.media_status(self.device.next_sn(), session.channel.channel_id)
        try:
            await self.device.send_message(body)
        except (GbError, OSError) as err:
            log.info("GB/T 28181: MediaStatus not delivered: %s", err)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.ended_by_platform.wait(), BYE_AFTER_END)

    async def _bye(self, session: Session) -> None:
        invite = session.invite
        to = invite.headers.get_first("From", "") or ""
        ours = (invite.headers.get_first("To", "") or "") + f";tag={session.to_tag}"
        contact = invite.headers.get_first("Contact", "") or ""
        target = contact.strip("<>").split(">")[0] if contact else invite.uri
        req = self.device.new_request(
            "BYE", target or invite.uri, call_id=session.call_id, to=to, from_header=ours
        )
        try:
            await self.device.send_request(req, wait_s=2.0)
        except (GbError, OSError) as err:
            log.info("GB/T 28181: BYE to the platform not answered: %s", err)

    async def _end(self, session: Session) -> None:
        self.sessions.pop(session.call_id, None)
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.task

    async def close(self, bye: bool = True) -> None:
        """End every stream: with a BYE (the daemon is stopping), or without one (the
        platform is gone: its streams go nowhere, and a BYE would only wait for it)."""
        sessions = list(self.sessions.values())
        if not bye:
            self.sessions.clear()
        for session in sessions:
            if session.task is not None:
                session.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session.task


def _report_crash(task: asyncio.Task[None]) -> None:
    """A bug in a stream ends that stream only; it must not pass silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("GB/T 28181: %s failed", task.get_name(), exc_info=task.exception())
