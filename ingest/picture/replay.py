"""Replay the picture detector over recorded footage (`nvr tamper-check`): the same keyframe
choice (one every `check_seconds` of media time), decoding and judgement as the daemon's
`picture-check` thread, from the segment files reopened with PyAV instead of the live tap, so
a site can tune a camera's `[cameras.picture]` thresholds on its own footage. Read-only (no
index writes, no snapshots). Runs on the calling thread (the CLI's main thread; bench/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av

from nvr.config.models import PictureConfig
from nvr.ingest.picture.decode import PictureDecodeError, decode_keyframe, grey_picture
from nvr.ingest.picture.detector import CONDITIONS, PictureChange, PictureDetector
from nvr.storage import Segment

log = logging.getLogger("nvr.picture")


@dataclass(frozen=True)
class ReplayFinding:
    kind: str
    start_ms: int
    raised_ms: int
    end_ms: int | None
    """None: still raised at the end of the range."""
    score: float | None
    detail: str


@dataclass
class ReplayReport:
    checks: int = 0
    segments: int = 0
    undecodable: int = 0
    cpu_seconds: float = 0.0
    findings: list[ReplayFinding] = field(default_factory=list)
    changes: list[tuple[int, PictureChange]] = field(default_factory=list)
    """(wall ms of the picture, change), in order; learning -> ok included."""
    final_state: str = "learning"


def replay(
    segments: list[Segment],
    start_ms: int,
    end_ms: int,
    settings: PictureConfig,
    on_change: Callable[[int, PictureChange], None] | None = None,
) -> ReplayReport:
    """Judge the keyframes of `segments` within [start_ms, end_ms), one every
    `settings.check_seconds`; the reference is learned from the range's first pictures."""
    det = PictureDetector(settings)
    report = ReplayReport()
    last_ms: int | None = None
    open_finding: dict[str, ReplayFinding] = {}
    started = time.process_time()
    for seg in segments:
        if seg.end_ms <= start_ms or seg.start_ms >= end_ms:
            continue
        report.segments += 1
        try:
            container = av.open(str(seg.path))
        except (av.FFmpegError, OSError) as err:
            log.warning("%s: cannot open: %s", seg.path, err)
            continue
        with container:
            if not container.streams.video:
                continue
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            extradata = bytes(stream.codec_context.extradata or b"")
            tb = stream.time_base
            first: int | None = None
            for packet in container.demux(stream):
                if packet.pts is None or not packet.is_keyframe or not packet.size:
                    continue
                if first is None:
                    first = packet.pts
                at = seg.start_ms + round(float((packet.pts - first) * tb) * 1000) if tb else 0
                if not start_ms <= at < end_ms:
                    continue
                if last_ms is not None and at - last_ms < settings.check_seconds * 1000:
                    continue
                last_ms = at
                try:
                    grey = grey_picture(decode_keyframe(codec, extradata, bytes(packet)))
                except PictureDecodeError:
                    report.undecodable += 1
                    continue
                report.checks += 1
                for change in det.feed(at / 1000, grey):
                    report.changes.append((at, change))
                    if on_change is not None:
                        on_change(at, change)
                    onset = round(change.onset * 1000)
                    if change.previous in CONDITIONS and change.previous in open_finding:
                        f = open_finding.pop(change.previous)
                        report.findings.append(
                            ReplayFinding(f.kind, f.start_ms, f.raised_ms, onset, f.score,
                                          f.detail)
                        )
                    if change.state in CONDITIONS:
                        open_finding[change.state] = ReplayFinding(
                            change.state, onset, at, None, change.score, change.detail
                        )
    report.findings += list(open_finding.values())
    report.findings.sort(key=lambda f: f.start_ms)
    report.cpu_seconds = time.process_time() - started
    report.final_state = det.state
    return report
