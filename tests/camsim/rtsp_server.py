#!/usr/bin/python3
"""RTSP camera simulator: GStreamer's RTSP server on 127.0.0.1 serving pre-encoded loops.

This program owns the simulated cameras. It runs as its own process under Debian's
``/usr/bin/python3`` (GStreamer through GObject introspection; no PyAV here) and is driven by
`tests.camsim.CameraSim` over stdin/stdout:

    /usr/bin/python3 tests/camsim/rtsp_server.py --port N --clips DIR [--mounts h264aac,cam2=hd4m]
        [--auth digest:USER:PASSWORD | basic:USER:PASSWORD]

Each mount ``NAME`` or ``NAME=CLIP`` serves clip ``CLIP`` (default ``NAME``, as written by
`tests.camsim.clips`) at ``rtsp://127.0.0.1:N/NAME`` over RTP/UDP or RTP/TCP. Media is shared:
one pipeline per mount, however many clients watch it; a late client starts wherever it is. When
the last client leaves the pipeline goes away and the next client starts the loop afresh.

Threads: the GLib main loop (main thread) owns the RTSP server, the stdin command channel and
signals. Each appsrc's streaming thread calls ``need-data``; the handler copies one pre-built
buffer (memory shared, no copy of the payload), stamps it and pushes it. A ``clocksync`` after
each appsrc holds the buffer until its running time, so the streaming thread pulls exactly one
buffer per frame interval: media is paced to real time and nothing is encoded at serve time.
`Mount.lock` guards the per-mount state shared by the two kinds of thread.

Timestamps: buffer PTS/DTS are pipeline running time (clip time + loop number * loop duration +
time spent frozen). Payloaders run with ``scale-rtptime=false``, so RTP timestamps follow the
segment's stream time, which is running time plus the mount's accumulated ``jump``: a jump
moves RTP time forward without making anything wait.

Stdout carries ``READY <port>`` once listening, then one ``ok`` or ``error <why>`` per command
line on stdin:

    freeze <mount>          stop sending media; RTSP sessions and TCP connections stay open
    thaw <mount>            resume; the media gap equals the time spent frozen
    jump <mount> <seconds>  add a forward timestamp discontinuity to subsequent media
    scene <mount> <k>       switch the video to the mount's k-th clip at its next keyframe

A mount ``NAME=CLIP1+CLIP2+...`` serves CLIP1 and can be switched between its clips (video only,
encoded alike: the same frame rate, loop and keyframe positions, as `tests.camsim.clips`' scene
clips are), so a test can turn the picture black, blurred, shifted or frozen at a known time.
    quit                    exit

EOF on stdin, SIGTERM and SIGINT also exit.
"""

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtsp, GstRtspServer  # noqa: E402

SECOND = Gst.SECOND
START_LEAD = 100 * Gst.MSECOND  # first buffer's running time ahead of "now" when a media starts
COPY_FLAGS = Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.MEMORY  # shares the payload
UDP_PORT_RANGE = (30000, 39999)  # server-side RTP/RTCP ports for UDP clients, on 127.0.0.1


def log(msg):
    print(f"camsim: {msg}", file=sys.stderr, flush=True)


# --- clips ---------------------------------------------------------------------------------------


@dataclass
class Packet:
    """One pre-built buffer and its clip timestamps in nanoseconds."""

    buffer: Gst.Buffer
    size: int
    pts: int
    dts: int
    duration: int
    key: bool = True


@dataclass
class ClipStream:
    """One stream of a clip, loaded into memory once and shared by every pipeline."""

    kind: str
    caps: Gst.Caps
    payloader: str
    packets: list
    loop_ns: int
    min_dts: int


def _to_ns(ticks, time_base):
    num, den = time_base
    return ticks * num * SECOND // den


