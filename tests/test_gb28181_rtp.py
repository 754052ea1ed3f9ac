"""RTP for GB/T 28181 (nvr.gb28181.rtp) over UDP on 127.0.0.1: a frame sent with UDP
segmentation offload (one `sendto` for up to 40 packets, the kernel cutting them) arrives as
exactly the datagrams of one `sendto` a packet (`packetize`, the fallback), for payloads on
and around the packet and offload-batch boundaries; sequence numbers run on across frames and
the counters count packets."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from nvr.gb28181.rtp import MAX_PAYLOAD, SEGMENT, RtpSender, packetize

SIZES = [
    0,
    1,
    MAX_PAYLOAD,
    MAX_PAYLOAD + 1,
    18_000,
    40 * MAX_PAYLOAD,
    40 * MAX_PAYLOAD + 1,
    140_000,
]


@pytest.mark.parametrize("gso", [True, False])
async def test_udp_frames_arrive_as_one_datagram_a_packet(gso: bool) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    sender = RtpSender("udp", rx.getsockname(), 0x1234, bind_host="127.0.0.1")
    await sender.prepare()
    if gso:
        if not sender.gso:
            pytest.skip("no UDP segmentation offload here (Linux 4.18+)")
    else:
        sender.gso = False  # the fallback: one sendto a packet
    await sender.open()
    want: list[bytes] = []
    seq = 0xFFF0  # the sequence number wraps inside the run
    sender._seq = seq
    try:
        for i, size in enumerate(SIZES):
            payload = os.urandom(size)
            packets, seq = packetize(payload, seq, 9000 + i * 3600, 0x1234)
            want += [bytes(p) for p in packets]
            await sender.send(payload, 9000 + i * 3600)
        got: list[bytes] = []
        loop = asyncio.get_running_loop()
        while len(got) < len(want):
            got.append(await asyncio.wait_for(loop.sock_recv(rx, 65_536), 10))
    finally:
        await sender.close()
        rx.close()
    assert got == want
    assert all(len(d) <= SEGMENT for d in got)
    assert [int.from_bytes(d[2:4], "big") for d in got[:18]] == [
        (0xFFF0 + n) & 0xFFFF for n in range(18)
    ]
    assert sender.sent_packets == len(want)
    assert sender.sent_bytes == sum(len(d) for d in want)
