"""Micro-benchmark of the per-packet path of our RTSP client: CPU seconds that
`RtspSession._parse` and the depacketisers (`ingest.rtp`) take for one camera's stream, fed
from memory, so other processes on the machine change the figure little (CPU time of this
process only, no waiting on a socket).

1. A fresh camera simulator (`tests.camsim.CameraSim`, GStreamer on 127.0.0.1) serves one
   ``cam00=hd4m`` mount (H.264 1280x720, 25 fps, ~4.1 Mbit/s, as in `bench.ingest`).
2. `RtspSession.connect()` runs the real handshake, then the raw bytes of the connection
   (interleaved RTP and RTCP as the camera sent them) are captured for ``--capture`` seconds.
3. The capture is replayed ``--repeat`` times into a new session set up like the first, in
   reads of `RCVLOWAT` bytes (what a wake-up of the recorder thread takes), the frames taken
   off the assemblers after each read as `NativeRtspSource.packets` does. With ``--packets``
   each frame is also made into a PyAV packet, as there.

Printed: CPU seconds per second of stream (% of one core for one camera), the best and the
median of the repeats, packets and frames per second. ``--profile N`` prints the N most
expensive functions of one more replay under cProfile (which slows everything: shares, not
times). Runs on the main thread; only the simulator runs in a child process.

Run: ``python -m bench.rtp_parse [--capture 10] [--repeat 20] [--packets] [--profile 25]``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import av

from nvr.ingest.rtp import audio_frames_for, video_frames_for
from nvr.ingest.rtsp_session import RCVLOWAT, RtspSession, _Track
from tests.camsim import CameraSim, gst_rtsp_unavailable
from tests.camsim.clips import make_clips

CLIP = "hd4m"


def capture(sim: CameraSim, seconds: float) -> tuple[RtspSession, bytes]:
    """A connected session (closed) and `seconds` of the raw bytes that followed PLAY."""
    session = RtspSession(sim.url("cam00"), username=None, password=None, timeout_s=10)
    session.connect()
    sock = session._sock
    assert sock is not None
    sock.setblocking(True)
    sock.settimeout(1.0)
    # Bytes already read with the PLAY answer come first.
    chunks = [bytes(session._buf[session._start : session._end])]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        chunks.append(sock.recv(1 << 16))
    session.close()
    return session, b"".join(chunks)


def fresh(like: RtspSession) -> RtspSession:
    """A session with `like`'s tracks (channels, SSRC, RTP-Info) and new assemblers."""
    session = RtspSession(like.url, username=None, password=None, timeout_s=10)
    for name in ("video", "audio"):
        old = cast(_Track | None, getattr(like, name))
        if old is None:
            continue
        frames = video_frames_for(old.media) if name == "video" else audio_frames_for(old.media)
        track = _Track(old.media, frames, old.url)
        track.channel, track.rtcp_channel = old.channel, old.rtcp_channel
        track.ssrc, track.info_seq, track.base = old.ssrc, old.info_seq, old.base
        setattr(session, name, track)
    return session


def replay(like: RtspSession, data: bytes, packets: bool) -> tuple[float, int]:
    """CPU seconds to parse `data` in reads of `RCVLOWAT` bytes; frames made."""
    session = fresh(like)
    vf = session.video.frames if session.video is not None else None
    af = session.audio.frames if session.audio is not None else None
    buf = session._buf
    n = len(data)
    frames = 0
    Packet = av.Packet
    began = time.process_time()
    for pos in range(0, n, RCVLOWAT):
        chunk = data[pos : pos + RCVLOWAT]
        end = session._end
        buf[end : end + len(chunk)] = chunk
        session._end = end + len(chunk)
        session._parse()
        for out in (vf, af):
            if out is not None and out.out:
                frames += len(out.out)
                if packets:
                    for frame in out.out:
                        packet = Packet(cast(bytes, frame[0]))
                        packet.pts = packet.dts = frame[1]
                out.out = []
    return time.process_time() - began, frames


def count_packets(data: bytes) -> int:
    """Interleaved packets in `data` (assuming no stray bytes, as the simulator sends)."""
    pos = count = 0
    while pos + 4 <= len(data) and data[pos] == 0x24:
        pos += 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rtp_parse", description=__doc__)
    p.add_argument("--capture", type=float, default=10.0, help="seconds of stream captured")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--packets", action="store_true", help="also make PyAV packets")
    p.add_argument("--profile", type=int, default=0, help="print the N costliest functions")
    p.add_argument("--clips", type=Path, default=None)
    args = p.parse_args(argv)
    why = gst_rtsp_unavailable()
    if why:
        print(f"cannot run the camera simulator: {why}")
        return 2
    clips = args.clips or Path(
        os.environ.get("NVR_CAMSIM_CLIPS") or Path.home() / ".cache" / "nvr-camsim"
    )
    make_clips(clips, [CLIP])
    with CameraSim(clips, mounts=[f"cam00={CLIP}"]) as sim:
        like, data = capture(sim, args.capture)
    stream_s = args.capture
    pkts = count_packets(data)
    times = []
    frames = 0
    for _ in range(args.repeat):
        cpu, frames = replay(like, data, args.packets)
        times.append(cpu)
    best, median = min(times), statistics.median(times)
    print(
        f"{len(data) / 1e6:.1f} MB, {pkts} interleaved packets ({pkts / stream_s:.0f}/s), "
        f"{frames} frames in {stream_s:.0f} s of stream; {args.repeat} replays"
        f"{' with PyAV packets' if args.packets else ''}"
    )
    print(
        f"CPU per stream second: best {best / stream_s * 100:.3f} % of a core "
        f"({best / pkts * 1e6:.2f} us/packet), median {median / stream_s * 100:.3f} %"
    )
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        replay(like, data, args.packets)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
