"""`FailureLog`: how a camera's failures reach the log (R1: someone must hear of an outage, but
a dead camera must not bury everything else). The first failure of an outage is a WARNING at
once, and so is a change of cause; the same failure repeating is summarised (attempts, time
down, the last error) after 1, 5, 15 and then every 60 minutes; recovery is one INFO line
with what the outage took. Runs on the camera's recorder thread (one instance per recorder).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

SUMMARY_AFTER_S = (60.0, 300.0, 900.0, 3600.0)
"""When repeats are summarised, counted from the previous line (the last repeats)."""


def _span(seconds: float) -> str:
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


class FailureLog:
    def __init__(self, log: logging.Logger, camera: str, monotonic: Callable[[], float]) -> None:
        self._log = log
        self._camera = camera
        self._monotonic = monotonic
        self._attempts = 0
        """Failed attempts in the current outage (0: none)."""
        self._since = 0.0
        self._cause = ""
        self._quiet = 0
        """Failures since the last line."""
        self._next = 0.0
        self._step = 0

    def failed(self, cause: str, detail: str) -> None:
        now = self._monotonic()
        self._attempts += 1
        if self._attempts == 1 or cause != self._cause:
            if self._attempts == 1:
                self._since = now
            self._log.warning("camera %s: %s (%s)", self._camera, cause, detail)
            self._cause = cause
            self._quiet = 0
            self._step = 0
            self._next = now + SUMMARY_AFTER_S[0]
            return
        self._quiet += 1
        if now < self._next:
            return
        self._step = min(self._step + 1, len(SUMMARY_AFTER_S) - 1)
        wait = SUMMARY_AFTER_S[self._step]
        self._log.warning(
            "camera %s: still down after %s, %d failed attempts (%d since the last report), "
            "last: %s (%s); next report in %s unless it changes",
            self._camera,
            _span(now - self._since),
            self._attempts,
            self._quiet,
            cause,
            detail,
            _span(wait),
        )
        self._quiet = 0
        self._next = now + wait

    def recovered(self) -> None:
        if self._attempts:
            self._log.info(
                "camera %s: recording again after %s down, %d failed attempt%s",
                self._camera,
                _span(self._monotonic() - self._since),
                self._attempts,
                "" if self._attempts == 1 else "s",
            )
        else:
            self._log.info("camera %s: recording again", self._camera)
        self._attempts = 0
        self._cause = ""
