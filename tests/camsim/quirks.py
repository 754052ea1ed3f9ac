"""A small RTSP camera of our own that reproduces known camera quirks, one mount per quirk.

This module owns the quirk server used by tests/test_rtsp_quirks.py and bench/interop.py: an
asyncio RTSP server on 127.0.0.1 that serves the pre-encoded camsim clips (`clips.py`) as RTP,
interleaved on the RTSP connection (or over UDP where the client asks for it), paced in real
time. Nothing is encoded while serving: each clip is cut into RTP payloads once, and a session
only writes RTP headers in front of them. Each mount is one entry of `CATALOGUE`; its `Quirk`
says which misbehaviour is switched on. Any further path segments after the mount name are
ignored, so one quirk can serve many cameras (`/busy/cam07`).

`QuirkServer` runs its own event loop on a daemon thread (`quirks-server`); `start()` and
`stop()` are called from any other thread. Everything else here runs on that loop.

`python -m tests.camsim.quirks [CLIPS_DIR [PORT]]` serves every mount by hand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.camsim.clips import G7XX_RATE, make_quirk_clips, quirk_clip_path

__all__ = ["CATALOGUE", "Quirk", "QuirkServer", "clip_names"]

RTP_PAYLOAD_BYTES = 1400
"""Largest RTP payload sent: a NAL unit above this goes out as FU-A fragments."""
SESSION_TIMEOUT_S = 60


@dataclass(frozen=True)
class Quirk:
    """How one mount misbehaves. The defaults are a well-behaved camera."""

    name: str
    summary: str
    item: str = ""
    """Where the quirk comes from (issue 12's list), for tables."""
    clip: str = "h264"
    stray_bytes: bool = False
    """A CRLF or 1-40 random bytes before about one interleaved packet in 200-400 (Axis, Canon)."""
    lf_only: bool = False
    """RTSP responses end their lines in LF alone."""
    redirect_hops: int = 0
    """OPTIONS and DESCRIBE on the mount answer 302 with `Location` this many times in a row."""
    foreign_ssrc: bool = False
    """A stale session's packets (another SSRC, other sequence numbers and timestamps) share
    the interleaved channel of each track; the SETUP reply names the session's own SSRC."""
    udp_only: bool = False
    """SETUP asking for RTP over the RTSP connection is answered 461 Unsupported Transport."""
    busy_seconds: float = 0.0
    """Server-wide, one DESCRIBE/SETUP/PLAY at a time, each taking this long: a camera server
    slow under load (many clients connecting at once), not a dead one."""
    video: bool = True
    """False: the clip's video is not offered (an audio-only camera)."""
    audio: str = ""
    """An audio clip of `QUIRK_CLIPS` ("pcma", "pcmu", "g726") served instead of the clip's."""
    marker_every_slice: bool = False
    """The RTP marker bit on the last packet of every slice, not only of the picture's last."""
    join_seconds: float = 0.0
    """A session starts this far into the clip (mid-GOP, as when joining a running camera)."""
    step_at: float = 0.0
    step_seconds: float = 0.0
    """At `step_at` seconds of media, every track's RTP clock steps by `step_seconds` (an
    SNTP correction of the camera's clock), once per session."""
    audio_rtpinfo_offset: float = 0.0
    """The audio's RTP-Info `rtptime` is this many seconds away from what its packets say."""
    constant_ts: bool = False
    """Every video picture carries the same RTP timestamp."""
    base_without_scheme: bool = False
    """DESCRIBE's `Content-Base` lacks the scheme: `127.0.0.1:PORT/mount/` (Anjvision)."""
    other_payload_type: int = 0
    """About one video packet in 50 is followed by a packet of this payload type (same SSRC
    and sequence numbering, junk payload), as Geovision cameras send type 50."""
    annex_b_payloads: bool = False
    """Single NAL unit packets carry Annex B instead: a start code before the unit, and
    small units (parameter sets, SEI) packed together with start codes (V380 cameras)."""
    sdp_parameter_sets: bool = True
    """False: no `sprop-parameter-sets` in the SDP; they come in-band only."""
    empty_fu_start: bool = False
    """Every fragmented NAL unit opens with an FU-A start fragment that carries no bytes, the
    unit's bytes following in the next fragments (retina's issue 115)."""
    sdp_extra: tuple[str, ...] = ()
    """SDP lines put after the video's section: media sections no parser understands."""


TPLINK_SDP = (
    "m=application/TP-LINK 0 RTP/AVP smart/1/90000",
    "a=rtpmap:95 TP-LINK/90000",
    "a=control:trackID=90",
    "m=video 0 RTP/AVP 98",
    "a=rtpmap:98 H264/ninety-thousand",
    "a=control:trackID=91",
)
"""What a TP-Link TL-IPC44AW announces besides its streams (retina's testdata, moonfire-nvr
issue 238), and a video section whose rtpmap has no clock rate."""

CATALOGUE: dict[str, Quirk] = {
    q.name: q
    for q in (
        Quirk("plain", "a well-behaved camera (baseline)", clip="h264aac"),
        Quirk("stray-bytes", "CRLF or 1-40 random bytes between interleaved packets", "1",
              clip="h264aac", stray_bytes=True),
        Quirk("lf-only", "RTSP response lines end in LF only", "3", lf_only=True),
        Quirk("redirect", "OPTIONS and DESCRIBE answered 302 twice before the stream", "5",
              redirect_hops=2),
        Quirk("foreign-ssrc", "a stale session's packets on the same interleaved channel", "9",
              clip="h264aac", foreign_ssrc=True),
        Quirk("udp-only", "SETUP over TCP answered 461: the camera sends RTP over UDP only", "10",
              udp_only=True),
        Quirk("busy", "one handshake request at a time, 0.1 s each (64 cameras at once)", "11",
              busy_seconds=0.1),
    Quirk("slices-marker", "4 slices a picture, RTP marker bit on every slice", "2",
              clip="slices4", marker_every_slice=True),
    Quirk("long-gop", "a keyframe every 14 s, joined 1 s into a GOP", "4",
              clip="longgop", join_seconds=1.0),
    Quirk("step-back-half", "RTP clocks step back 0.5 s after 6 s (SNTP correction)", "6",
              clip="h264aac", step_at=6.0, step_seconds=-0.5),
    Quirk("step-back-2", "RTP clocks step back 2 s after 6 s (SNTP correction)", "6",
              clip="h264aac", step_at=6.0, step_seconds=-2.0),
    Quirk("pcma", "G.711 A-law audio (payload type 8, with rtpmap)", "7", audio="pcma"),
    Quirk("pcmu", "G.711 mu-law audio (payload type 0, no rtpmap)", "7", audio="pcmu"),
    Quirk("g726", "G.726-32 audio (cannot be kept without re-encoding)", "7", audio="g726"),
    Quirk("rtpinfo-audio", "audio RTP-Info rtptime 30 s away from its packets", "8",
              clip="h264aac", audio_rtpinfo_offset=-30.0),
    Quirk("resize", "640x360 for 5 s, then 480x272 (a new SPS), looping", "resolution",
              clip="resize"),
    Quirk("audio-only", "an audio-only camera (AAC, no video in the SDP)", "audio only",
              clip="h264aac", video=False),
    Quirk("constant-ts", "every picture with the same RTP timestamp", "constant ts",
              constant_ts=True),
    Quirk("base-no-scheme", "Content-Base without rtsp:// (Anjvision)", "retina",
              base_without_scheme=True),
    Quirk("payload-type-50", "packets of payload type 50 among the video (Geovision)",
              "retina", other_payload_type=50),
    Quirk("annex-b-payloads", "start codes in single NAL unit packets, parameter sets "
              "in-band only (V380)", "retina", annex_b_payloads=True, sdp_parameter_sets=False),
    Quirk("empty-fu-start", "every FU-A opens with an empty start fragment", "retina",
              clip="h264aac", empty_fu_start=True),
    Quirk("sdp-unparseable", "SDP sections we cannot parse between video and audio "
              "(TP-Link's `m=application/TP-LINK ... smart/1/90000`, a garbled rtpmap)",
              "retina", clip="h264aac", sdp_extra=TPLINK_SDP),
    )
}  # fmt: skip


# --- clips as RTP payloads ---------------------------------------------------------------------


@dataclass
class _Track:
    """One stream of a clip cut into RTP payloads: `units` of (time in clock ticks, payloads,
    indices of the payloads that end a slice)."""

    kind: str
    payload_type: int
    clock: int
    loop_ticks: int
    units: list[tuple[int, list[bytes], frozenset[int]]]
    sdp: list[str]


@dataclass
class _Clip:
    tracks: list[_Track] = field(default_factory=list)


def _nal_units(annex_b: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (start codes removed)."""
    return [n.lstrip(b"\x00") for n in re.split(b"\x00\x00\x01", annex_b) if n.strip(b"\x00")]


def _h264_payloads(nals: list[bytes]) -> tuple[list[bytes], frozenset[int]]:
    """RFC 6184 packetization mode 1: single NAL unit packets and FU-A; also the indices of
    the payloads that end a slice (VCL NAL unit)."""
    out: list[bytes] = []
    ends: set[int] = set()
    for nal in nals:
        if len(nal) <= RTP_PAYLOAD_BYTES:
            out.append(nal)
            if 1 <= nal[0] & 0x1F <= 5:
                ends.add(len(out) - 1)
            continue
        indicator = (nal[0] & 0xE0) | 28
        body = nal[1:]
        step = RTP_PAYLOAD_BYTES - 2
        for start in range(0, len(body), step):
            header = nal[0] & 0x1F
            if start == 0:
                header |= 0x80
            if start + step >= len(body):
                header |= 0x40
            out.append(bytes([indicator, header]) + body[start : start + step])
        if 1 <= nal[0] & 0x1F <= 5:
            ends.add(len(out) - 1)
    return out, frozenset(ends)


def _load_clip(clips_dir: Path, name: str) -> _Clip:
    index_path = quirk_clip_path(clips_dir, name)
    index = json.loads(index_path.read_text())
    clip = _Clip()
    for stream in index["streams"]:
        data = (index_path.parent / stream["file"]).read_bytes()
        rows = stream["packets"]
        if stream["kind"] == "video":
            if stream["codec"] != "h264":
                raise ValueError(
                    f"quirk server serves H.264 video only, clip {name} has {stream['codec']}"
                )
            units = []
            sps = pps = b""
            for offset, size, pts, _dts, _dur, _key in rows:
                nals = _nal_units(data[offset : offset + size])
                for nal in nals:
                    if nal[0] & 0x1F == 7 and not sps:
                        sps = nal
                    elif nal[0] & 0x1F == 8 and not pps:
                        pps = nal
                units.append((pts, *_h264_payloads(nals)))
            sprop = ",".join(base64.b64encode(x).decode() for x in (sps, pps))
            sdp = [
                "m=video 0 RTP/AVP 96",
                "a=rtpmap:96 H264/90000",
                f"a=fmtp:96 packetization-mode=1;profile-level-id={sps[1:4].hex()};"
                f"sprop-parameter-sets={sprop}",
            ]
            clip.tracks.append(_Track("video", 96, 90_000, stream["loop_duration"], units, sdp))
        elif stream["kind"] == "audio" and stream["codec"] == "aac":
            rate, channels = stream["sample_rate"], stream["channels"]
            units = []
            for offset, size, pts, _dts, _dur, _key in rows:
                au = data[offset : offset + size]
                units.append((pts, [struct.pack(">HH", 16, size << 3) + au], frozenset()))
            sdp = [
                "m=audio 0 RTP/AVP 97",
                f"a=rtpmap:97 MPEG4-GENERIC/{rate}/{channels}",
                f"a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;"
                f"indexlength=3;indexdeltalength=3;config={stream['codec_data']}",
            ]
            clip.tracks.append(_Track("audio", 97, rate, stream["loop_duration"], units, sdp))
        elif stream["kind"] == "audio" and stream["codec"] in G7XX_SDP:
            payload_type, sdp = G7XX_SDP[stream["codec"]]
            units = [
                (pts, [data[offset : offset + size]], frozenset())
                for offset, size, pts, _dts, _dur, _key in rows
            ]
            clip.tracks.append(
                _Track("audio", payload_type, G7XX_RATE, stream["loop_duration"], units, sdp)
            )
        else:
            raise ValueError(f"quirk server cannot serve {stream['codec']} (clip {name})")
    return clip


def _annex_b(payloads: list[bytes]) -> list[bytes]:
    """Single NAL unit payloads as Annex B (start code first), small ones packed together;
    FU-A fragments unchanged."""
    out: list[bytes] = []
    group = b""
    for payload in payloads:
        if payload[0] & 0x1F == 28:
            if group:
                out.append(group)
                group = b""
            out.append(payload)
            continue
        unit = b"\x00\x00\x00\x01" + payload
        if group and len(group) + len(unit) > RTP_PAYLOAD_BYTES:
            out.append(group)
            group = b""
        group += unit
    if group:
        out.append(group)
    return out


def _empty_fu_starts(payloads: list[bytes]) -> list[bytes]:
    """Each FU-A start fragment split in two: a start with no bytes, then the bytes in a
    fragment without the start bit."""
    out: list[bytes] = []
    for payload in payloads:
        if payload[0] & 0x1F == 28 and payload[1] & 0x80:
            out.append(payload[:1] + bytes((payload[1] & 0xBF,)))
            out.append(payload[:1] + bytes((payload[1] & 0x7F,)) + payload[2:])
        else:
            out.append(payload)
    return out


G7XX_SDP = {
    "pcma": (8, ["m=audio 0 RTP/AVP 8", "a=rtpmap:8 PCMA/8000"]),
    "pcmu": (0, ["m=audio 0 RTP/AVP 0"]),  # a static payload type needs no rtpmap
    "g726": (97, ["m=audio 0 RTP/AVP 97", "a=rtpmap:97 G726-32/8000"]),
}


# --- the server --------------------------------------------------------------------------------


@dataclass
class _Stream:
    """One track of one session: RTP numbering and where its packets go."""

    track: _Track
    ssrc: int
    seq: int
    ts0: int
    channel: int = 0
    udp: tuple[asyncio.DatagramTransport, tuple[str, int]] | None = None


class _Session:
    """One RTSP connection (and the RTSP session on it)."""

    def __init__(
        self, server: QuirkServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.rng = random.Random(server.next_seed())
        self.id = f"{self.rng.getrandbits(48):012x}"
        self.quirk: Quirk | None = None
        self.clip: _Clip | None = None
        self.streams: dict[int, _Stream] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.until_junk = self.rng.randint(200, 400)

    # --- RTSP ---

    async def run(self) -> None:
        try:
            while True:
                first = await self.reader.readexactly(1)
                if first == b"$":  # the client's RTCP on the connection: not needed here
                    head = await self.reader.readexactly(3)
                    await self.reader.readexactly(struct.unpack(">H", head[1:])[0])
                    continue
                head = first + await self.reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, url, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                if length:
                    await self.reader.readexactly(length)
                if not await self.answer(method, url, headers):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            for task in self.tasks:
                task.cancel()
            for stream in self.streams.values():
                if stream.udp is not None:
                    stream.udp[0].close()
            self.writer.close()

    def reply(self, status: str, cseq: str, headers: dict[str, str], body: str = "") -> None:
        eol = "\n" if self.quirk is not None and self.quirk.lf_only else "\r\n"
        lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", "Server: nvr-quirks"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines.append(f"Content-Length: {len(body.encode())}")
        self.writer.write((eol.join(lines) + eol + eol + body).encode())

    async def answer(self, method: str, url: str, headers: dict[str, str]) -> bool:
        cseq = headers.get("cseq", "0")
        path = re.sub(r"^rtsp://[^/]*", "", url).split("?")[0]
        parts = [p for p in path.split("/") if p]
        quirk = CATALOGUE.get(parts[0]) if parts else None
        if quirk is None:
            self.reply("404 Not Found", cseq, {})
            return True
        self.quirk = quirk
        camera = "/".join(p for p in parts if not p.startswith(("hop", "trackID=")))
        self.server.first_request.setdefault(camera, time.monotonic())
        base = f"rtsp://127.0.0.1:{self.server.port}/" + "/".join(
            p for p in parts if not p.startswith("trackID=")
        )
        hop = sum(1 for p in parts if p.startswith("hop"))
        if method in ("OPTIONS", "DESCRIBE") and hop < quirk.redirect_hops:
            self.reply("302 Moved Temporarily", cseq, {"Location": f"{base}/hop{hop + 1}"})
            return True
        if method in ("DESCRIBE", "SETUP", "PLAY") and quirk.busy_seconds:
            async with self.server.busy:
                await asyncio.sleep(quirk.busy_seconds)
        if method == "OPTIONS":
            public = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
            self.reply("200 OK", cseq, {"Public": public})
        elif method == "GET_PARAMETER":
            self.reply("200 OK", cseq, {"Session": self.id})
        elif method == "DESCRIBE":
            self.clip = self.server.tracks(quirk)
            sdp = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", f"s={quirk.name}", "t=0 0",
                   "c=IN IP4 0.0.0.0", "a=control:*"]  # fmt: skip
            for i, track in enumerate(self.clip.tracks):
                lines = track.sdp
                if not quirk.sdp_parameter_sets:
                    lines = [re.sub(r";sprop-parameter-sets=[^;]*", "", x) for x in lines]
                sdp += [*lines, f"a=control:trackID={i}"]
                if track.kind == "video":
                    sdp += quirk.sdp_extra
            content_base = base + "/"
            if quirk.base_without_scheme:
                content_base = content_base.removeprefix("rtsp://")
            self.reply(
                "200 OK",
                cseq,
                {"Content-Base": content_base, "Content-Type": "application/sdp"},
                "\r\n".join(sdp) + "\r\n",
            )
        elif method == "SETUP":
            await self.setup(parts, headers, cseq)
        elif method == "PLAY":
            self.play(base, cseq)
        elif method == "TEARDOWN":
            self.reply("200 OK", cseq, {"Session": self.id})
            return False
        else:
            self.reply("405 Method Not Allowed", cseq, {})
        return True

    async def setup(self, parts: list[str], headers: dict[str, str], cseq: str) -> None:
        quirk = self.quirk
        found = re.match(r"trackID=(\d+)$", parts[-1])
        if quirk is None or self.clip is None or found is None:
            self.reply("455 Method Not Valid in This State", cseq, {})
            return
        index = int(found.group(1))
        transport = headers.get("transport", "")
        if index >= len(self.clip.tracks):
            # A section of `sdp_extra`: set up as the camera would, but nothing is sent on it.
            self.reply("200 OK", cseq, {"Transport": transport, "Session": f"{self.id};timeout=60"})
            return
        track = self.clip.tracks[index]
        stream = _Stream(
            track, self.rng.getrandbits(32), self.rng.getrandbits(16), self.rng.getrandbits(32)
        )
        interleaved = re.search(r"interleaved=(\d+)", transport)
        client_port = re.search(r"client_port=(\d+)", transport)
        if "TCP" in transport.upper() and interleaved is not None:
            if quirk.udp_only:
                self.reply("461 Unsupported Transport", cseq, {})
                return
            stream.channel = int(interleaved.group(1))
            answer = f"RTP/AVP/TCP;unicast;interleaved={stream.channel}-{stream.channel + 1}"
        elif client_port is not None:
            loop = asyncio.get_running_loop()
            udp, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            port = udp.get_extra_info("sockname")[1]
            stream.udp = (udp, ("127.0.0.1", int(client_port.group(1))))
            answer = (
                f"RTP/AVP;unicast;client_port={client_port.group(1)}-"
                f"{int(client_port.group(1)) + 1};server_port={port}-{port + 1}"
            )
        else:
            self.reply("461 Unsupported Transport", cseq, {})
            return
        self.streams[index] = stream
        answer += f";ssrc={stream.ssrc:08X}"
        self.reply("200 OK", cseq, {"Transport": answer, "Session": f"{self.id};timeout=60"})

    def play(self, base: str, cseq: str) -> None:
        assert self.quirk is not None
        quirk = self.quirk

        def shown(s: _Stream) -> int:
            if s.track.kind != "audio":
                return s.ts0
            return (s.ts0 + round(quirk.audio_rtpinfo_offset * s.track.clock)) & 0xFFFFFFFF

        info = ",".join(
            f"url={base}/trackID={i};seq={s.seq};rtptime={shown(s)}"
            for i, s in self.streams.items()
        )
        self.reply("200 OK", cseq, {"Session": self.id, "Range": "npt=0.000-", "RTP-Info": info})
        for i, stream in self.streams.items():
            name = f"quirks-{self.id}-{i}"
            # Joining mid-clip: every track from its first unit at or after `join_seconds`.
            join = quirk.join_seconds * stream.track.clock
            skip = next((k for k, u in enumerate(stream.track.units) if u[0] >= join), 0)
            self.tasks.append(asyncio.create_task(self.send(stream, 0.0, skip), name=name))
            if self.quirk.foreign_ssrc and stream.udp is None:
                ghost = _Stream(
                    stream.track,
                    stream.ssrc ^ 0x5A5A5A5A,
                    self.rng.getrandbits(16),
                    self.rng.getrandbits(32),
                    stream.channel,
                )
                # The stale session is 3.3 s further into the clip and slightly later.
                self.tasks.append(
                    asyncio.create_task(self.send(ghost, 0.37, skip=33), name=name + "-stale")
                )

    # --- media ---

    async def send(self, stream: _Stream, delay: float, skip: int = 0) -> None:
        """Send `stream.track` forever in real time (from its unit `skip`, after `delay`)."""
        loop = asyncio.get_running_loop()
        track = stream.track
        t0 = loop.time() + delay
        first = track.units[skip % len(track.units)][0]
        quirk = self.quirk
        assert quirk is not None
        step = round(quirk.step_seconds * track.clock)
        step_from = round(quirk.step_at * track.clock) if step else -1
        still = quirk.constant_ts and track.kind == "video"
        n = 0
        with contextlib.suppress(ConnectionError):
            while True:
                for ticks, payloads, ends in track.units[skip:]:
                    t = n * track.loop_ticks + ticks - first
                    wait = t0 + t / track.clock - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if self.writer.is_closing():
                        return
                    ts = stream.ts0 if still else stream.ts0 + t
                    if 0 <= step_from <= t:
                        ts += step  # the camera's clock was corrected: RTP time steps
                    self.write(stream, ts & 0xFFFFFFFF, payloads, ends)
                    if stream.udp is None:
                        await self.writer.drain()
                skip = 0
                n += 1

    def write(self, stream: _Stream, ts: int, payloads: list[bytes], ends: frozenset[int]) -> None:
        """One unit's RTP packets (marker on the last; with `marker_every_slice` also on
        every payload in `ends`), with this session's quirks."""
        out = bytearray()
        quirk = self.quirk
        assert quirk is not None
        if quirk.annex_b_payloads and stream.track.kind == "video":
            payloads = _annex_b(payloads)
        if quirk.empty_fu_start and stream.track.kind == "video":
            payloads = _empty_fu_starts(payloads)
        last = len(payloads) - 1
        every_slice = quirk.marker_every_slice
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == last or (every_slice and i in ends) else 0
            if (
                quirk.other_payload_type
                and stream.track.kind == "video"
                and stream.udp is None
                and self.rng.random() < 0.02
            ):
                junk = struct.pack(
                    ">BBHII", 0x80, quirk.other_payload_type, stream.seq, ts, stream.ssrc
                ) + self.rng.randbytes(self.rng.randint(20, 100))
                stream.seq = (stream.seq + 1) & 0xFFFF
                out += struct.pack(">cBH", b"$", stream.channel, len(junk)) + junk
            packet = struct.pack(
                ">BBHII", 0x80, marker | stream.track.payload_type, stream.seq, ts, stream.ssrc
            )
            stream.seq = (stream.seq + 1) & 0xFFFF
            if stream.udp is not None:
                stream.udp[0].sendto(packet + payload, stream.udp[1])
                continue
            if self.quirk is not None and self.quirk.stray_bytes:
                self.until_junk -= 1
                if self.until_junk <= 0:
                    self.until_junk = self.rng.randint(200, 400)
                    out += (
                        b"\r\n"
                        if self.rng.random() < 0.3
                        else self.rng.randbytes(self.rng.randint(1, 40))
                    )
                    self.server.junk_sent += 1
            out += struct.pack(">cBH", b"$", stream.channel, len(packet) + len(payload))
            out += packet + payload
        if out:
            self.writer.write(out)


class QuirkServer:
    """The quirk camera on 127.0.0.1: every mount of `CATALOGUE`, on a free port by default."""

    def __init__(self, clips_dir: Path, port: int = 0) -> None:
        self.clips_dir = clips_dir
        self.port = port
        self.junk_sent = 0
        """How many times stray bytes were sent (all sessions)."""
        self.sessions = 0
        self.first_request: dict[str, float] = {}
        """Mount path (as given to `url`) -> `time.monotonic()` of its first RTSP request:
        where a client's connecting began, whatever its process did before."""
        self.busy: asyncio.Lock
        self._clips: dict[str, _Clip] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._seed = 0

    def url(self, mount: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    def next_seed(self) -> int:
        self._seed += 1
        return self._seed

    def clip(self, name: str) -> _Clip:
        if name not in self._clips:
            self._clips[name] = _load_clip(self.clips_dir, name)
        return self._clips[name]

    def tracks(self, quirk: Quirk) -> _Clip:
        """What `quirk`'s mount offers: its clip's video (unless audio-only), then its audio
        clip's or the clip's own audio."""
        base = self.clip(quirk.clip)
        tracks = [t for t in base.tracks if t.kind == "video" and quirk.video]
        audio = self.clip(quirk.audio).tracks if quirk.audio else base.tracks
        return _Clip(tracks + [t for t in audio if t.kind == "audio"])

    def start(self) -> None:
        """Listen (blocking until the port is open); clips are loaded here, not per client."""
        for quirk in CATALOGUE.values():
            self.tracks(quirk)
        self._thread = threading.Thread(target=self._main, name="quirks-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"quirk server did not start: {self._error}") from self._error
        if not self._ready.is_set():
            raise RuntimeError("quirk server did not start within 10 s")

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> QuirkServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except (OSError, ValueError, RuntimeError) as err:  # reported to start()
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.busy = asyncio.Lock()
        sessions: set[asyncio.Task[None]] = set()

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.sessions += 1
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.current_task()
            if task is not None:
                sessions.add(task)
            try:
                await _Session(self, reader, writer).run()
            finally:
                if task is not None:
                    sessions.discard(task)

        server = await asyncio.start_server(client, "127.0.0.1", self.port, backlog=256)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopped.wait()
            server.close()
            for task in list(sessions):
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)


def clip_names() -> list[str]:
    """Every clip the mounts of `CATALOGUE` serve, for `clips.make_quirk_clips`."""
    return sorted(
        {q.clip for q in CATALOGUE.values()} | {q.audio for q in CATALOGUE.values()} - {""}
    )


def main(argv: Sequence[str]) -> int:
    clips = Path(argv[0]) if argv else Path.home() / ".cache" / "nvr-camsim"
    make_quirk_clips(clips, clip_names())
    with QuirkServer(clips, int(argv[1]) if len(argv) > 1 else 0) as server:
        for name, quirk in CATALOGUE.items():
            print(f"{server.url(name)}  {quirk.summary}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
