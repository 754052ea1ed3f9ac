"""Our RTSP/RTP client (`ingest.rtsp_session`, `rtsp_auth`, `rtsp_source`, `ingest.rtp`):
payload formats with hand-built RTP, the interleaved reader with arbitrary read boundaries,
and real sessions against the GStreamer camera simulator (with Digest and Basic logins)."""

from __future__ import annotations

import contextlib
import io
import random
import socket
import struct
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nvr.ingest.rtsp_session as rtsp
import nvr.ingest.rtsp_source as rtsp_source
from nvr.ingest.errors import AuthRejected, ConnectTimeout, StreamError, UnsupportedStream
from nvr.ingest.rtp import (
    AacFrames,
    H264Frames,
    H265Frames,
    PayloadError,
    SdpMedia,
    parse_sdp,
)
from nvr.ingest.rtsp_auth import DigestAuth
from nvr.ingest.rtsp_session import NotForUs, RtspSession
from nvr.ingest.rtsp_source import NativeRtspSource
from nvr.ingest.sources import RtspOpener, RtspSource, Source
from tests.camsim import CameraSim

SC = b"\x00\x00\x00\x01"


def h264_media(**fmtp: str) -> SdpMedia:
    return SdpMedia("video", "RTP/AVP", 96, "H264", 90000, 1, dict(fmtp))


# --- payload formats ---------------------------------------------------------------------------


def test_h264_single_stap_and_fu_make_annex_b_frames() -> None:
    f = H264Frames(h264_media(**{"packetization-mode": "1"}))
    sps, pps = b"\x67\x64\x00\x1f\xaa", b"\x68\xee\x3c\x80"
    idr = b"\x65" + bytes(range(200))
    # STAP-A with SPS and PPS, then the IDR in three FU-A pieces, marker on the last.
    stap = b"\x78" + struct.pack(">H", len(sps)) + sps + struct.pack(">H", len(pps)) + pps
    f.payload(memoryview(stap), 1000, False)
    body = idr[1:]
    pieces = [body[:70], body[70:140], body[140:]]
    for i, piece in enumerate(pieces):
        fu_header = (0x80 if i == 0 else 0) | (0x40 if i == 2 else 0) | 5
        f.payload(memoryview(bytes([0x7C, fu_header]) + piece), 1000, i == 2)
    # A P-frame as a single NAL unit; its frame ends when the next timestamp arrives.
    f.payload(memoryview(b"\x41\x9a\x01\x02"), 4600, False)
    f.payload(memoryview(b"\x41\x9a\x03"), 8200, True)
    f.payload(memoryview(b"\x41\x9a\x04"), 11800, True)  # ends the one before
    assert [(bytes(d), ts, key) for d, ts, key in f.out] == [
        (SC + sps + SC + pps + SC + idr, 1000, True),
        (SC + b"\x41\x9a\x01\x02", 4600, False),
        (SC + b"\x41\x9a\x03", 8200, False),
    ]
    assert f.parameter_sets() == SC + sps + SC + pps


def test_parameter_sets_sent_on_their_own_go_out_with_the_next_picture() -> None:
    """Some cameras send SPS/PPS (or SEI) with a marker bit or a timestamp of their own: they
    must not become a sample without a picture."""
    f = H264Frames(h264_media())
    f.payload(memoryview(b"\x67\x64\x00"), 100, True)
    f.payload(memoryview(b"\x68\xee"), 100, True)
    f.payload(memoryview(b"\x65\x88\x01"), 3700, True)
    f.payload(memoryview(b"\x41\x9a"), 7300, True)
    assert [(bytes(d), ts, key) for d, ts, key in f.out] == [
        (SC + b"\x67\x64\x00" + SC + b"\x68\xee" + SC + b"\x65\x88\x01", 3700, True),
    ]
    g = H265Frames(SdpMedia("video", "RTP/AVP", 96, "H265", 90000))
    g.payload(memoryview(b"\x40\x01\x0c"), 0, True)  # VPS alone
    g.payload(memoryview(b"\x02\x01\xaa"), 3600, True)  # a TRAIL_R picture
    g.payload(memoryview(b"\x02\x01\xbb"), 7200, True)  # the next one ends it
    assert next((bytes(d), key) for d, _, key in g.out) == (
        SC + b"\x40\x01\x0c" + SC + b"\x02\x01\xaa",
        False,
    )


