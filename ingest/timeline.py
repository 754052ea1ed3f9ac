"""Turning the timestamps a camera sends into a clean, monotonic timeline. Pure logic, no I/O;
used on the recorder thread of one camera and unit-tested with plain integers.

Quirks handled, each seen on real RTSP servers:
- packets without a timestamp (ffmpeg's RTSP demuxer hands over the very first keyframe with
  none) or with a PTS but no DTS (the next packets of a B-frame stream): held until a packet
  with a DTS arrives, then placed one frame apart before it, keeping their own PTS; later
  ones get the smallest step after the previous DTS;
- DTS that go backwards a little (less than one frame: FFmpeg re-basing on an RTCP report):
  nudged forward by one tick (PTS kept >= DTS);
- jumps (forward by more than `jump_ticks`, backward by a frame or more: a camera clock
  corrected by SNTP, decode times never go back): the timeline continues smoothly (offset
  adjusted) and the jump is reported so the recorder cuts a new segment at the next keyframe
  and records the discontinuity;
- B-frames (pts != dts): PTS and DTS are shifted together, never reordered.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HELD = 16
"""Packets held while waiting for a first DTS; past this many they go out on their PTS."""


@dataclass
class Stamped:
    """One packet's timestamps on the clean timeline (ticks of the stream's time base)."""

    pts: int
    dts: int
    duration: int
    jump_ticks: int = 0
    """Non-zero if the input jumped right before this packet (the size of the jump)."""


class StreamTimeline:
    """Normalises the timestamps of one elementary stream."""

    def __init__(self, frame_ticks: int, jump_ticks: int) -> None:
        self.frame_ticks = max(1, frame_ticks)
        self.jump_ticks = jump_ticks
        self._offset = 0
        self._last_in_dts: int | None = None
        self._last_out_dts: int | None = None
        self._pending: list[tuple[object, int | None, int]] = []
        self.out_pts = 0
        """The clean PTS of the packet `advance` last stamped."""

    def advance(self, pts: int | None, dts: int) -> int | None:
        """The fast path for the usual packet: nothing held, both timestamps present, DTS a
        little after the previous one. Returns its clean DTS (its clean PTS is then in
        `out_pts`), or None, leaving the state untouched, when `push` must handle it."""
        last_in = self._last_in_dts
        if pts is None or last_in is None or self._pending:
            return None
        delta = dts - last_in
        if delta <= 0 or delta > self.jump_ticks:
            return None
        out_dts = dts + self._offset
        last_out = self._last_out_dts
        if last_out is None or out_dts <= last_out:
            return None
        out_pts = pts + self._offset
        self.out_pts = out_pts if out_pts > out_dts else out_dts
        self._last_in_dts = dts
        self._last_out_dts = out_dts
        return out_dts

    def push(
        self, item: object, pts: int | None, dts: int | None, duration: int
    ) -> list[tuple[object, Stamped]]:
        """Feed one packet; returns the packets (maybe earlier held ones) now stamped."""
        if dts is None:
            if self._last_in_dts is None:
                # Nothing to count from yet: hold it (FFmpeg gives the first keyframe no
                # timestamp, and a B-frame stream's next packets a PTS but no DTS).
                self._pending.append((item, pts, duration))
                if len(self._pending) < MAX_HELD:
                    return []
                return self._release(None)
            # Mid-stream: the smallest step forward keeps decode order; PTS is kept.
            dts = self._last_in_dts + (1 if pts is not None else self.frame_ticks)
            if pts is None:
                pts = dts
        if pts is None:
            pts = dts
        out = self._release(dts) if self._pending else []
        out.append(self._stamp(item, pts, dts, duration))
        return out

    def _release(self, next_dts: int | None) -> list[tuple[object, Stamped]]:
        """Stamp held packets one frame apart, ending one frame before `next_dts` (or, if no
        DTS ever came, from their own PTS)."""
        held, self._pending = self._pending, []
        out: list[tuple[object, Stamped]] = []
        n = len(held)
        for i, (held_item, held_pts, held_dur) in enumerate(held):
            if next_dts is not None:
                d = next_dts - (n - i) * self.frame_ticks
            elif held_pts is not None:
                d = held_pts
            else:
                d = (self._last_in_dts or 0) + self.frame_ticks
            p = held_pts if held_pts is not None and held_pts >= d else d
            out.append(self._stamp(held_item, p, d, held_dur))
        return out

    def _stamp(self, item: object, pts: int, dts: int, duration: int) -> tuple[object, Stamped]:
        jump = 0
        if self._last_in_dts is not None and self._last_out_dts is not None:
            delta = dts - self._last_in_dts
            if delta > self.jump_ticks or delta <= -self.frame_ticks:
                # Continue the clean timeline one frame after the last packet.
                jump = delta
                self._offset = self._last_out_dts + self.frame_ticks - dts
        out_dts = dts + self._offset
        out_pts = pts + self._offset
        if self._last_out_dts is not None and out_dts <= self._last_out_dts:
            shift = self._last_out_dts + 1 - out_dts
            out_dts += shift
            out_pts = max(out_pts, out_dts)
        if out_pts < out_dts:
            out_pts = out_dts
        self._last_in_dts = dts
        self._last_out_dts = out_dts
        return item, Stamped(out_pts, out_dts, duration or self.frame_ticks, jump)

    @property
    def last_dts(self) -> int | None:
        return self._last_out_dts
