"""WebRTC pass-through's RTP path (`nvr.api.live.rtp`) on real frames: the packetiser's
payloads are what an RFC 6184 depacketiser (aiortc's) turns back into the access unit, and
an in-process aiortc peer receiving two WHEP-style sessions of one camera (our `answer`, our
RTP loop installed in aiortc's sender, loopback ICE) decodes every picture, with the camera's
payloads made once for both sessions and a NACKed packet sent again; with the datagrams sent
in batches by UDP segmentation offload and one by one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket

from nvr.api.live import rtp
from nvr.api.live.annexb import START, nal_units, with_parameter_sets
from nvr.api.live.hub import LiveHub
from nvr.api.live.webrtc import PassthroughTrack, answer, host_addresses, rtc_configuration
from nvr.ingest.tap import PacketTap, TapFrame
from nvr.storage import now_ms
from tests.scripted import Connection, SimulatedClock, open_store, run_script


@pytest.fixture(scope="module")
def frames(scripted_clips: Path, tmp_path_factory: pytest.TempPathFactory) -> list[TapFrame]:
    """5 s of the scripted H.264 camera as its recorder hands them to the packet tap."""
    clock = SimulatedClock(now_ms())
    store = open_store(tmp_path_factory.mktemp("rtp") / "h264", clock)
    tap = PacketTap("cam")
    got: list[TapFrame] = []
    tap.subscribe(got.append)
    try:
        run_script(store, scripted_clips, clock, [Connection("h264", seconds=5)], tap=tap)
    finally:
        store.close()
    assert len(got) == 50 and got[0].keyframe
    return got


def depacketised(payloads: list[bytes]) -> bytes:
    return b"".join(H264PayloadDescriptor.parse(p)[1] for p in payloads)


def annexb(data: bytes) -> bytes:
    return b"".join(START + n for n in nal_units(data))


def test_payloads_depacketise_to_the_access_unit(frames: list[TapFrame]) -> None:
    for frame in frames:
        data = with_parameter_sets("h264", frame.data, frame.stream.extradata)
        payloads = rtp.h264_payloads(data)
        assert all(len(p) <= rtp.PAYLOAD_MAX for p in payloads)
        assert depacketised(payloads) == annexb(data)
    # Small NAL units are aggregated (STAP-A), a large one is cut (FU-A) into full-size
    # fragments and a shorter last one.
    sps, pps, sei = b"\x67" + b"\x42" * 20, b"\x68" + b"\xce" * 4, b"\x06" + b"\x05" * 30
    idr = b"\x65" + bytes(range(1, 256)) * 20
    data = b"".join(START + n for n in (sps, pps, sei, idr))
    payloads = rtp.h264_payloads(data, limit=1000)
    assert payloads[0][0] & 0x1F == rtp.NAL_STAP_A
    assert [p[0] & 0x1F for p in payloads[1:]] == [rtp.NAL_FU_A] * 6
    assert [len(p) for p in payloads[1:-1]] == [1000] * 5 and len(payloads[-1]) < 1000
    assert depacketised(payloads) == data
    # A NAL unit that fits alone goes as it is.
    assert rtp.h264_payloads(START + idr[:500]) == [idr[:500]]


async def receive(pc: RTCPeerConnection, track: MediaStreamTrack, n: int) -> list[np.ndarray]:
    pictures = []
    for _ in range(n):
        frame = await asyncio.wait_for(track.recv(), 10)
        assert isinstance(frame, av.VideoFrame)
        pictures.append(frame.to_ndarray(format="gray"))
    return pictures


@pytest.mark.parametrize("offload", [True, False], ids=["segmentation-offload", "sendto"])
async def test_two_sessions_of_a_camera_share_payloads_and_decode(
    frames: list[TapFrame], offload: bool
) -> None:
    tap = PacketTap("cam")
    hub = LiveHub("cam", tap, asyncio.get_running_loop(), linger_s=0.0)
    sessions = []
    rembs: list[RtcpPsfbPacket] = []
    for _ in range(2):
        client = RTCPeerConnection(rtc_configuration())
        client.addTransceiver("video", direction="recvonly")
        with host_addresses(["127.0.0.1"]):
            await client.setLocalDescription(await client.createOffer())
        track = PassthroughTrack(hub.join())
        server, sdp = await answer(client.localDescription.sdp, track, ("127.0.0.1",))
        sender = server.getTransceivers()[0].sender
        fast = getattr(sender, "nvr_fast_rtp", None)
        assert isinstance(fast, rtp._Sender)
        fast._gso = offload
        original = sender._handle_rtcp_packet

        async def counted(packet: Any, original: Any = original) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                rembs.append(packet)
            await original(packet)

        sender._handle_rtcp_packet = counted  # type: ignore[method-assign]
        got: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
        client.on("track", got.put_nowait)
        with host_addresses(["127.0.0.1"]):
            await client.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        sessions.append((client, server, fast, await asyncio.wait_for(got.get(), 10)))
    try:
        for _ in range(100):
            if all(s.connectionState == "connected" for _, s, _, _ in sessions):
                break
            await asyncio.sleep(0.1)
        receivers = [
            asyncio.create_task(receive(c, t, 20), name="rtp-receiver") for c, _, _, t in sessions
        ]
        for frame in frames[:30]:
            tap.publish(frame)
            await asyncio.sleep(0.04)  # the camera's pace (25 fps), not a bound
        for task in receivers:
            pictures = await task
            assert len(pictures) == 20
            assert all(p.mean() > 10 for p in pictures)  # decoded pictures, not black
        # One packetisation of each frame for both sessions.
        assert all(rtp.frame_payloads(f) is rtp._cache[id(f)][1] for f in frames[:30])
        fast = [f for _, _, f, _ in sessions]
        # The server's ICE sockets read datagrams into small buffers, not 256 KiB ones.
        for _, server, _, _ in sessions:
            ice: Any = server.getTransceivers()[0].sender.transport.transport
            sizes = {p.transport.max_size for p in ice._connection._protocols}
            assert sizes == {rtp.READ_MAX}
        for _ in range(100):
            if all(f.frames == 30 for f in fast):
                break
            await asyncio.sleep(0.1)
        assert all(f.frames == 30 for f in fast)
        # With offload, the FU-A fragments went out in batches (Linux; the test machine's).
        assert all((f.offloaded > 0) == offload for f in fast)
        assert (
            fast[0].packets
            == fast[1].packets
            == sum(len(rtp.frame_payloads(f)) for f in frames[:30])
        )
        # Packets carry the mid, no abs-send-time: so no receiver bitrate estimates (REMB),
        # which a passed-through stream cannot follow, come back.
        first_sender: Any = sessions[0][1].getTransceivers()[0].sender
        extensions = first_sender._RTCRtpSender__rtp_header_extensions_map
        sent_packet = RtpPacket.parse(next(iter(fast[0]._history.values())), extensions)
        assert sent_packet.extensions.mid is not None
        assert sent_packet.extensions.abs_send_time is None
        assert rembs == []
        # A NACKed packet is sent again (as RTX here: the client offers it); one the
        # history does not hold is not.
        _, server, _, _ = sessions[0]
        first: Any = server.getTransceivers()[0].sender
        dtls: Any = first.transport
        sent = dtls._RTCDtlsTransport__tx_packets
        known = next(iter(fast[0]._history.values()))
        seq = int.from_bytes(known[2:4], "big")
        await first._retransmit(seq)
        await first._retransmit((seq + 20_000) & 0xFFFF)
        assert fast[0].resent == 1
        assert dtls._RTCDtlsTransport__tx_packets == sent + 1
        # A backlog (frames queued faster than sent: a cold start's GOP, a viewer behind)
        # is sent a frame per turn of the loop, not in one step that holds the loop (and
        # the watchdog's pings) until it is drained.
        seen: list[int] = []
        drained = asyncio.Event()

        async def ticker() -> None:
            while not drained.is_set():
                seen.append(fast[0].frames)
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        for frame in frames[:30]:
            tap.publish(frame)
        for _ in range(100):
            if all(f.frames == 60 for f in fast):
                break
            await asyncio.sleep(0.1)
        drained.set()
        await ticking
        assert all(f.frames == 60 for f in fast), [f.frames for f in fast]
        assert len({n for n in seen if 30 < n < 60}) >= 20, sorted(set(seen))
    finally:
        for client, server, _, _ in sessions:
            await server.close()
            await client.close()
        hub.close()