def load_clip(clips_dir, name):
    """Read `<name>.json` and its data files; return the clip's streams, video first."""
    index_path = clips_dir / f"{name}.json"
    index = json.loads(index_path.read_text())
    streams = []
    for s in index["streams"]:
        data = (index_path.parent / s["file"]).read_bytes()
        if len(data) != s["file_size"]:
            raise ValueError(f"{s['file']}: {len(data)} bytes, index says {s['file_size']}")
        tb = s["time_base"]
        packets = []
        for offset, size, pts, dts, duration, key in s["packets"]:
            buf = Gst.Buffer.new_wrapped(data[offset : offset + size])
            if not key:
                buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
            packets.append(
                Packet(
                    buf, size, _to_ns(pts, tb), _to_ns(dts, tb), _to_ns(duration, tb), bool(key)
                )
            )
        codec = s["codec"]
        if codec in ("h264", "h265"):
            caps = Gst.Caps.from_string(
                f"video/x-{codec}, stream-format=byte-stream, alignment=au, "
                f"width={s['width']}, height={s['height']}, framerate={s['fps']}/1"
            )
            pay = f"rtp{codec}pay config-interval=0"  # parameter sets are in-band already
        elif codec == "aac":
            caps = Gst.Caps.from_string(
                f"audio/mpeg, mpegversion=4, stream-format=raw, rate={s['sample_rate']}, "
                f"channels={s['channels']}, codec_data=(buffer){s['codec_data']}"
            )
            pay = "rtpmp4gpay"
        else:
            raise ValueError(f"{index_path}: unsupported codec {codec!r}")
        streams.append(
            ClipStream(
                kind=s["kind"],
                caps=caps,
                payloader=pay,
                packets=packets,
                loop_ns=_to_ns(s["loop_duration"], tb),
                min_dts=min(p.dts for p in packets),
            )
        )
    streams.sort(key=lambda st: st.kind != "video")
    return streams


# --- feeding -------------------------------------------------------------------------------------


@dataclass(eq=False)
class StreamFeed:
    """Feeds one appsrc of one media pipeline from one clip stream."""

    media: "MediaFeed"
    stream: ClipStream
    appsrc: GstApp.AppSrc
    index: int = 0
    loop: int = 0
    starving: bool = False  # need-data arrived while frozen; thaw must push
    scene: int = 0  # which of the mount's clips this feed is serving

    def on_need_data(self, _appsrc, _length):
        mount = self.media.mount
        with mount.lock:
            if mount.frozen:
                self.starving = True
                return
            self.push_next_locked()

    def push_next_locked(self):
        """Stamp and push the next buffer. Caller holds the mount lock."""
        media = self.media
        if media.origin is None:
            clock = self.appsrc.get_clock()
            now = clock.get_time() - self.appsrc.get_base_time() if clock else 0
            media.origin = now + START_LEAD + max(0, -media.min_dts)
        mount = media.mount
        if self.scene != mount.scene and self.stream.kind == "video":
            other = mount.clips[mount.scene][0]
            if self.index < len(other.packets) and other.packets[self.index].key:
                self.stream = other  # switch at a keyframe: the picture changes cleanly
                self.scene = mount.scene
        packet = self.stream.packets[self.index]
        base = media.origin + media.frozen_total + self.loop * self.stream.loop_ns
        buf = packet.buffer.copy_region(COPY_FLAGS, 0, packet.size)
        buf.pts = base + packet.pts
        buf.dts = base + packet.dts
        buf.duration = packet.duration
        self.appsrc.push_sample(Gst.Sample.new(buf, None, media.mount.segment, None))
        self.index += 1
        if self.index == len(self.stream.packets):
            self.index = 0
            self.loop += 1


@dataclass(eq=False)
class MediaFeed:
    """The feeders of one media pipeline (one per mount at a time, as media is shared)."""

    mount: "Mount"
    min_dts: int
    origin: int | None = None  # running time of clip time 0 in loop 0
    frozen_total: int = 0
    streams: list = field(default_factory=list)


