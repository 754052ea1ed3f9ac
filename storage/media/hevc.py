"""H.265 sample entries as Apple's players want them: `hvc1_entry` rewrites a recorded
`hev1`/`hvc1` entry into an `hvc1` whose `hvcC` carries the VPS, SPS and PPS (taken from the
first keyframe's in-band NAL units where the entry lacks them). Used by the planner for
every segment it takes. Pure but for the `keyframe()` read it is given; any thread. Imports
go down to `storage.media.boxes`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from nvr.storage.media.boxes import Mp4Error, box, boxes

_VISUAL_ENTRY_HEADER = 86
"""Bytes of a visual sample entry before its child boxes (box header included)."""
_HEVC_PARAMETER_SETS = (32, 33, 34)
"""VPS, SPS, PPS."""


def _hvcc_arrays(hvcc: bytes) -> tuple[bytes, list[tuple[int, list[bytes]]]]:
    """(the 22-byte fixed part, [(NAL type, [NAL units])]) of an hvcC record."""
    if len(hvcc) < 23:
        raise Mp4Error("hvcC record too short")
    fixed = hvcc[:22]
    count = hvcc[22]
    pos = 23
    arrays: list[tuple[int, list[bytes]]] = []
    for _ in range(count):
        kind = hvcc[pos] & 0x3F
        n = struct.unpack_from(">H", hvcc, pos + 1)[0]
        pos += 3
        units = []
        for _ in range(n):
            size = struct.unpack_from(">H", hvcc, pos)[0]
            units.append(hvcc[pos + 2 : pos + 2 + size])
            pos += 2 + size
        arrays.append((kind, units))
    return fixed, arrays


def hvc1_entry(entry: bytes, keyframe: Callable[[], bytes]) -> bytes:
    """An H.265 sample entry as QuickTime and Safari want it: `hvc1` (not `hev1`) with the
    VPS, SPS and PPS in its `hvcC` (array_completeness set). Parameter sets the recorded
    entry lacks are taken from the in-band NAL units of the first keyframe (`keyframe()`
    reads it). Any other entry, or one whose parameter sets cannot be found, is returned
    unchanged."""
    kind = entry[4:8]
    if kind not in (b"hev1", b"hvc1") or len(entry) < _VISUAL_ENTRY_HEADER:
        return entry
    children = list(boxes(entry, _VISUAL_ENTRY_HEADER, len(entry)))
    found = next(((b, e) for k, b, e in children if k == b"hvcC"), None)
    if found is None:
        return entry
    try:
        fixed, arrays = _hvcc_arrays(entry[found[0] : found[1]])
    except (Mp4Error, struct.error, IndexError):
        return entry
    have = {k for k, units in arrays if units}
    if not have.issuperset(_HEVC_PARAMETER_SETS):
        size_len = (fixed[21] & 0x3) + 1
        data = keyframe()
        pos = 0
        inband: dict[int, list[bytes]] = {}
        while pos + size_len <= len(data):
            n = int.from_bytes(data[pos : pos + size_len], "big")
            nal = data[pos + size_len : pos + size_len + n]
            pos += size_len + n
            if nal:
                t = (nal[0] >> 1) & 0x3F
                if t in _HEVC_PARAMETER_SETS and nal not in inband.get(t, []):
                    inband.setdefault(t, []).append(nal)
        if not (have | set(inband)).issuperset(_HEVC_PARAMETER_SETS):
            return entry
        arrays = [(k, u) for k, u in arrays if k not in inband or u] + [
            (k, inband[k]) for k in _HEVC_PARAMETER_SETS if k not in have
        ]
    arrays.sort(key=lambda a: (a[0] not in _HEVC_PARAMETER_SETS, a[0]))
    record = bytearray(fixed)
    record.append(len(arrays))
    for k, units in arrays:
        complete = 0x80 if k in _HEVC_PARAMETER_SETS else 0
        record += struct.pack(">BH", complete | k, len(units))
        for u in units:
            record += struct.pack(">H", len(u)) + u
    hvcc = box(b"hvcC", bytes(record))
    rest = b"".join(entry[b - 8 : e] for k, b, e in children if k != b"hvcC")
    # Child box headers are 8 bytes (sample entries never use 64-bit sizes).
    body = entry[8:_VISUAL_ENTRY_HEADER] + hvcc + rest
    return struct.pack(">I4s", 8 + len(body), b"hvc1") + body
