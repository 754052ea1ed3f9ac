"""The event bus: alerts out (issue 16, item 3).

Owns `Event` (what happened: a camera's state or outage, the storage forecast, a clock warning,
an export request's decision, a camera's picture raised or cleared), `Outbox` (one destination's
bounded queue: when it is full the oldest event is dropped and counted, so a destination that
stays down never costs more than `queue_size` events of memory) and `EventBus` (fans each event
out to every destination's outbox, keeps the latest state of each camera and of the storage
forecast for retained MQTT topics, and collects each destination's trouble for `/api/health` and
`nvr status`).

Thread model: `EventBus.emit` is called from recorder threads (`rec-<camera>`), the clock
thread (`clock-check`), worker threads of the retention service and the API's routes on the
event loop. It never blocks and never waits for a destination: it takes a lock for a deque
append and wakes the consumers (a `threading.Event` for the webhook threads,
`loop.call_soon_threadsafe` for the MQTT task). The consumers are `nvr.webhooks` (one
thread per webhook) and `nvr.mqtt` (a task on the daemon's loop).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nvr.storage.timestamps import iso, now_ms

log = logging.getLogger("nvr.events")

CAMERA_STATE = "camera-state"
"""data: state, previous, detail, since (a recorder's state changed)."""
CAMERA_OUTAGE = "camera-outage"
"""data: phase (`began` | `ended`), cause, detail, start, end (the outage ledger)."""
CAMERA_REMOVED = "camera-removed"
"""data: reason (a reload took the camera out of the config: no more retained topics)."""
STORAGE = "storage-forecast"
"""data: state (ok | warning | critical | unknown), forecast_days, window_days, detail."""
CLOCK = "clock"
"""data: state (warning | ok), source, offset_seconds, limit_seconds (camera None: server)."""
EXPORT = "export"
"""data: id, state (pending | approved | rejected | cancelled), actor, start, end."""
PICTURE = "picture"
"""data: state (covered | defocused | repointed | frozen | no-signal when raised; ok or
learning when cleared), previous, since, score, detail, snapshot (issue 18,
`ingest.picture.monitor`)."""

_ids = itertools.count(1)


def iso_ms(ms: int | None) -> str | None:
    """Milliseconds since the epoch as the project's ISO 8601 UTC text (None stays None)."""
    return None if ms is None else iso(ms)


@dataclass(frozen=True)
class Event:
    kind: str
    camera: str | None
    data: dict[str, Any]
    at_ms: int = field(default_factory=now_ms)
    id: int = field(default_factory=lambda: next(_ids))

    def body(self, site: str) -> dict[str, Any]:
        """The JSON document sent to webhooks and (as payload) to MQTT."""
        out: dict[str, Any] = {
            "id": self.id,
            "site": site,
            "kind": self.kind,
            "at": iso_ms(self.at_ms),
        }
        if self.camera is not None:
            out["camera"] = self.camera
        out.update(self.data)
        return out


class Outbox:
    """One destination's queue. `put` from any thread, never blocking; when full the oldest
    event goes and `dropped` counts it. The consumer peeks at the head, delivers it, then
    `pop`s it (so an event that failed stays first and is retried)."""

    def __init__(self, size: int) -> None:
        self._events: deque[Event] = deque()
        self._size = size
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []
        self.dropped = 0
        """Events dropped because the queue was full, since the start."""
        self.dropped_unreported = 0
        """Of those, how many the destination has not been told about yet."""

    def add_waker(self, wake: Callable[[], None]) -> None:
        """`wake()` is called (on the emitting thread, must not block) after each put."""
        self._wakers.append(wake)

    def put(self, event: Event) -> None:
        with self._lock:
            if len(self._events) >= self._size:
                self._events.popleft()
                self.dropped += 1
                self.dropped_unreported += 1
            self._events.append(event)
        for wake in self._wakers:
            wake()

    def head(self) -> Event | None:
        with self._lock:
            return self._events[0] if self._events else None

    def pop(self, event: Event) -> None:
        """Remove `event` once delivered (unless the queue dropped it meanwhile)."""
        with self._lock:
            if self._events and self._events[0] is event:
                self._events.popleft()

    def take_dropped(self) -> int:
        """How many were dropped since the last call (to tell the destination)."""
        with self._lock:
            n, self.dropped_unreported = self.dropped_unreported, 0
            return n

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


@dataclass
class DestinationState:
    """What `/api/health` and `nvr status` show of one destination."""

    name: str
    """`mqtt mqtt://host:port` or `webhook https://host/path` (no secrets)."""
    ok: bool = True
    problem: str = ""
    since_ms: int = 0
    queued: int = 0
    dropped: int = 0
    delivered: int = 0


class EventBus:
    """Fans events out to the destinations' outboxes; keeps the latest retained states."""

    def __init__(self, site: str, queue_size: int = 1000) -> None:
        self.site = site
        self.queue_size = queue_size
        self._outboxes: list[Outbox] = []
        self._lock = threading.Lock()
        self._states: dict[str, Event] = {}
        self._storage: Event | None = None
        self._destinations: dict[str, tuple[DestinationState, Outbox]] = {}

    def outbox(self, destination: str) -> Outbox:
        """A new destination's outbox (before events flow: at daemon start)."""
        box = Outbox(self.queue_size)
        with self._lock:
            self._outboxes.append(box)
            self._destinations[destination] = (DestinationState(destination), box)
        return box

    def emit(self, kind: str, camera: str | None, data: dict[str, Any]) -> None:
        """Queue an event for every destination. Any thread; never blocks."""
        event = Event(kind, camera, data)
        with self._lock:
            if kind == CAMERA_STATE and camera is not None:
                self._states[camera] = event
            elif kind == CAMERA_REMOVED and camera is not None:
                self._states.pop(camera, None)
            elif kind == STORAGE:
                self._storage = event
            boxes = list(self._outboxes)
        for box in boxes:
            box.put(event)

    def camera_states(self) -> dict[str, Event]:
        """The latest state event of each camera (retained topics, Home Assistant)."""
        with self._lock:
            return dict(self._states)

    def storage_state(self) -> Event | None:
        with self._lock:
            return self._storage

    # --- destinations' health, written by the publishers, read by health and status ------

    def delivered(self, destination: str) -> None:
        """A delivery succeeded: the destination is up (logged when it recovers)."""
        with self._lock:
            state = self._destinations[destination][0]
            was_down = not state.ok
            state.ok, state.problem = True, ""
            state.delivered += 1
        if was_down:
            log.warning("events: %s reachable again", destination)

    def failed(self, destination: str, problem: str) -> None:
        """A delivery or connection failed: a health reason until the next success."""
        with self._lock:
            state = self._destinations[destination][0]
            first = state.ok
            if first:
                state.since_ms = now_ms()
            state.ok, state.problem = False, problem
        if first:
            log.warning("events: %s unreachable: %s (retrying with back-off)", destination, problem)

    def destinations(self) -> list[DestinationState]:
        """A snapshot of every destination (queued and dropped counts filled in)."""
        with self._lock:
            items = list(self._destinations.values())
        out = []
        for state, box in items:
            with self._lock:
                copy = DestinationState(**vars(state))
            copy.queued = len(box)
            copy.dropped = box.dropped
            out.append(copy)
        return out

    def problems(self) -> list[str]:
        """One line per destination that is down, for health reasons."""
        out = []
        for d in self.destinations():
            if not d.ok:
                lost = f", {d.dropped} events dropped" if d.dropped else ""
                out.append(
                    f"events: {d.name} unreachable since {iso_ms(d.since_ms)}: {d.problem} "
                    f"({d.queued} queued{lost})"
                )
        return out
