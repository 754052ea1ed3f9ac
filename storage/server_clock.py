"""The server's clock: the kernel's synchronisation state through `adjtimex(2)` in read-only
mode (the unsynchronised flag, the estimated and maximum error). Cheap; any thread.

It lives in `storage` because the clock evidence (`storage.clock`) needs it to judge a gap
across a reboot; the time checks above (`ingest.timecheck`), health (`api.health`) and
`nvr status` read it from here. Imports nothing of the project.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Any

TIME_ERROR = 5
"""adjtimex(2) return value: the clock is not synchronised."""
STA_UNSYNC = 0x0040
STA_NANO = 0x2000
_STATES = {0: "ok", 1: "leap second insert", 2: "leap second delete", 3: "leap second", 4: "wait"}


class _Timex(ctypes.Structure):
    """`struct timex` of Linux (LP64: every field a C long except modes, status, shift, tai)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


@dataclass(frozen=True)
class ServerClockState:
    """The kernel's view of the server clock's synchronisation."""

    synchronised: bool
    state: str
    """ok | wait | leap second ... | unsynchronised"""
    est_error_s: float
    """The kernel's estimated error (set by the NTP daemon)."""
    max_error_s: float
    """The kernel's maximum error; it grows by 500 ppm while nothing disciplines the clock."""
    offset_s: float
    """The offset the kernel is still slewing away."""

    def describe(self) -> str:
        if not self.synchronised:
            return (
                f"NOT synchronised (maximum error {self.max_error_s:.3f} s); "
                "start or fix the NTP service (chrony, systemd-timesyncd)"
            )
        return f"synchronised (estimated error {self.est_error_s * 1000:.1f} ms)"


def server_clock_state(
    ret: int, status: int, esterror_us: int, maxerror_us: int, offset: int
) -> ServerClockState:
    """Interpret adjtimex(2)'s answer (pure; `offset` in ns with STA_NANO, else in µs)."""
    unsynced = ret == TIME_ERROR or bool(status & STA_UNSYNC)
    scale = 1e-9 if status & STA_NANO else 1e-6
    return ServerClockState(
        synchronised=not unsynced,
        state="unsynchronised" if unsynced else _STATES.get(ret, f"state {ret}"),
        est_error_s=esterror_us / 1e6,
        max_error_s=maxerror_us / 1e6,
        offset_s=offset * scale,
    )


_libc: Any = None


def read_server_clock() -> ServerClockState:
    """Read the kernel's synchronisation state (adjtimex with modes 0 changes nothing and needs
    no privilege). Raises OSError if the call fails (e.g. forbidden by a seccomp filter)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    ret = int(_libc.adjtimex(ctypes.byref(tx)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {err}")
    return server_clock_state(ret, tx.status, tx.esterror, tx.maxerror, tx.offset)
