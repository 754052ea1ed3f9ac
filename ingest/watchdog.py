"""Media-level stall detection for RTSP connections.

FFmpeg's socket `timeout` only fires when the socket is silent. A hung camera often keeps
sending RTCP sender reports while no media flows, so the socket stays readable and FFmpeg's
read never returns. This module finds the connection's socket (once, after it is opened) and,
when no media packet arrived for `stall_seconds`, shuts it down with `shutdown(2)` on a
duplicate of its descriptor. FFmpeg's blocked read then returns on the recorder thread, which
closes the container itself. Nothing is closed or freed from another thread: `shutdown`
leaves the descriptor and FFmpeg's memory alone.

Threads: one daemon thread (`stall-watchdog`) shared by every recorder checks twice a
second. Recorders call `register`/`unregister` and store each packet's timestamp from their own
threads; a lock per
connection makes sure a descriptor is only used while its container is still open.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("nvr.ingest.watchdog")

_open_locks: dict[tuple[str, int], threading.Lock] = {}
_open_locks_guard = threading.Lock()


def endpoint_lock(host: str, port: int) -> threading.Lock:
    """Serialises opens to one endpoint so the socket each open creates is unambiguous."""
    with _open_locks_guard:
        return _open_locks.setdefault((host, port), threading.Lock())


def socket_fds() -> dict[int, int]:
    """This process's socket descriptors: {inode: fd}."""
    out: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(name)
    return out


def _tcp_inodes_to(port: int) -> set[int]:
    """Inodes of TCP sockets whose remote port is `port` (IPv4 and IPv6)."""
    inodes: set[int] = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    remote = cols[2]
                    if int(remote.rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(cols[9]))
        except OSError:
            continue
    return inodes