@dataclass(eq=False)
class Mount:
    """Per-mount state set by commands (main thread) and read by streaming threads."""

    name: str
    clip: list
    clips: list = field(default_factory=list)  # switchable clips (`scene`); clip is the first
    scene: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    frozen: bool = False
    frozen_since: int = 0  # system clock time of the freeze
    jump_ns: int = 0
    segment: Gst.Segment = None
    medias: list = field(default_factory=list)

    def __post_init__(self):
        self.segment = self._make_segment()

    def _make_segment(self):
        seg = Gst.Segment()
        seg.init(Gst.Format.TIME)
        seg.time = self.jump_ns  # stream time = running time + jump; RTP time follows it
        return seg

    def freeze(self):
        with self.lock:
            if not self.frozen:
                self.frozen = True
                self.frozen_since = Gst.SystemClock.obtain().get_time()

    def thaw(self):
        with self.lock:
            if not self.frozen:
                return
            self.frozen = False
            gap = Gst.SystemClock.obtain().get_time() - self.frozen_since
            for media in self.medias:
                if media.origin is not None:
                    media.frozen_total += gap
                for feed in media.streams:
                    if feed.starving:
                        feed.starving = False
                        feed.push_next_locked()

    def switch(self, k):
        with self.lock:
            self.scene = k

    def jump(self, seconds):
        with self.lock:
            self.jump_ns += int(seconds * SECOND)
            self.segment = self._make_segment()


class Factory(GstRtspServer.RTSPMediaFactory):
    """Builds a mount's pipeline and attaches a feeder to each new media.

    Per stream: ``appsrc ! clocksync ! payloader``. The RTSP server's own sinks also sync to
    the clock; clocksync keeps the pacing at the source, so nothing queues up ahead of real time
    and a freeze takes effect within one frame.
    """

    def __init__(self, mount, udp_pool):
        super().__init__()
        self.mount = mount
        parts = []
        for i, stream in enumerate(mount.clip):
            parts.append(
                f"appsrc name=src{i} is-live=true format=time do-timestamp=false "
                f"handle-segment-change=true min-latency=0 ! clocksync ! "
                f"{stream.payloader} name=pay{i} pt={96 + i} scale-rtptime=false"
            )
        self.set_launch("( " + " ".join(parts) + " )")
        self.set_shared(True)
        self.set_protocols(GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP)
        self.set_address_pool(udp_pool)
        self.connect("media-configure", self._on_media_configure)

    def _on_media_configure(self, _factory, media):
        mount = self.mount
        feed = MediaFeed(mount=mount, min_dts=min(s.min_dts for s in mount.clip))
        bin_ = media.get_element()
        for i, stream in enumerate(mount.clip):
            appsrc = bin_.get_by_name(f"src{i}")
            appsrc.set_caps(stream.caps)
            sf = StreamFeed(media=feed, stream=stream, appsrc=appsrc)
            appsrc.connect("need-data", sf.on_need_data)
            feed.streams.append(sf)
        with mount.lock:
            mount.medias.append(feed)
        media.connect("unprepared", self._on_unprepared, feed)

    def _on_unprepared(self, _media, feed):
        with self.mount.lock:
            if feed in self.mount.medias:
                self.mount.medias.remove(feed)


# --- control -------------------------------------------------------------------------------------


