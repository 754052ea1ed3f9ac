"""Steps of the server's wall clock under a running recorder: `ClockStepDetector` compares the
wall clock's progress with the monotonic clock's; a step larger than `STEP_THRESHOLD_MS` is a
`ClockStep`, which the recorder writes to the outage ledger (cause `clock-step`). Pure; the
recorder feeds it on its own thread. Imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_THRESHOLD_MS = 1000
"""A server clock step larger than this goes into the outage ledger (`clock-step`)."""
CLOCK_STEP = "clock-step"
"""Outage-ledger cause of a server clock step."""


@dataclass(frozen=True)
class ClockStep:
    """The server's wall clock moved by `step_ms` more than the monotonic clock did."""

    at_ms: int
    """Wall-clock time right after the step."""
    step_ms: int

    @property
    def span(self) -> tuple[int, int]:
        """The stretch of wall-clock time the step jumped over (forward) or will replay
        (backward), as the ledger row's start and end."""
        before = self.at_ms - self.step_ms
        return min(before, self.at_ms), max(before, self.at_ms)

    def describe(self) -> str:
        if self.step_ms > 0:
            return (
                f"server clock stepped forward {self.step_ms / 1000:.3f} s; "
                "no footage is missing in this span"
            )
        return (
            f"server clock stepped back {-self.step_ms / 1000:.3f} s; segments continue from "
            "the previous end (never overlapping), so their times run ahead of the server "
            "clock by up to the step until the next gap absorbs it"
        )


class ClockStepDetector:
    """Notices steps of the wall clock: between two samples the wall clock must advance as the
    monotonic clock does, give or take the kernel's slewing (at most 500 ppm)."""

    def __init__(self, threshold_ms: int = STEP_THRESHOLD_MS, slew_ppm: float = 500.0) -> None:
        self._threshold = threshold_ms
        self._slew = slew_ppm / 1e6
        self._last: tuple[int, float] | None = None

    def sample(self, wall_ms: int, mono_s: float) -> ClockStep | None:
        last, self._last = self._last, (wall_ms, mono_s)
        if last is None:
            return None
        elapsed_ms = (mono_s - last[1]) * 1000
        step = wall_ms - last[0] - elapsed_ms
        if abs(step) <= self._threshold + self._slew * elapsed_ms:
            return None
        return ClockStep(at_ms=wall_ms, step_ms=round(step))