def test_h264_fragment_without_its_start_is_dropped_not_glued() -> None:
    f = H264Frames(h264_media())
    f.payload(memoryview(b"\x7c\x05middle"), 10, False)  # start lost
    f.payload(memoryview(b"\x7c\x45end"), 10, True)
    f.payload(memoryview(b"\x41\x81"), 20, True)
    f.payload(memoryview(b"\x41\x82"), 30, True)
    assert [bytes(d) for d, _, _ in f.out] == [SC + b"\x41\x81"]


def test_h264_sdp_parameter_sets_and_interleaved_mode() -> None:
    f = H264Frames(h264_media(**{"sprop-parameter-sets": "Z2QAH6w=,aO48gA=="}))
    assert f.parameter_sets() == SC + b"\x67\x64\x00\x1f\xac" + SC + b"\x68\xee\x3c\x80"
    with pytest.raises(PayloadError, match="packetization-mode 2"):
        H264Frames(h264_media(**{"packetization-mode": "2"}))


def test_h265_aggregation_and_fragmentation() -> None:
    f = H265Frames(SdpMedia("video", "RTP/AVP", 96, "H265", 90000))
    vps, sps = b"\x40\x01\x0c", b"\x42\x01\x01"
    ap = b"\x60\x01" + struct.pack(">H", 3) + vps + struct.pack(">H", 3) + sps
    f.payload(memoryview(ap), 0, False)
    # IDR_W_RADL (19) in two FUs: payload header type 49, FU header S/E + type.
    f.payload(memoryview(b"\x62\x01" + bytes([0x80 | 19]) + b"abc"), 0, False)
    f.payload(memoryview(b"\x62\x01" + bytes([0x40 | 19]) + b"def"), 0, True)
    f.payload(memoryview(b"\x02\x01\x80"), 3600, True)
    (frame,) = f.out
    assert bytes(frame[0]) == SC + vps + SC + sps + SC + bytes([19 << 1, 1]) + b"abcdef"
    assert frame[2] is True
    assert f.params[32] == vps and f.params[33] == sps
    with pytest.raises(PayloadError, match="decoding order"):
        H265Frames(SdpMedia("video", "RTP/AVP", 96, "H265", 90000, 1, {"sprop-max-don-diff": "2"}))


def aac_media(**extra: str) -> SdpMedia:
    fmtp = {
        "mode": "AAC-hbr",
        "sizelength": "13",
        "indexlength": "3",
        "indexdeltalength": "3",
        "config": "1408",
    }
    fmtp.update(extra)
    return SdpMedia("audio", "RTP/AVP", 97, "MPEG4-GENERIC", 16000, 1, fmtp)


def test_aac_several_access_units_per_packet_and_one_across_packets() -> None:
    f = AacFrames(aac_media())
    a, b = b"A" * 10, b"B" * 7
    headers = struct.pack(">HHH", 32, len(a) << 3, (len(b) << 3) | 0)
    f.payload(memoryview(headers + a + b), 5000, True)
    big = bytes(range(256)) * 2
    h = struct.pack(">HH", 16, len(big) << 3)
    f.payload(memoryview(h + big[:300]), 7048, False)
    f.payload(memoryview(h + big[300:]), 7048, True)
    assert [(bytes(d), ts) for d, ts, _ in f.out] == [(a, 5000), (b, 6024), (big, 7048)]


def test_aac_low_bitrate_headers_use_the_general_bit_reader() -> None:
    f = AacFrames(aac_media(mode="AAC-lbr", sizelength="6", indexlength="2", indexdeltalength="2"))
    a, b = b"x" * 5, b"y" * 9
    bits = (5 << 2 | 0) << 8 | (9 << 2 | 0)  # two 8-bit headers: size 6 bits + index 2 bits
    f.payload(memoryview(struct.pack(">HH", 16, bits) + a + b), 0, True)
    assert [bytes(d) for d, _, _ in f.out] == [a, b]


def test_aac_config_and_adts_are_what_ffmpeg_reads() -> None:
    f = AacFrames(aac_media(config="1408"))  # AAC-LC, 16 kHz, mono
    assert (f.config.object_type, f.config.sample_rate, f.config.channels) == (2, 16000, 1)
    enc = av.CodecContext.create("aac", "w")
    enc.sample_rate, enc.layout, enc.format = 16000, "mono", "fltp"
    enc.open()
    frames: list[bytes] = []
    for i in range(4):
        frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        frame.sample_rate, frame.pts = 16000, i * 1024
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frames += [bytes(p) for p in enc.encode(frame)]
    probe = av.open(io.BytesIO(b"".join(f.config.adts(x) for x in frames)), format="aac")
    stream = probe.streams.audio[0]
    assert (stream.sample_rate, stream.channels) == (16000, 1)
    probe.close()
    with pytest.raises(PayloadError, match="not plain AAC"):
        AacFrames(aac_media(config="f808"))
    with pytest.raises(PayloadError, match="AAC-hbr"):
        AacFrames(aac_media(mode="generic"))