class Control:
    """Stdin commands and shutdown, on the main loop."""

    def __init__(self, loop, mounts):
        self.loop = loop
        self.mounts = mounts
        self.pending = b""

    def on_stdin(self, _fd, _condition):
        try:
            data = os.read(0, 4096)
        except OSError as err:
            log(f"stdin: {err}")
            data = b""
        if not data:
            self.loop.quit()
            return False
        self.pending += data
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            if line.strip():
                reply = self.handle(line.decode(errors="replace").split())
                print(reply, flush=True)
        return True

    def handle(self, words):
        cmd, args = words[0], words[1:]
        if cmd == "quit" and not args:
            self.loop.quit()
            return "ok"
        if cmd in ("freeze", "thaw", "jump", "scene"):
            want = 2 if cmd in ("jump", "scene") else 1
            if len(args) != want:
                return f"error {cmd} takes {want} argument(s)"
            mount = self.mounts.get(args[0])
            if mount is None:
                return f"error no mount {args[0]!r}; mounts: {','.join(self.mounts)}"
            if cmd == "freeze":
                mount.freeze()
            elif cmd == "thaw":
                mount.thaw()
            elif cmd == "scene":
                if not args[1].isdigit() or int(args[1]) >= len(mount.clips):
                    return f"error {args[0]} has {len(mount.clips)} scene(s), not {args[1]!r}"
                mount.switch(int(args[1]))
            else:
                try:
                    seconds = float(args[1])
                except ValueError:
                    return f"error not a number of seconds: {args[1]!r}"
                if not seconds > 0 or seconds > 86400:
                    return "error jump needs 0 < seconds <= 86400"
                mount.jump(seconds)
            return "ok"
        return f"error unknown command {cmd!r}; commands: freeze thaw jump scene quit"

    def on_signal(self):
        self.loop.quit()
        return GLib.SOURCE_REMOVE


def parse_mounts(spec, clips_dir):
    pairs = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, clip = item.partition("=")
        pairs.append((name, clip or name))
    if not pairs:
        names = sorted(p.stem for p in clips_dir.glob("*.json"))
        pairs = [(n, n) for n in names]
    return pairs


def set_auth(server, scheme, user, password):
    """Require `user`/`password` (Digest or Basic) on `server`; returns the role structure a
    factory needs so that this user may play it."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    if scheme == "digest":
        auth.add_digest(user, password, token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    else:
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    server.set_auth(auth)
    return Gst.Structure.new_from_string(
        "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clips", type=Path, required=True)
    parser.add_argument("--mounts", default="", help="comma list of NAME or NAME=CLIP")
    parser.add_argument(
        "--auth", default="", help="digest:USER:PASSWORD or basic:USER:PASSWORD: every mount "
        "then needs that login"
    )
    args = parser.parse_args()

    Gst.init(None)
    clip_cache = {}
    mounts = {}
    for name, clip_names in parse_mounts(args.mounts, args.clips):
        for clip_name in clip_names.split("+"):
            if clip_name not in clip_cache:
                try:
                    clip_cache[clip_name] = load_clip(args.clips, clip_name)
                except (OSError, ValueError, KeyError) as err:
                    log(f"cannot load clip {clip_name!r} from {args.clips}: {err}")
                    return 2
        clips = [clip_cache[c] for c in clip_names.split("+")]
        mounts[name] = Mount(name=name, clip=clips[0], clips=clips)
    if not mounts:
        log(f"no clips in {args.clips}")
        return 2

    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.set_backlog(64)
    udp_pool = GstRtspServer.RTSPAddressPool()  # binds UDP to loopback; taken ports are skipped
    udp_pool.add_range("127.0.0.1", "127.0.0.1", *UDP_PORT_RANGE, 0)
    points = server.get_mount_points()
    role = None
    if args.auth:
        scheme, _, login = args.auth.partition(":")
        user, _, password = login.partition(":")
        if scheme not in ("digest", "basic") or not user:
            log(f"--auth wants digest:USER:PASSWORD or basic:USER:PASSWORD, not {args.auth!r}")
            return 2
        role = set_auth(server, scheme, user, password)
    for name, mount in mounts.items():
        factory = Factory(mount, udp_pool)
        if role is not None:
            factory.add_role_from_structure(role)
        points.add_factory(f"/{name}", factory)
    source_id = server.attach(None)
    if not source_id:
        log(f"cannot listen on 127.0.0.1:{args.port}")
        return 1

    control = Control(loop, mounts)
    GLib.io_add_watch(
        0, GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, control.on_stdin
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, control.on_signal)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()

    GLib.source_remove(source_id)
    server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
