"""The built-in test camera (the demo config's `demo`, and tests): a moving picture with a
burned-in UTC clock drawn in its own digit font, encoded with libx264 in process, so the
daemon records something with no camera and no network. `TestPatternOpener` is a
`StreamOpener`.

Runs on the recorder thread of its camera (encoding in real time unless asked not to).
Imports go down to PyAV and numpy only.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

_DIGITS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    ":": ("000", "010", "000", "010", "000"),
    "-": ("000", "000", "111", "000", "000"),
    " ": ("000", "000", "000", "000", "000"),
    ".": ("000", "000", "000", "000", "010"),
}
_GLYPHS = {ch: np.array([[c == "1" for c in row] for row in rows]) for ch, rows in _DIGITS.items()}


_SCALED: dict[tuple[str, int], np.ndarray] = {}
"""Glyphs blown up to a scale, made once: `np.kron` per character was half the cost of a
test-pattern frame (the store tests encode thousands)."""


def _scaled(ch: str, scale: int) -> np.ndarray:
    big = _SCALED.get((ch, scale))
    if big is None:
        glyph = _GLYPHS.get(ch, _GLYPHS[" "])
        big = _SCALED[(ch, scale)] = np.kron(glyph, np.ones((scale, scale), dtype=bool))
    return big


def draw_text(luma: np.ndarray, text: str, x: int, y: int, scale: int) -> None:
    """Burn `text` (digits, ':', '-', '.', ' ') into a luma plane, white on black boxes."""
    for i, ch in enumerate(text):
        big = _scaled(ch, scale)
        x0 = x + i * 4 * scale
        h, w = big.shape
        region = luma[y - scale : y + h + scale, x0 - scale : x0 + w + scale]
        region[:] = 16
        luma[y : y + h, x0 : x0 + w][big] = 235


class TestPatternSource:
    """A moving picture with a burned-in UTC clock, encoded with libx264 in real time."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        width: int = 640,
        height: int = 360,
        fps: int = 10,
        wall: Callable[[], float] = time.time,
        realtime: bool = True,
    ) -> None:
        """`realtime=False` makes frames as fast as they can be encoded (tests, benches)."""
        self._fps = fps
        self._wall = wall
        self._realtime = realtime
        # A throwaway MP4 context gives us a Stream whose codec parameters (with global
        # SPS/PPS extradata) can serve as the template of the segment writer's stream.
        self._dummy = av.open(io.BytesIO(), "w", format="mp4")
        stream = self._dummy.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = fps
        stream.codec_context.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0",
        }
        stream.codec_context.bit_rate = 400_000
        self._dummy.start_encoding()
        self.video: VideoStream = stream
        if stream.time_base is None:
            raise RuntimeError("libx264 stream has no time base after start_encoding")
        self._time_base = stream.time_base
        self.audio: AudioStream | None = None
        self.description = "built-in test pattern"
        yy, xx = np.mgrid[0:height, 0:width]
        self._base = ((xx * 255 // max(1, width - 1) + yy * 64 // max(1, height - 1)) % 256).astype(
            np.uint8
        )
        self._chroma = np.full((height // 2, width // 2), 128, np.uint8)

    def _frame(self, index: int) -> av.VideoFrame:
        h, w = self._base.shape
        luma = np.roll(self._base, index * 4, axis=1)
        box = (index * 6) % max(1, w - 60)
        luma[h // 2 - 30 : h // 2 + 30, box : box + 60] = 200
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._wall()))
        stamp += f".{int(self._wall() * 10) % 10}"
        draw_text(luma, stamp, 16, 16, 3)
        frame = av.VideoFrame(w, h, "yuv420p")
        frame.planes[0].update(np.ascontiguousarray(luma).tobytes())
        frame.planes[1].update(self._chroma.tobytes())
        frame.planes[2].update(self._chroma.tobytes())
        frame.pts = index
        frame.time_base = Fraction(1, self._fps)
        return frame

    def packets(self) -> Iterator[av.Packet[Any]]:
        start = time.monotonic()
        index = 0
        while True:
            delay = start + index / self._fps - time.monotonic()
            if self._realtime and delay > 0:
                time.sleep(delay)
            for packet in self.video.encode(self._frame(index)):
                src = packet.time_base
                if src is not None and src != self._time_base:
                    scale = src / self._time_base
                    if packet.pts is not None:
                        packet.pts = int(packet.pts * scale)
                    if packet.dts is not None:
                        packet.dts = int(packet.dts * scale)
                    packet.duration = int((packet.duration or 0) * scale)
                    packet.time_base = self._time_base
                yield packet
            index += 1

    @property
    def audio_note(self) -> str:
        return ""

    def close(self) -> None:
        self._dummy.close()


class TestPatternOpener:
    """Opens the built-in test camera (never fails, never needs the network)."""

    __test__ = False

    def open(self) -> TestPatternSource:
        return TestPatternSource()

    def probe_reachable(self) -> bool:
        return True
