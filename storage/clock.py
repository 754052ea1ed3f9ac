"""Evidence of time for retention (R2, R4): how much real time has passed, judged from what a
step of the wall clock cannot fake alone. Pure functions and value types, plus the kernel
readings they are fed with: uptime, the boot id, and the sync state (`storage.server_clock`);
cheap, any thread. The design is written down in `docs/retention-clock.md`.

- *Uptime* is the kernel's boot-time clock, read from `/proc/uptime`: it counts from boot and
  nothing but a reboot resets it. Setting the date, an NTP step or libfaketime's fake clocks
  (which replace `clock_gettime`, CLOCK_MONOTONIC and CLOCK_BOOTTIME included) do not move it.
- *Evidence time* (`elapsed`, ms) is a store-wide counter of real time that is proven: uptime
  while a recorder runs, the uptime between two runs of one boot, and across a reboot the
  wall-clock gap only when the clock was synchronised on both sides (else nothing). Every
  segment is stamped with it when indexed, so its proven age is `elapsed now - its stamp`:
  never more than its real age, whatever the wall clock did.
- A *step* is the wall clock moving against uptime (beyond `TOLERANCE_MS` plus 500 ppm of
  slew): between a recorder's heartbeats, between runs of one boot, or between the
  recorder's last heartbeat and another process (`nvr purge` under a wrong clock). Going back
  across a reboot is a step too; going forward across one cannot be told from downtime.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

from nvr.storage.server_clock import read_server_clock
from nvr.storage.timestamps import DAY_MS

TOLERANCE_MS = 60_000
"""Disagreement between the wall clock and uptime taken as a step (plus `SLEW_PPM`)."""
SLEW_PPM = 500
"""The most the kernel slews a clock (adjtimex's limit): not a step."""
HEARTBEAT_WRITE_MS = 10_000
"""A recorder writes its run's last-seen times at most this often (and at once on a change
of synchronisation or a step)."""

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_UPTIME = "/proc/uptime"
_fallback_boot = f"unknown-{uuid.uuid4()}"


def read_boot_id() -> str:
    """The kernel's id of this boot (unreadable: an id of this process alone, so nothing
    is taken as proven across it)."""
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            return f.read().strip() or _fallback_boot
    except OSError:
        return _fallback_boot


def read_uptime_ms() -> int:
    """Milliseconds since boot by the kernel's boot-time clock (`/proc/uptime`)."""
    try:
        with open(_UPTIME, encoding="ascii") as f:
            return round(float(f.read().split()[0]) * 1000)
    except (OSError, ValueError, IndexError):
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000


def read_synchronised() -> bool:
    """Whether the kernel says the clock is synchronised (adjtimex); False if unreadable."""
    try:
        return read_server_clock().synchronised
    except OSError:
        return False


def tolerance(elapsed_ms: int) -> int:
    """The largest disagreement between wall clock and uptime over `elapsed_ms` not taken as
    a step."""
    return TOLERANCE_MS + abs(elapsed_ms) * SLEW_PPM // 1_000_000


@dataclass(frozen=True)
class Reading:
    """One look at the clocks: wall (UTC ms), uptime (ms since boot), boot, sync state."""

    wall_ms: int
    uptime_ms: int
    boot_id: str
    synchronised: bool

    @property
    def offset_ms(self) -> int:
        """Wall clock minus uptime: constant over one boot unless the wall clock steps."""
        return self.wall_ms - self.uptime_ms


@dataclass(frozen=True)
class RunMark:
    """A recorder run as last seen in the index (`runs`)."""

    id: int
    boot_id: str
    pid: int
    started_wall_ms: int
    started_uptime_ms: int
    last_wall_ms: int
    last_uptime_ms: int
    elapsed_start_ms: int
    synchronised: bool

    @property
    def elapsed_last_ms(self) -> int:
        return self.elapsed_start_ms + (self.last_uptime_ms - self.started_uptime_ms)

    @property
    def offset_ms(self) -> int:
        return self.last_wall_ms - self.last_uptime_ms


def step_since(mark: RunMark, now: Reading) -> int | None:
    """The wall clock's step between `mark`'s last heartbeat and `now` (ms, + forward), or
    None if there is none to see. One boot: against uptime. Across a reboot only a step back
    (the wall clock earlier than it was last seen) can be told from downtime."""
    if mark.boot_id == now.boot_id and now.uptime_ms >= mark.last_uptime_ms:
        step = now.offset_ms - mark.offset_ms
        if abs(step) > tolerance(now.uptime_ms - mark.last_uptime_ms):
            return step
        return None
    if now.wall_ms < mark.last_wall_ms - TOLERANCE_MS:
        return now.wall_ms - mark.last_wall_ms
    return None


def elapsed_after(mark: RunMark | None, now: Reading) -> int:
    """Evidence time at `now`, continuing from the last run `mark` (0 for the first run).

    One boot: what uptime proves. A reboot: the wall-clock gap only if the clock was
    synchronised at both ends (and then never less than nothing); else no time at all, so
    footage from before a reboot is kept longer by the downtime, never deleted earlier."""
    if mark is None:
        return 0
    if mark.boot_id == now.boot_id and now.uptime_ms >= mark.last_uptime_ms:
        return mark.elapsed_last_ms + (now.uptime_ms - mark.last_uptime_ms)
    gap = now.wall_ms - mark.last_wall_ms if mark.synchronised and now.synchronised else 0
    return mark.elapsed_last_ms + max(0, gap)


def describe_step(step_ms: int) -> str:
    days = abs(step_ms) / DAY_MS
    size = f"{days:.1f} days" if days >= 1 else f"{abs(step_ms) / 1000:.0f} s"
    return f"{'forward' if step_ms > 0 else 'back'} {size}"


@dataclass(frozen=True)
class ClockHold:
    """Purging held back because the wall clock stepped (`clock_holds`)."""

    id: int
    at_ms: int
    step_ms: int
    detail: str


@dataclass(frozen=True)
class ClockVerdict:
    """Whether a purge may run now, and on what evidence."""

    held: bool
    reason: str
    """Why purging is held back (empty when it is not)."""
    advice: str
    """What the operator must do (empty when nothing)."""
    synchronised: bool
    elapsed_ms: int
    """Evidence time now."""
    hold: ClockHold | None = None

    def describe(self) -> str:
        if self.held:
            return f"purging HELD BACK: {self.reason}. {self.advice}"
        if self.synchronised:
            return (
                "purging by the wall clock (synchronised), only footage that the recorder's "
                "uptime evidence also proves older than its window"
            )
        return (
            "server clock not synchronised: footage is purged once the recorder's uptime "
            "evidence proves it older than its window"
        )


def confirm_advice(stable_s: int) -> str:
    minutes = stable_s / 60
    return (
        "Check the server clock, then run `nvr purge --i-confirm-clock --reason TEXT`; "
        f"or synchronise it (NTP) and it is trusted again after {minutes:g} stable minutes"
    )


def this_pid() -> int:
    return os.getpid()
