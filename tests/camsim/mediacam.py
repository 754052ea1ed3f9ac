"""A camera with media quirks: a small RTSP server (RTP interleaved over TCP) on 127.0.0.1 that
serves H.264 encoded at start-up with PyAV, and G.711, G.726 or AAC audio, with the quirks of
real cameras that the depacketiser and the recorder must survive, switchable per camera:

- `slices` and `marker_every_slice`: several slices per picture, the RTP marker bit set on the
  last packet of every slice instead of only the picture's last (x264 `slices=4` behind some
  camera firmwares);
- `gop_seconds`: long GOPs ("smart codec"); the stream runs from server start, so a client
  joins mid-GOP and waits for the next keyframe, as with a real camera;
- `step_at`/`step_seconds`: the camera's RTP clock steps (back, after an SNTP correction)
  this long after PLAY, on video and audio alike;
- `audio`: "pcma" | "pcmu" | "g726" | "aac"; `audio_rtpinfo_offset` puts the audio's RTP-Info
  `rtptime` this many seconds away from what its packets say;
- `resize_at`: the picture size changes (a new SPS at a keyframe) this far into each loop;
- `constant_ts`: every video frame carries the same RTP timestamp.

Threads: `MediaCamera.start()` runs an accept thread; each connection gets a thread for its
RTSP requests and, after PLAY, one that paces and sends the media. Writes to a connection are
serialised by a lock. Runs in the test process (the venv's PyAV encodes the media once).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext

MTU = 1400


@dataclass(frozen=True)
class Quirks:
    """What the camera does; the defaults are a well-behaved 10 fps H.264 camera."""

    fps: int = 10
    size: tuple[int, int] = (320, 240)
    gop_seconds: float = 1.0
    slices: int = 1
    marker_every_slice: bool = False
    loop_seconds: float = 10.0
    audio: str | None = None
    audio_rtpinfo_offset: float = 0.0
    step_at: float | None = None
    step_seconds: float = -0.5
    resize_at: float | None = None
    resize_to: tuple[int, int] = (480, 272)
    constant_ts: bool = False


@dataclass(frozen=True)
class VideoClip:
    frames: list[tuple[list[bytes], bool]]
    """Per picture: its NAL units (no start codes) and whether it is a keyframe."""
    sps: bytes
    pps: bytes


def _split_annex_b(data: bytes) -> list[bytes]:
    nals = []
    for chunk in data.split(b"\x00\x00\x01"):
        chunk = chunk.rstrip(b"\x00") if chunk.endswith(b"\x00") else chunk
        if chunk:
            nals.append(chunk)
    return nals


def _encode_video(size: tuple[int, int], fps: int, count: int, quirks: Quirks) -> list[bytes]:
    width, height = size
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps)
    keyint = max(1, round(quirks.gop_seconds * fps))
    ctx.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": (
            f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:"
            f"slices={quirks.slices}:repeat-headers=1"
        ),
    }
    out: list[bytes] = []
    ys = np.arange(height, dtype=np.int32)[:, None]
    xs = np.arange(width, dtype=np.int32)[None, :]
    for i in range(count):
        luma = ((xs + ys + 4 * i) % 256).astype(np.uint8)
        luma[:, (7 * i) % width] = 255
        picture = av.VideoFrame(width, height, "yuv420p")
        picture.planes[0].update(np.ascontiguousarray(luma).tobytes())
        chroma = bytes([128]) * (picture.planes[1].buffer_size)
        picture.planes[1].update(chroma)
        picture.planes[2].update(chroma)
        picture.pts = i
        out += [bytes(p) for p in ctx.encode(picture)]
    out += [bytes(p) for p in ctx.encode(None)]
    return out


def encode_clip(quirks: Quirks) -> VideoClip:
    """The camera's loop of pictures (starting with a keyframe)."""
    total = round(quirks.loop_seconds * quirks.fps)
    parts = [(quirks.size, total)]
    if quirks.resize_at is not None:
        first = round(quirks.resize_at * quirks.fps)
        parts = [(quirks.size, first), (quirks.resize_to, total - first)]
    frames: list[tuple[list[bytes], bool]] = []
    for size, count in parts:
        for data in _encode_video(size, quirks.fps, count, quirks):
            nals = _split_annex_b(data)
            key = any(n[0] & 0x1F == 5 for n in nals)
            frames.append((nals, key))
    sps = next(n for n in frames[0][0] if n[0] & 0x1F == 7)
    pps = next(n for n in frames[0][0] if n[0] & 0x1F == 8)
    return VideoClip(frames, sps, pps)


@dataclass(frozen=True)
class AudioClip:
    encoding: str
    """SDP rtpmap encoding, e.g. PCMA/8000."""
    payload_type: int
    clock: int
    fmtp: str
    packets: list[tuple[bytes, int]]
    """Payload and samples, one RTP packet each, 10 s of a tone."""