def test_sdp_media_sections() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\na=control:*\r\n"
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        "a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z2QAH6w=,aO48gA==\r\n"
        "a=control:stream=0\r\n"
        "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/16000/1\r\n"
        "a=fmtp:97 streamtype=5;mode=AAC-hbr;config=1408;SizeLength=13;IndexLength=3\r\n"
        "a=control:stream=1\r\n"
    )
    video, audio = parse_sdp(sdp).medias
    assert (video.kind, video.encoding, video.clock_rate, video.control) == (
        "video",
        "H264",
        90000,
        "stream=0",
    )
    assert video.fmtp["packetization-mode"] == "1"
    assert (audio.encoding, audio.clock_rate, audio.channels) == ("MPEG4-GENERIC", 16000, 1)
    assert audio.fmtp["sizelength"] == "13" and audio.control == "stream=1"
    # A section that cannot be read is left out, the others kept (TP-Link's extra section).
    parsed = parse_sdp(
        "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        "m=application/TP-LINK 0 RTP/AVP smart/1/90000\r\na=rtpmap:95 TP-LINK/90000\r\n"
        "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 PCMA/8000/x\r\na=control:a\r\n"
        "m=audio 0\r\n"
        "m=audio 0 RTP/AVP 8\r\na=control:b\r\n"
    )
    assert [(m.kind, m.encoding, m.control) for m in parsed.medias] == [
        ("video", "H264", ""),
        ("audio", "PCMA", "b"),
    ]
    assert [why for _, why in parsed.skipped] == [
        "no RTP payload type",
        "malformed rtpmap 'a=rtpmap:97 PCMA/8000/x'",
        "too few fields",
    ]
    assert parsed.skipped_kinds() == {"application", "audio"}


def test_digest_answer_follows_rfc_2617() -> None:
    import hashlib

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    d = DigestAuth("viewer", "pw", ['Digest realm="cam", nonce="abc"'])
    header = d.header("DESCRIBE", "rtsp://h/x")
    expected = md5(f"{md5('viewer:cam:pw')}:abc:{md5('DESCRIBE:rtsp://h/x')}")
    assert f'response="{expected}"' in header and header.startswith("Digest ")
    basic = DigestAuth("viewer", "pw", ["Basic realm=cam"]).header("PLAY", "rtsp://h/x")
    assert basic == "Basic dmlld2VyOnB3"
    with pytest.raises(AuthRejected, match="scheme"):
        DigestAuth("viewer", "pw", ["Bearer realm=x"])


# --- the interleaved reader ---------------------------------------------------------------