class SocketCapture:
    """Finds the TCP socket that one `av.open` creates, holding the endpoint's lock only
    until that socket exists (FFmpeg connects before the RTSP handshake), so cameras behind
    one host and port connect in parallel and a hanging handshake blocks nobody.

    Use as `with SocketCapture(host, port) as cap: av.open(...)`, then `cap.fd`. A helper
    thread polls /proc every 5 ms while the open runs and releases the lock."""

    def __init__(self, host: str, port: int) -> None:
        self._lock = endpoint_lock(host, port)
        self._port = port
        self._done = threading.Event()
        self._found: tuple[int, int] | None = None  # (inode, fd)
        self._thread: threading.Thread | None = None
        self._before: dict[int, int] = {}

    def __enter__(self) -> SocketCapture:
        self._lock.acquire()
        self._before = socket_fds()
        self._thread = threading.Thread(target=self._poll, name="socket-capture", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        try:
            while not self._done.is_set():
                fresh = {ino: fd for ino, fd in socket_fds().items() if ino not in self._before}
                if fresh:
                    matching = [
                        (ino, fd) for ino, fd in fresh.items() if ino in _tcp_inodes_to(self._port)
                    ]
                    if len(matching) == 1:
                        self._found = matching[0]
                        return
                self._done.wait(0.005)
        finally:
            self._lock.release()

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def fd(self) -> int | None:
        """The connection's descriptor, if it was seen and is still that socket."""
        if self._found is None:
            return find_new_socket(self._before, self._port)
        inode, fd = self._found
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"socket:[{inode}]":
                return fd
        except OSError:
            pass
        return find_new_socket(self._before, self._port)  # e.g. after an RTSP redirect


def find_new_socket(before: dict[int, int], port: int) -> int | None:
    """The descriptor of the TCP socket to `port` created since `before` was taken."""
    now = socket_fds()
    fresh = {ino: fd for ino, fd in now.items() if ino not in before}
    to_port = _tcp_inodes_to(port)
    candidates = [fd for ino, fd in fresh.items() if ino in to_port]
    if len(candidates) != 1:
        log.warning(
            "cannot identify the stream's socket (%d new sockets, %d to port %d, %d matching)",
            len(fresh),
            len(to_port),
            port,
            len(candidates),
        )
        return None
    return candidates[0]


@dataclass(eq=False)
class Watched:
    """One open connection under watch.

    The recorder thread only stores, for each video packet FFmpeg hands over, its timestamp
    (`ts`, ticks of `time_base`) and bumps `seen`: two plain attribute stores, no clock read.
    The watchdog thread turns those into the capture time of the newest media, twice a
    second: FFmpeg's parser may hold the last frame until any later packet (even RTCP)
    arrives, so a frame can be handed over seconds after it was received; its capture time
    is the connection's anchor (the earliest observation time minus media time) plus its
    media time, which stays old for such a late frame.
    """

    name: str
    fd: int
    stall_seconds: float
    time_base: float | None = None
    ts: int | None = None
    seen: int = 0
    fired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    open: bool = True
    last_media: float = field(default_factory=time.monotonic)
    """Monotonic capture time of the newest media (watchdog thread)."""
    _seen_before: int = 0
    _anchor: float | None = None
    _media: float | None = None

    def observe(self, now: float) -> float:
        """Fold what the recorder stored since the last call into `last_media` (watchdog
        thread) and return it."""
        seen, ts = self.seen, self.ts
        if seen == self._seen_before:
            return self.last_media
        self._seen_before = seen
        if ts is None or self.time_base is None:
            capture = now
        else:
            media = ts * self.time_base
            anchor = now - media
            if self._anchor is None or self._media is None or abs(media - self._media) > 2.0:
                self._anchor = anchor  # the first media, or a timestamp jump
            elif anchor < self._anchor:
                self._anchor = anchor
            self._media = media
            capture = self._anchor + media
        if capture > self.last_media:
            self.last_media = capture
        return self.last_media

    def close(self) -> None:
        """Called by the recorder thread before it closes the container."""
        with self.lock:
            self.open = False


class StallWatchdog:
    """Shuts down the socket of any watched connection that stopped delivering media."""

    def __init__(self, interval: float = 0.5) -> None:
        self._interval = interval
        self._watched: set[Watched] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def register(
        self, name: str, fd: int, stall_seconds: float, time_base: float | None = None
    ) -> Watched:
        entry = Watched(name, fd, stall_seconds, time_base)
        with self._guard:
            self._watched.add(entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="stall-watchdog", daemon=True
                )
                self._thread.start()
        return entry

    def unregister(self, entry: Watched) -> None:
        entry.close()
        with self._guard:
            self._watched.discard(entry)

    def _run(self) -> None:
        # An Event's wait, not time.sleep: under libfaketime (the clock-step tests and
        # `bench.crash --scenario clock-step`) time.sleep fails with EINVAL, which ended this
        # thread and with it stall detection for every camera read by FFmpeg's demuxer.
        tick = threading.Event()
        while True:
            tick.wait(self._interval)
            now = time.monotonic()
            with self._guard:
                entries = list(self._watched)
            for entry in entries:
                if not entry.fired and now - entry.observe(now) > entry.stall_seconds:
                    self._fire(entry)

    @staticmethod
    def _fire(entry: Watched) -> None:
        with entry.lock:
            if not entry.open:
                return
            entry.fired = True
            try:
                dup = socket.socket(fileno=os.dup(entry.fd))
            except OSError as err:
                log.error("camera %s: cannot interrupt stalled stream: %s", entry.name, err)
                return
            try:
                dup.shutdown(socket.SHUT_RDWR)
            except OSError as err:
                log.error("camera %s: shutdown of stalled stream failed: %s", entry.name, err)
            finally:
                dup.close()
        log.warning(
            "camera %s: no media for %.1f s; interrupting the connection",
            entry.name,
            entry.stall_seconds,
        )


WATCHDOG = StallWatchdog()
"""The process-wide watchdog."""
