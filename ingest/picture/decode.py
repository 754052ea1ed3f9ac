"""One keyframe to a small grey picture, and a decoded picture to a JPEG snapshot (PyAV).

Runs on the calling thread: the `picture-check` worker in the daemon, the CLI's thread in
`nvr tamper-check`, never a recorder's thread or the event loop. Each keyframe is decoded on
its own by a fresh single-threaded decoder (only keyframes arrive, so nothing depends on a
previous picture, and a decoder costs little next to the picture it decodes); a decoder that
holds the picture back (reordering) is flushed.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from nvr.ingest.picture.detector import F32

ANALYSIS_WIDTH = 256
"""Width of the grey picture the detector judges (height by the picture's aspect)."""
SNAPSHOT_WIDTH = 640
"""Width of the JPEG snapshot kept with a finding."""


class PictureDecodeError(Exception):
    """A keyframe could not be decoded (a damaged access unit); the next one may be fine."""

    retry_can_help = True


def decode_keyframe(codec: str, extradata: bytes, data: bytes) -> av.VideoFrame:
    """Decode one keyframe access unit (Annex B or length-prefixed, as the extradata says).
    `codec` is FFmpeg's canonical name, as the packet tap and a demuxed stream give it."""
    try:
        ctx = av.CodecContext.create(codec, "r")
        assert isinstance(ctx, av.VideoCodecContext)
        ctx.thread_count = 1
        if extradata:
            ctx.extradata = extradata
        frames = ctx.decode(av.Packet(data))
        if not frames:
            frames = ctx.decode(None)
    except (av.FFmpegError, ValueError) as err:
        raise PictureDecodeError(f"cannot decode the keyframe: {err}") from err
    if not frames:
        raise PictureDecodeError("the keyframe decoded to no picture")
    frame = frames[0]
    assert isinstance(frame, av.VideoFrame)
    return frame


def analysis_size(width: int, height: int) -> tuple[int, int]:
    h = max(16, round(ANALYSIS_WIDTH * height / max(1, width) / 2) * 2)
    return ANALYSIS_WIDTH, h


def grey_picture(frame: av.VideoFrame) -> F32:
    """The picture scaled down (area averaging) to `ANALYSIS_WIDTH`, grey, float32."""
    w, h = analysis_size(frame.width, frame.height)
    small = frame.reformat(width=w, height=h, format="gray", interpolation="AREA")
    out: F32 = small.to_ndarray().astype(np.float32)
    return out


def jpeg_snapshot(frame: av.VideoFrame, width: int = SNAPSHOT_WIDTH) -> bytes:
    """The picture as a JPEG at most `width` wide (PyAV's MJPEG encoder, one frame)."""
    w = min(width, frame.width) // 2 * 2
    h = max(2, round(w * frame.height / max(1, frame.width) / 2) * 2)
    enc = av.CodecContext.create("mjpeg", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = w, h, "yuvj420p"
    enc.time_base = Fraction(1, 1)
    enc.options = {"qmin": "2", "qmax": "6"}
    scaled = frame.reformat(width=w, height=h, format="yuvj420p")
    scaled.pts = 0
    packets = enc.encode(scaled) + enc.encode(None)
    return b"".join(bytes(p) for p in packets)