def rtp(seq: int, ts: int, payload: bytes, marker: bool, pt: int = 96) -> bytes:
    return struct.pack(">BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, 1234) + payload


def interleaved(channel: int, packet: bytes) -> bytes:
    return b"$" + bytes([channel]) + struct.pack(">H", len(packet)) + packet


def with_stray_bytes(data: bytes, junk: list[bytes], seed: int) -> bytes:
    """`data` (interleaved packets) with each of `junk` put before a random packet."""
    starts, pos = [], 0
    while pos < len(data):
        if data[pos] == 0x24:
            starts.append(pos)
            pos += 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        else:  # the inline RTSP answer of `sample_stream`
            pos = data.index(b"hello", pos) + 5
    rng = random.Random(seed)
    at = sorted(rng.sample(starts, min(len(junk), len(starts))), reverse=True)
    out = bytearray(data)
    for where, stray in zip(at, junk, strict=False):
        out[where:where] = stray
    return bytes(out)


def offline_session() -> RtspSession:
    session = RtspSession("rtsp://127.0.0.1:1/x", username=None, password=None, timeout_s=1)
    media = h264_media(**{"packetization-mode": "1"})
    session.video = rtsp._Track(media, H264Frames(media), "rtsp://127.0.0.1:1/x/0")
    session.video.channel = 0
    return session


def read_in_pieces(session: RtspSession, data: bytes, cuts: list[int]) -> list[tuple[bytes, int]]:
    """Feed `data` to the session's reader in reads of the sizes `cuts` (then the rest): the
    video frames (Annex B, timestamp) it gave out."""
    pos = 0
    for cut in [*cuts, len(data)]:
        chunk = data[pos : pos + cut]
        if not chunk:
            break
        session._buf[session._end : session._end + len(chunk)] = chunk
        session._end += len(chunk)
        session._parse()
        pos += len(chunk)
    assert session.video is not None
    return [(bytes(d), ts) for d, ts, _ in session.video.frames.out]


def sample_stream(frames: int) -> tuple[bytes, list[tuple[bytes, int]]]:
    """Interleaved RTP for `frames` H.264 frames (FU-A split), RTCP on channel 1 and a
    keep-alive answer between them; plus the Annex B frames it must give back."""
    rng = random.Random(7)
    out = bytearray()
    expected: list[tuple[bytes, int]] = []
    seq = 0
    base = 0xFFFFFF00  # the 32-bit RTP clock wraps within the stream
    for i in range(frames):
        nal = bytes([0x65 if i == 0 else 0x41]) + rng.randbytes(rng.randrange(10, 3000))
        ts = (base + i * 3600) & 0xFFFFFFFF
        body = nal[1:]
        chunks = [body[j : j + 1000] for j in range(0, len(body), 1000)]
        for j, chunk in enumerate(chunks):
            fu = (0x80 if j == 0 else 0) | (0x40 if j == len(chunks) - 1 else 0) | (nal[0] & 0x1F)
            out += interleaved(
                0, rtp(seq, ts, bytes([(nal[0] & 0xE0) | 28, fu]) + chunk, j == len(chunks) - 1)
            )
            seq += 1
        if i % 5 == 0:
            out += interleaved(1, b"\x80\xc8\x00\x06" + bytes(24))  # an RTCP sender report
        if i == 3:
            out += b"RTSP/1.0 200 OK\r\nCSeq: 9\r\nContent-Length: 5\r\n\r\nhello"
        expected.append((SC + nal, i * 3600))
    return bytes(out), expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=200))
def test_reader_gives_the_same_frames_whatever_the_read_boundaries(cuts: list[int]) -> None:
    data, expected = sample_stream(30)
    session = offline_session()
    got = read_in_pieces(session, data, cuts)
    assert got == expected[:-1]  # the last picture goes out when the next one begins


# --- against the camera simulator ---------------------------------------------------------------


def opener(url: str, username: str | None = None, password: str | None = None) -> RtspOpener:
    return RtspOpener(
        url, username=username, password=password, transport="tcp", timeout_s=3.0, camera="t"
    )


def first_packets(op: RtspOpener, count: int) -> tuple[Source, list[tuple[str, av.Packet[Any]]]]:
    """The source `op` opens and its first `count` packets as (kind, packet); closed."""
    source = op.open()
    try:
        assert source.video is not None
        vindex = source.video.index
        packets = []
        for packet in source.packets():
            packets.append(("video" if packet.stream_index == vindex else "audio", packet))
            if len(packets) >= count:
                break
        assert source.video.codec_context.width > 0
        return source, packets
    finally:
        source.close()


@pytest.mark.slow
def test_our_client_takes_the_usual_streams_and_ffmpeg_the_b_frames(camsim: CameraSim) -> None:
    for mount in ("h264aac", "h265", "hd4m"):
        op = opener(camsim.url(mount))
        source = op.open()
        try:
            assert isinstance(source, NativeRtspSource), mount
            assert source.video is not None
            assert source.video.codec_context.name == ("hevc" if mount == "h265" else "h264")
            assert source.video.codec_context.width > 0
            if mount == "h264aac":
                assert source.audio is not None and source.audio.index != source.video.index
        finally:
            source.close()
        _, packets = first_packets(op, 40)
        video = [p for kind, p in packets if kind == "video"]
        assert video[0].is_keyframe and video[0].pts is not None
        dts = [p.dts for p in video]
        assert None not in dts and dts == sorted(set(dts)), mount  # type: ignore[type-var]
        assert (mount == "h264aac") == any(kind == "audio" for kind, _ in packets)
    op = opener(camsim.url("bframes"))
    source, _ = first_packets(op, 5)
    assert isinstance(source, RtspSource)
    # The camera keeps FFmpeg's demuxer: no second look on the next connection.
    assert op._ffmpeg_reason is not None and "B-frames" in op._ffmpeg_reason
    again = op.open()
    try:
        assert isinstance(again, RtspSource)
    finally:
        again.close()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["digest", "basic"])
