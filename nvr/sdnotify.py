"""The systemd notification protocol (sd_notify), written out: no libsystemd needed.

Owns the datagram socket to the service manager (`$NOTIFY_SOCKET`: a filesystem path, or an
abstract socket written with a leading `@`) and what the manager told us about its watchdog
(`$WATCHDOG_USEC`, and `$WATCHDOG_PID` naming the process it watches). Outside systemd there is
no `$NOTIFY_SOCKET` and every call is a no-op, so the daemon runs the same everywhere.

Runs on the event loop: a send is one non-blocking `sendto` of a few bytes. It never raises
into the daemon: a manager that is gone or busy costs a notification, never a recording.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("nvr.sdnotify")


def socket_address(value: str) -> str | bytes | None:
    """The `sendto` address for a `$NOTIFY_SOCKET` value, or None if it is not one we can
    use (empty, or a transport other than AF_UNIX such as `vsock:`)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(env: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout the manager set for process `pid` (WatchdogSec=), or None.

    `$WATCHDOG_PID`, when present, must name `pid`: the variables may have been inherited
    from a parent that is the one being watched."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000


def one_line(text: str) -> str:
    """A STATUS= value: the protocol is one `KEY=VALUE` per line."""
    return " ".join(text.split())


class Notifier:
    """Sends `KEY=VALUE` notifications to the service manager (or nothing without one)."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self._address = address
        self.watchdog = watchdog if address is not None else None
        """The manager's watchdog timeout in seconds (ping at least twice per timeout)."""
        self._sock: socket.socket | None = None
        self._failed = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        """The notifier systemd asked for through the environment (`os.environ` by default)."""
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET %r is not an AF_UNIX socket; not notifying", raw)
        return cls(address, watchdog_seconds(env, pid) if address is not None else None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def ping_interval(self) -> float | None:
        """How often to send WATCHDOG=1: half the watchdog timeout, as systemd advises."""
        return None if self.watchdog is None else self.watchdog / 2

    def send(self, *fields: str) -> bool:
        """Send one notification made of `KEY=VALUE` fields; True if it was handed over."""
        if self._sock is None or self._address is None:
            return False
        data = "\n".join(fields).encode("utf-8", "replace")
        try:
            self._sock.sendto(data, self._address)
        except BlockingIOError:
            log.debug("service manager's queue is full; notification dropped")
            return False
        except OSError as err:
            if not self._failed:  # say it once, not on every watchdog ping
                log.warning("cannot notify the service manager: %s", err)
                self._failed = True
            return False
        if self._failed:
            log.info("notifying the service manager again")
            self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", "STATUS=" + one_line(status))

    def status(self, status: str) -> bool:
        return self.send("STATUS=" + one_line(status))

    def reloading(self, status: str) -> bool:
        """RELOADING=1 (with the monotonic time systemd asks for); READY=1 must follow."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=" + one_line(status))

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", "STATUS=" + one_line(status))

    def ping(self) -> bool:
        """WATCHDOG=1: the caller vouches that the daemon is healthy right now."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