def _audio_encoder(name: str, rate: int, fmt: str, bit_rate: int = 0) -> AudioCodecContext:
    ctx = cast(AudioCodecContext, av.CodecContext.create(name, "w"))
    ctx.sample_rate, ctx.layout, ctx.format = rate, "mono", fmt
    if bit_rate:
        ctx.bit_rate = bit_rate
    ctx.open()
    return ctx


def encode_audio(kind: str) -> AudioClip:
    if kind in ("pcma", "pcmu", "g726"):
        rate, samples = 8000, 160
    else:
        rate, samples = 16000, 1024
    t = np.arange(rate * 10) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    if kind in ("pcma", "pcmu"):
        codec = "pcm_alaw" if kind == "pcma" else "pcm_mulaw"
        ctx = _audio_encoder(codec, rate, "s16")
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        data = b"".join(bytes(p) for p in ctx.encode(frame))
        packets = [(data[i : i + samples], samples) for i in range(0, len(data), samples)]
        pt, name = (8, "PCMA") if kind == "pcma" else (0, "PCMU")
        return AudioClip(f"{name}/{rate}", pt, rate, "", packets)
    if kind == "g726":
        ctx = _audio_encoder("g726", rate, "s16", bit_rate=32000)
        out = b""
        for i in range(0, len(tone), samples):
            frame = av.AudioFrame.from_ndarray(
                tone[None, i : i + samples], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, i
            out += b"".join(bytes(p) for p in ctx.encode(frame))
        step = samples // 2  # 4 bits a sample
        packets = [(out[i : i + step], samples) for i in range(0, len(out), step)]
        return AudioClip(f"G726-32/{rate}", 97, rate, "", packets)
    ctx = _audio_encoder("aac", rate, "fltp")
    packets = []
    for i in range(0, len(tone) - samples, samples):
        frame = av.AudioFrame.from_ndarray(
            (tone[None, i : i + samples] / 32768).astype(np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = rate, i
        for p in ctx.encode(frame):
            au = bytes(p)
            packets.append((struct.pack(">HH", 16, len(au) << 3) + au, samples))
    config = "1408"  # AAC-LC, 16 kHz, mono
    fmtp = (
        f"streamtype=5;profile-level-id=1;mode=AAC-hbr;config={config};"
        "sizelength=13;indexlength=3;indexdeltalength=3"
    )
    return AudioClip(f"MPEG4-GENERIC/{rate}/1", 97, rate, fmtp, packets)


class _Connection:
    """One client: its RTSP requests, then its media."""

    def __init__(self, cam: MediaCamera, sock: socket.socket) -> None:
        self.cam = cam
        self.sock = sock
        self.lock = threading.Lock()
        self.channels: dict[str, int] = {}
        self.stop = threading.Event()
        self.sender: threading.Thread | None = None

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def serve(self) -> None:
        buf = b""
        try:
            while not self.stop.is_set():
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                buf += chunk
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    self.answer(head.decode("latin-1"))
        except OSError:
            pass
        finally:
            self.stop.set()
            with contextlib.suppress(OSError):
                self.sock.close()

    def answer(self, head: str) -> None:
        lines = head.split("\r\n")
        method, url = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        cseq = headers.get("cseq", "0")
        extra = ""
        body = ""
        base = self.cam.url()
        if method == "OPTIONS":
            extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN\r\n"
        elif method == "DESCRIBE":
            body = self.cam.sdp()
            extra = f"Content-Base: {base}/\r\nContent-Type: application/sdp\r\n"
        elif method == "SETUP":
            track = "audio" if url.rstrip("/").endswith("audio") else "video"
            ch = 0 if track == "video" else 2
            self.channels[track] = ch
            extra = (
                f"Transport: RTP/AVP/TCP;unicast;interleaved={ch}-{ch + 1};ssrc=0000{ch:04d}\r\n"
                "Session: 12345678;timeout=60\r\n"
            )
        elif method == "PLAY":
            extra = "Session: 12345678\r\n" + self.start_media(base)
        elif method == "TEARDOWN":
            self.stop.set()
        reply = (
            f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}"
        )
        self.send(reply.encode())

    def start_media(self, base: str) -> str:
        cam = self.cam
        now = time.monotonic()
        n0 = int((now - cam.t0) * cam.quirks.fps) + 1  # the next picture of the running stream
        vts0 = cam.video_base + n0 * 90_000 // cam.quirks.fps
        info = [f"url={base}/video;seq=1;rtptime={vts0 & 0xFFFFFFFF}"]
        audio = cam.audio
        a0 = 0
        if audio is not None and "audio" in self.channels:
            a0 = int(n0 / cam.quirks.fps * audio.clock / audio.packets[0][1]) + 1
            ats0 = cam.audio_base + a0 * audio.packets[0][1]
            shown = ats0 + round(cam.quirks.audio_rtpinfo_offset * audio.clock)
            info.append(f"url={base}/audio;seq=1;rtptime={shown & 0xFFFFFFFF}")
        self.sender = threading.Thread(
            target=self.run_media, args=(n0, a0), name="mediacam-send", daemon=True
        )
        self.sender.start()
        return "RTP-Info: " + ",".join(info) + "\r\n"

    def run_media(self, n0: int, a0: int) -> None:
        cam, q = self.cam, self.cam.quirks
        audio = cam.audio if "audio" in self.channels else None
        vseq = aseq = 0
        played = time.monotonic() + 0.05
        n, a = n0, a0
        frames = cam.video.frames
        try:
            while not self.stop.is_set():
                vt = cam.t0 + n / q.fps
                at = cam.t0 + a * audio.packets[0][1] / audio.clock if audio else float("inf")
                when = min(vt, at)
                delay = when - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                stepped = q.step_at is not None and when - played >= q.step_at
                if vt <= at:
                    nals, _ = frames[n % len(frames)]
                    ts = cam.video_base + (0 if q.constant_ts else n * 90_000 // q.fps)
                    if stepped:
                        ts += round(q.step_seconds * 90_000)
                    vseq = self.send_picture(nals, ts, vseq)
                    n += 1
                else:
                    assert audio is not None
                    payload, samples = audio.packets[a % len(audio.packets)]
                    ts = cam.audio_base + a * samples
                    if stepped:
                        ts += round(q.step_seconds * audio.clock)
                    self.send_rtp(2, audio.payload_type, aseq, ts, payload, True)
                    aseq += 1
                    a += 1
        except OSError:
            self.stop.set()

    def send_rtp(self, ch: int, pt: int, seq: int, ts: int, payload: bytes, marker: bool) -> None:
        header = struct.pack(
            ">BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234 + ch
        )
        packet = header + payload
        self.send(b"$" + bytes([ch]) + struct.pack(">H", len(packet)) + packet)

    def send_picture(self, nals: list[bytes], ts: int, seq: int) -> int:
        q = self.cam.quirks
        for i, nal in enumerate(nals):
            last_nal = i == len(nals) - 1
            vcl = 1 <= (nal[0] & 0x1F) <= 5
            end_marker = last_nal or (q.marker_every_slice and vcl)
            if len(nal) <= MTU:
                self.send_rtp(0, 96, seq, ts, nal, end_marker)
                seq += 1
                continue
            body = nal[1:]
            pieces = [body[j : j + MTU] for j in range(0, len(body), MTU)]
            for j, piece in enumerate(pieces):
                first, last = j == 0, j == len(pieces) - 1
                fu = (0x80 if first else 0) | (0x40 if last else 0) | (nal[0] & 0x1F)
                payload = bytes([(nal[0] & 0xE0) | 28, fu]) + piece
                self.send_rtp(0, 96, seq, ts, payload, end_marker and last)
                seq += 1
        return seq


class MediaCamera:
    """One quirky camera at `url()`; `start()` / `stop()`, or use it as a context manager."""

    def __init__(self, quirks: Quirks) -> None:
        self.quirks = quirks
        self.video = encode_clip(quirks)
        self.audio = encode_audio(quirks.audio) if quirks.audio else None
        self.video_base = 0x7FFF0000  # the 32-bit RTP clock wraps soon after start
        self.audio_base = 0x10000000
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._conns: list[_Connection] = []
        self._thread = threading.Thread(target=self._accept, name="mediacam", daemon=True)
        self.t0 = time.monotonic()

    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def sdp(self) -> str:
        sprop = ",".join(base64.b64encode(x).decode() for x in (self.video.sps, self.video.pps))
        lines = [
            "v=0",
            "o=- 1 1 IN IP4 127.0.0.1",
            "s=mediacam",
            "t=0 0",
            "m=video 0 RTP/AVP 96",
            "a=rtpmap:96 H264/90000",
            f"a=fmtp:96 packetization-mode=1;sprop-parameter-sets={sprop}",
            "a=control:video",
        ]
        if self.audio is not None:
            a = self.audio
            lines += [
                f"m=audio 0 RTP/AVP {a.payload_type}",
                f"a=rtpmap:{a.payload_type} {a.encoding}",
            ]
            if a.fmtp:
                lines.append(f"a=fmtp:{a.payload_type} {a.fmtp}")
            lines.append("a=control:audio")
        return "\r\n".join(lines) + "\r\n"

    def start(self) -> MediaCamera:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            conn = _Connection(self, sock)
            self._conns.append(conn)
            threading.Thread(target=conn.serve, name="mediacam-conn", daemon=True).start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._server.close()
        for conn in self._conns:
            conn.stop.set()
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)

    def __enter__(self) -> MediaCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