def test_logins_are_answered_and_wrong_ones_rejected_without_leaking(
    camsim_clips: Path, scheme: str
) -> None:
    sim = CameraSim(camsim_clips, mounts=["h264"], auth=f"{scheme}:viewer:Pa55-word")
    sim.start()
    try:
        source, packets = first_packets(opener(sim.url("h264"), "viewer", "Pa55-word"), 5)
        assert isinstance(source, NativeRtspSource) and packets[0][1].is_keyframe
        for user, password in (("viewer", "wrong-Secret"), (None, None)):
            with pytest.raises(AuthRejected) as caught:
                opener(sim.url("h264"), user, password).open()
            assert "wrong-Secret" not in str(caught.value)
    finally:
        sim.stop()


@pytest.mark.slow
def test_keepalive_answers_between_media_do_not_disturb_the_stream(
    camsim: CameraSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rtsp, "KEEPALIVE_SECONDS", 0.3)
    source = opener(camsim.url("h264")).open()
    assert isinstance(source, NativeRtspSource) and source.video is not None
    try:
        began = time.monotonic()
        frames = 0
        for packet in source.packets():
            frames += packet.stream_index == source.video.index
            if time.monotonic() - began > 3:
                break
        assert source._session._cseq >= 10  # keep-alives went out and were read back
        assert frames >= 25  # 10 fps for 3 s
    finally:
        source.close()


# Stray bytes are anything but "$": a run of junk that itself looks like the header of a
# packet on a set-up channel cannot be told from one (FFmpeg is fooled the same way).
stray = st.one_of(
    st.just(b"\r\n"),
    st.binary(min_size=1, max_size=40).filter(lambda b: b"$" not in b),
)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(stray, min_size=1, max_size=12),
    st.integers(0, 1000),
    st.lists(st.integers(min_value=1, max_value=9000), max_size=60),
)
def test_stray_bytes_between_packets_are_skipped_and_counted(
    junk: list[bytes], seed: int, cuts: list[int]
) -> None:
    """Axis and Canon cameras put a CRLF or a few random bytes before some packets: the
    reader skips them (wherever reads cut the stream), counts them and loses no frame."""
    clean, expected = sample_stream(30)
    data = with_stray_bytes(clean, junk, seed)
    session = offline_session()
    got = read_in_pieces(session, data, cuts)
    assert got == expected[:-1]  # the last picture goes out when the next one begins
    assert session.skipped_bytes == len(data) - len(clean)


def test_packets_of_a_foreign_ssrc_are_dropped_and_counted() -> None:
    """A stale session's packets on the same channel: the session's SSRC comes from the
    SETUP reply, or from the packet the PLAY answer's RTP-Info announced (even when the
    stale session's come first)."""
    for named in (True, False):
        session = offline_session()
        video = session.video
        assert video is not None
        video.ssrc = 1234 if named else None
        video.info_seq = None if named else 7

        def packet(ssrc: int, seq: int, ts: int, nal: bytes) -> bytes:
            head = struct.pack(">BBHII", 0x80, 0x80 | 96, seq, ts, ssrc)
            return interleaved(0, head + nal)

        data = b"".join(
            packet(999, 500 + i, 77_000 + i * 3600, b"\x41\xff\xee") for i in range(3)
        )  # the stale session first
        for i in range(5):
            data += packet(1234, 7 + i, 1000 + i * 3600, bytes([0x65 if i == 0 else 0x41, i]))
            data += packet(999, 503 + i, 88_000 + i * 3600, b"\x41\xff\xee")
        session._buf[: len(data)] = data
        session._end = len(data)
        session._parse()
        frames = [(bytes(d), ts) for d, ts, _ in video.frames.out]
        # The fifth picture goes out when a sixth begins.
        assert frames == [(SC + bytes([0x65 if i == 0 else 0x41, i]), i * 3600) for i in range(4)]
        assert session.foreign_packets == 8 and video.ssrc == 1234


