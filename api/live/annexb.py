"""Annex B access units for live view: NAL units, parameter sets (from in-band NALs or the
stream's extradata, avcC/hvcC or Annex B) and the RFC 6381 codecs string a browser's Media
Source needs. Pure functions on bytes; called on whatever thread holds the frame."""

from __future__ import annotations

START = b"\x00\x00\x00\x01"


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B buffer (start codes removed, trailing zeros dropped: a NAL
    unit never ends in a zero byte)."""
    out = []
    for part in data.split(b"\x00\x00\x01"):
        nal = part.rstrip(b"\x00")
        if nal:
            out.append(nal)
    return out


def h264_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def hevc_type(nal: bytes) -> int:
    return (nal[0] >> 1) & 0x3F


def _length_prefixed(body: bytes, count: int, at: int) -> tuple[list[bytes], int]:
    nals = []
    for _ in range(count):
        size = int.from_bytes(body[at : at + 2], "big")
        nals.append(body[at + 2 : at + 2 + size])
        at += 2 + size
    return nals, at


def parameter_sets(codec: str, extradata: bytes) -> list[bytes]:
    """The SPS/PPS (and VPS) NAL units of a stream's extradata, whatever its form."""
    if not extradata:
        return []
    if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return nal_units(extradata)
    try:
        if codec == "h264" and extradata[0] == 1:  # avcC
            sps, at = _length_prefixed(extradata, extradata[5] & 0x1F, 6)
            pps, _ = _length_prefixed(extradata, extradata[at], at + 1)
            return sps + pps
        if codec == "hevc" and extradata[0] == 1 and len(extradata) > 23:  # hvcC
            nals: list[bytes] = []
            at = 23
            for _ in range(extradata[22]):
                count = int.from_bytes(extradata[at + 1 : at + 3], "big")
                found, at = _length_prefixed(extradata, count, at + 3)
                nals += found
            return nals
    except IndexError:
        return []
    return []


def with_parameter_sets(codec: str, data: bytes, extradata: bytes) -> bytes:
    """A keyframe that a decoder can start at: the stream's parameter sets put in front when
    the access unit carries none in-band (cameras that send them only in the SDP)."""
    nals = nal_units(data)
    if codec == "h264":
        if any(h264_type(n) == 7 for n in nals):
            return data
    elif any(hevc_type(n) in (32, 33) for n in nals):
        return data
    params = parameter_sets(codec, extradata)
    if not params:
        return data
    return b"".join(START + n for n in params) + data


def h264_codecs(data: bytes, extradata: bytes = b"") -> str | None:
    """`avc1.PPCCLL` from the first SPS in `data` (or the extradata), None without one."""
    for nal in [*nal_units(data), *parameter_sets("h264", extradata)]:
        if h264_type(nal) == 7 and len(nal) >= 4:
            return f"avc1.{nal[1]:02x}{nal[2]:02x}{nal[3]:02x}"
    return None
