"""Ingest: pulling camera streams and remuxing them into segments, one thread per camera.

`Supervisor` (event loop) owns `CameraRecorder`s (one thread each); `StreamOpener`s are the
seam between a recorder and where packets come from (RTSP or the built-in test pattern).
"""

from ingest.errors import StreamError
from ingest.recorder import Backoff, CameraRecorder, Clock, RecorderStatus, SystemClock
from ingest.sources import RtspOpener, Source, StreamOpener, TestPatternOpener
from ingest.supervisor import Supervisor, default_opener

__all__ = [
    "Backoff",
    "CameraRecorder",
    "Clock",
    "RecorderStatus",
    "RtspOpener",
    "Source",
    "StreamError",
    "StreamOpener",
    "Supervisor",
    "SystemClock",
    "TestPatternOpener",
    "default_opener",
]