def test_a_wrong_ssrc_in_setup_and_packets_of_channels_not_set_up() -> None:
    """A SETUP reply naming an SSRC the camera does not use (retina #79): the packet RTP-Info
    announced wins at once. A packet on a channel this session did not set up (old live555
    streaming a closed session's) is skipped whole, not read as stray bytes."""
    session = offline_session()
    video = session.video
    assert video is not None
    video.ssrc, video.info_seq = 0xBAD, 40
    head = struct.pack(">BBHII", 0x80, 0x80 | 96, 999, 5, 77)
    stale = interleaved(6, head + b"\x41" + b"$\x00\x00\x10" + bytes(40))  # "$" inside
    data = stale
    for i in range(3):
        data += interleaved(
            0, rtp(40 + i, 1000 + i * 3600, bytes([0x65 if i == 0 else 0x41]), True)
        )
        data += stale
    session._buf[: len(data)] = data
    session._end = len(data)
    session._parse()
    assert [ts for _, ts, _ in video.frames.out] == [0, 3600]  # 7200 waits for the next
    # The last stale packet waits for the byte after it to tell it from stray bytes.
    assert video.ssrc == 1234 and session.foreign_packets == 3 and session.skipped_bytes == 0


def test_audio_without_rtp_info_starts_at_the_video_time_that_arrived_with_it() -> None:
    session = offline_session()
    media = aac_media()
    session.audio = rtsp._Track(media, AacFrames(media), "rtsp://127.0.0.1:1/x/1")
    session.audio.channel = 2
    data = b"".join(
        interleaved(0, rtp(i, 1_000_000 + i * 9000, b"\x41\x9a", True)) for i in range(11)
    )  # video from 0 to 1 s
    au = struct.pack(">HH", 16, 4 << 3) + b"aaaa"
    data += interleaved(2, rtp(0, 4_000_000_000, au, True, pt=97))
    data += interleaved(2, rtp(1, 4_000_001_024, au, True, pt=97))
    session._buf[: len(data)] = data
    session._end = len(data)
    session._parse()
    assert [ts for _, ts, _ in session.audio.frames.out] == [16_000, 17_024]


