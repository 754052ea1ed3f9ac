"""The service manager's end of NOTIFY_SOCKET, for tests and the soak benchmark: a datagram
socket standing in for systemd, read on a helper thread (`notify-listener`)."""

from __future__ import annotations

import socket
import threading
import time

from nvr.sdnotify import socket_address


class NotifyListener:
    """A datagram socket standing in for systemd: records (monotonic time, fields) per message."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = socket_address(address)
        assert bound is not None
        self.sock.bind(bound)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode().split("\n")))
                self._cond.notify_all()

    def wait_for(self, field: str, timeout: float, after: float = 0.0) -> float:
        """When a message with `field` (exact, or a prefix ending in '=') arrived after
        `after`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, fields in self.messages:
                    if at > after and any(_matches(f, field) for f in fields):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f for _, fs in self.messages[-10:] for f in fs]
                    raise AssertionError(f"no {field!r} within {timeout} s; last: {seen}")
                self._cond.wait(left)

    def times(self, field: str, start: float = 0.0, end: float = float("inf")) -> list[float]:
        with self._cond:
            return [
                at
                for at, fields in self.messages
                if start <= at <= end and any(_matches(f, field) for f in fields)
            ]

    def fields(self, prefix: str) -> list[str]:
        with self._cond:
            return [f for _, fs in self.messages for f in fs if f.startswith(prefix)]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


def _matches(value: str, field: str) -> bool:
    return value.startswith(field) if field.endswith("=") else value == field
