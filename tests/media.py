"""Test helpers that read recordings back with PyAV (never trusting our own counters)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from nvr.ingest.testpattern import TestPatternSource


def fast_pattern() -> TestPatternSource:
    """The built-in test camera without real-time pacing."""
    return TestPatternSource(realtime=False)


def pattern_packets(source: TestPatternSource, count: int) -> Iterator[av.Packet[Any]]:
    return itertools.islice(source.packets(), count)


@dataclass(frozen=True)
class FileCheck:
    """What PyAV finds in a recorded file."""

    video_codec: str
    audio_codec: str | None
    frames: int
    decoded: int
    first_is_key: bool
    dts_monotonic: bool
    duration_s: float
    audio_packets: int
    frame_pts_rising: bool
    """Decoded pictures come out with strictly rising PTS (presentation order intact)."""


def check_file(path: Path, decode: bool = True) -> FileCheck:
    """Reopen a recording: codecs, keyframe start, monotonic DTS, media duration, decodes."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        tb = v.time_base
        assert tb is not None
        frames = decoded = audio_packets = 0
        frame_pts: list[int] = []
        first_key = False
        mono = True
        last_dts: int | None = None
        first_dts: int | None = None
        end = 0
        for packet in c.demux():
            if packet.size == 0:
                continue
            if packet.stream.type == "audio":
                audio_packets += 1
                continue
            if frames == 0:
                first_key = packet.is_keyframe
            frames += 1
            assert packet.dts is not None
            if last_dts is not None and packet.dts <= last_dts:
                mono = False
            last_dts = packet.dts
            if first_dts is None:
                first_dts = packet.dts
            end = max(end, packet.dts + (packet.duration or 0))
            if decode:
                pictures = list(v.codec_context.decode(packet))
                decoded += len(pictures)
                frame_pts += [f.pts for f in pictures if f.pts is not None]
        if decode:
            pictures = list(v.codec_context.decode(None))
            decoded += len(pictures)
            frame_pts += [f.pts for f in pictures if f.pts is not None]
        return FileCheck(
            video_codec=v.codec_context.codec.canonical_name,
            audio_codec=a.codec_context.codec.canonical_name if a else None,
            frames=frames,
            decoded=decoded,
            first_is_key=first_key,
            dts_monotonic=mono,
            duration_s=float((end - (first_dts or 0)) * tb),
            audio_packets=audio_packets,
            frame_pts_rising=all(b > a for a, b in itertools.pairwise(frame_pts)),
        )