class ScriptedCamera:
    """A misbehaving camera on 127.0.0.1: answers each RTSP request with `answers[method]`
    (CSeq filled in), for the error paths a real server will not take."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[str] = []
        self.delays: dict[str, float] = {}
        self._thread = threading.Thread(target=self._serve, name="scripted", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    head, data = data.split(b"\r\n\r\n", 1)
                    self.requests.append(head.decode())
                    lines = head.decode().split("\r\n")
                    method = lines[0].split(" ")[0]
                    cseq = next(x.split(":")[1].strip() for x in lines if x.startswith("CSeq"))
                    time.sleep(self.delays.get(method, 0.0))
                    conn.sendall(self.answers[method].replace("{cseq}", cseq).encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(2)


def answer(status: str, body: str = "", **headers: str) -> str:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (
        f"RTSP/1.0 {status}\r\nCSeq: {{cseq}}\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}"
    )


SDP_HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n"


@pytest.mark.parametrize(
    ("describe", "error", "message"),
    [
        ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", StreamError, "did not answer in RTSP"),
        (answer("404 Not Found"), StreamError, "DESCRIBE with 404 Not Found"),
        (
            answer(
                "200 OK",
                SDP_HEAD + "m=application 0 RTP/AVP 107\r\n"
                "a=rtpmap:107 vnd.onvif.metadata/90000\r\n",
            ),
            UnsupportedStream,
            "no video or audio stream",
        ),
        (
            answer("200 OK", SDP_HEAD + "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 G726-32/8000\r\n"),
            UnsupportedStream,
            "no video stream in the camera's SDP, and its audio cannot be kept",
        ),
        (
            answer("200 OK", SDP_HEAD + "m=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\n"),
            NotForUs,
            "JPEG is not H.264/H.265",
        ),
    ],
)
def test_a_camera_that_answers_wrongly_gets_an_error_naming_it(
    describe: str, error: type[Exception], message: str
) -> None:
    camera = ScriptedCamera({"OPTIONS": answer("200 OK", Public="DESCRIBE"), "DESCRIBE": describe})
    session = RtspSession(
        f"rtsp://127.0.0.1:{camera.port}/x", username=None, password=None, timeout_s=2
    )
    try:
        with pytest.raises(error, match=message):
            session.connect()
    finally:
        session.close()
        camera.close()


def test_announced_audio_that_never_comes_delays_recording_by_a_second_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A camera whose SDP has audio but whose microphone is off: video is recorded after
    `AUDIO_WAIT_SECONDS`, not after the keyframe deadline, and the reason is kept."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 64, 64, "yuv420p"
    enc.time_base = Fraction(1, 10)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "bframes": "0"}
    frames: list[bytes] = []
    for i in range(8):
        picture = av.VideoFrame(64, 64, "yuv420p")
        for plane in picture.planes:
            plane.update(bytes(plane.buffer_size))
        picture.pts = i
        frames += [bytes(p) for p in enc.encode(picture)]
    frames += [bytes(p) for p in enc.encode(None)]
    session = offline_session()
    media = aac_media()
    session.audio = rtsp._Track(media, AacFrames(media), "rtsp://127.0.0.1:1/x/1")
    assert session.video is not None
    video = session.video.frames
    sent = iter(enumerate(frames))

    def read(stall_seconds: float) -> bool:
        time.sleep(0.05)
        i, data = next(sent, (-1, b""))
        if i >= 0:
            video.out.append((bytearray(data), i * 9000, i == 0))
        return i >= 0

    monkeypatch.setattr(session, "read", read)
    source = NativeRtspSource(session, 3.0, "test", lambda why: None)
    began = time.monotonic()
    source.start(keyframe_seconds=10)
    assert time.monotonic() - began < rtsp_source.AUDIO_WAIT_SECONDS + 1.0
    assert source.audio is None and "no audio" in session.audio_note
    assert source.video is not None and source.video.codec_context.width == 64
    source.close()


def test_lf_only_answers_are_read() -> None:
    camera = ScriptedCamera(
        {
            "OPTIONS": "RTSP/1.0 200 OK\nCSeq: {cseq}\nPublic: DESCRIBE\n\n",
            "DESCRIBE": "RTSP/1.0 404 Not Found\nCSeq: {cseq}\nContent-Length: 0\n\n",
        }
    )
    session = RtspSession(
        f"rtsp://127.0.0.1:{camera.port}/x", username=None, password=None, timeout_s=2
    )
    try:
        with pytest.raises(StreamError, match="DESCRIBE with 404 Not Found"):
            session.connect()
    finally:
        session.close()
        camera.close()


def test_redirects_are_followed_with_credentials_for_the_same_host_only() -> None:
    """A redirect to another host gets no credentials (the camera there asks for them and
    is refused), and a redirect loop ends after `MAX_REDIRECTS` hops with an error."""
    there = ScriptedCamera(
        {"OPTIONS": answer("401 Unauthorized", WWW_Authenticate='Basic realm="x"')}
    )
    here = ScriptedCamera(
        {"OPTIONS": answer("302 Found", Location=f"rtsp://localhost:{there.port}/y")}
    )
    session = RtspSession(
        f"rtsp://127.0.0.1:{here.port}/x", username="viewer", password="Se-cret", timeout_s=2
    )
    try:
        with pytest.raises(AuthRejected, match="requires credentials"):
            session.connect()
        assert there.requests and all("Authorization" not in r for r in there.requests)
    finally:
        session.close()
        here.close()
        there.close()
    loop = ScriptedCamera({"OPTIONS": answer("301 Moved Permanently", Location="/again")})
    session = RtspSession(
        f"rtsp://viewer:pw@127.0.0.1:{loop.port}/x", username=None, password=None, timeout_s=2
    )
    try:
        with pytest.raises(StreamError, match="redirected more than 3 times") as caught:
            session.connect()
        assert "pw" not in str(caught.value)
        assert loop.connections == rtsp.MAX_REDIRECTS + 1
    finally:
        session.close()
        loop.close()


def test_a_slow_server_is_waited_for_while_it_answers_other_cameras() -> None:
    """DESCRIBE answered after two timeouts: given up on after one when the server says
    nothing else, waited for while the same server answers another camera meanwhile."""
    camera = ScriptedCamera({"OPTIONS": answer("200 OK"), "DESCRIBE": answer("404 Not Found")})
    camera.delays["DESCRIBE"] = 2.0
    url = f"rtsp://127.0.0.1:{camera.port}/x"
    session = RtspSession(url, username=None, password=None, timeout_s=1.0)
    stop = threading.Event()

    def other_camera() -> None:  # the same server keeps answering someone else
        while not stop.wait(0.3):
            rtsp.HANDSHAKES.answered(("127.0.0.1", camera.port))

    helper = threading.Thread(target=other_camera, daemon=True)
    try:
        session._reconnect()
        session._request("OPTIONS", url)
        began = time.monotonic()
        with pytest.raises(ConnectTimeout, match="no RTSP answer to DESCRIBE"):
            session._request("DESCRIBE", url)
        assert time.monotonic() - began < 1.9
        session._reconnect()
        helper.start()
        with pytest.raises(StreamError, match="DESCRIBE with 404"):
            session._request("DESCRIBE", url)
    finally:
        stop.set()
        if helper.is_alive():
            helper.join()
        session.close()
        camera.close()


# --- quirks retina documents (docs/interop.md) --------------------------------------------------


def test_annex_b_in_single_nal_unit_packets_is_split_into_units() -> None:
    """V380 cameras: start codes where a NAL unit belongs, several units in one packet."""
    f = H264Frames(h264_media(**{"packetization-mode": "1"}))
    sps, pps, idr = b"\x67\x64\x00\x1f\xaa", b"\x68\xee\x3c\x80", b"\x65\x88\x00\x01\x02"
    f.payload(memoryview(SC + sps + b"\x00\x00\x01" + pps), 1000, False)
    f.payload(memoryview(SC + idr), 1000, True)
    f.payload(memoryview(SC + b"\x41\x9a\x01"), 4600, True)
    f.payload(memoryview(b"\x41\x9a\x02"), 8200, True)  # ends the one before
    assert [(bytes(d), ts, key) for d, ts, key in f.out] == [
        (SC + sps + SC + pps + SC + idr, 1000, True),
        (SC + b"\x41\x9a\x01", 4600, False),
    ]
    assert f.params[7] == sps and f.params[8] == pps


def test_packets_of_another_payload_type_are_dropped_unless_they_are_all_there_is() -> None:
    """Geovision's payload type 50 among the video is dropped and counted; a camera whose
    packets all carry another type than its SDP names is taken at that type after
    `OTHER_TYPE_ADOPT` packets."""
    session = offline_session()
    video = session.video
    assert video is not None
    video.ssrc = 1234
    data = b""
    for i in range(4):
        data += interleaved(0, rtp(i * 2, i * 3600, bytes([0x65 if i == 0 else 0x41, i]), True))
        data += interleaved(0, rtp(i * 2 + 1, i * 3600, b"\x65junk", True, pt=50))
    session._buf[: len(data)] = data
    session._end = len(data)
    session._parse()
    frames = [bytes(d) for d, _, _ in video.frames.out]
    assert frames == [SC + b"\x65\x00", SC + b"\x41\x01", SC + b"\x41\x02"]
    assert session.other_type_packets == 4

    session = offline_session()
    video = session.video
    assert video is not None
    video.ssrc = 1234
    n = rtsp.OTHER_TYPE_ADOPT + 3
    data = b"".join(
        interleaved(0, rtp(i, i * 3600, bytes([0x65 if i == 0 else 0x41, i]), True, pt=35))
        for i in range(n)
    )
    session._buf[: len(data)] = data
    session._end = len(data)
    session._parse()
    assert video.payload_type == 35
    assert session.other_type_packets == rtsp.OTHER_TYPE_ADOPT - 1
    assert len(video.frames.out) == n - rtsp.OTHER_TYPE_ADOPT  # the last waits for the next


@pytest.mark.parametrize(
    ("base", "absolute"),
    [
        ("rtsp://10.0.0.2:554/live/", "rtsp://10.0.0.2:554/live/"),
        ("10.0.0.2:554/stream0/", "rtsp://10.0.0.2:554/stream0/"),
        ("/stream0/", "rtsp://10.0.0.2:8554/stream0/"),
    ],
)
def test_a_content_base_without_scheme_is_made_absolute(base: str, absolute: str) -> None:
    """Anjvision cameras send `Content-Base: 192.168.1.10:554/stream0/`."""
    assert rtsp._absolute(base, "rtsp://10.0.0.2:8554/x") == absolute


def test_an_sdp_whose_video_section_cannot_be_parsed_goes_to_ffmpeg() -> None:
    """Left-out sections cost nothing while the video is understood; when the video may be
    among them, FFmpeg's demuxer gets the camera (it may read what we could not), rather
    than recording its audio alone."""
    session = RtspSession("rtsp://127.0.0.1:1/x", username=None, password=None, timeout_s=1)
    audio = "m=audio 0 RTP/AVP 8\r\n"
    with pytest.raises(NotForUs, match="no video section of the SDP could be parsed"):
        session._choose(parse_sdp("m=video 0 RTP/AVP H264\r\n" + audio), "rtsp://127.0.0.1:1/x")
    session._choose(parse_sdp("m=application/TP-LINK 0 RTP/AVP smart\r\n" + audio), "rtsp://h/")
    assert session.video is None and session.audio is not None  # an audio-only camera
    session.audio = None
    session._choose(
        parse_sdp("m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 0 RTP/AVP\r\n"),
        "rtsp://h/",
    )
    assert session.video is not None and session.audio is None
    assert "audio section could not be parsed" in session.audio_note
