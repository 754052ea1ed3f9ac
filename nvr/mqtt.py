"""MQTT (`[events] mqtt = "mqtt://host:1883"`): events to a broker, and Home Assistant
discovery.

Owns `MqttPublisher`, a task on the daemon's event loop using aiomqtt (asyncio; no thread of
its own). It keeps one connection with a last will: `nvr/<site>/availability` is `online`
(retained) while connected and the broker publishes `offline` (retained) when the daemon dies
without saying goodbye; a clean stop publishes `offline` itself. Topics:

- `nvr/<site>/camera/<name>/state`   retained: the recorder's state (JSON)
- `nvr/<site>/camera/<name>/outage`  an outage began or ended (the ledger)
- `nvr/<site>/camera/<name>/clock`   retained: the camera's clock warning, or ok
- `nvr/<site>/camera/<name>/picture` retained: the picture raised (covered, defocused,
  repointed, frozen, no-signal) or cleared (issue 18)
- `nvr/<site>/clock`                 retained: the server clock's synchronisation warning
- `nvr/<site>/storage`               retained: the storage forecast (ok/warning/critical)
- `nvr/<site>/export`                an export request waits for approval, or was decided
- `<prefix>/binary_sensor/nvr_<site>/<name>/config` retained Home Assistant discovery: each
  camera a `connectivity` binary sensor (on while recording), and the storage forecast a
  `problem` sensor, and per camera a picture `problem` sensor (`<name>_picture`), all using
  the availability topic. A camera a reload removes has its
  retained topics emptied, so Home Assistant forgets it.

Every event is published with QoS 1 and taken from the outbox once the broker acknowledged
it; while the broker is unreachable the events wait in the bounded outbox, the publisher
reconnects with back-off (1 s doubling to 30 s) and the broker is a health reason. On each
(re)connect the retained topics are published again from the bus's latest states.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

import aiomqtt

from nvr.config.errors import ConfigError
from nvr.config.models import EventsConfig
from nvr.events import (
    CAMERA_OUTAGE,
    CAMERA_REMOVED,
    CAMERA_STATE,
    CLOCK,
    EXPORT,
    PICTURE,
    STORAGE,
    Event,
    EventBus,
)

log = logging.getLogger("nvr.events.mqtt")

BACKOFF_INITIAL = 1.0
BACKOFF_CAP = 30.0
TIMEOUT = 10.0
"""Seconds a connect or an acknowledged publish may take."""
KEEPALIVE = 30
ONLINE = "online"
OFFLINE = "offline"


class MqttPublisher:
    """Publishes the bus's events to one broker; `run()` is a task on the event loop."""

    def __init__(self, events: EventsConfig, bus: EventBus) -> None:
        host, port, tls = events.mqtt_host_port()
        self.name = f"mqtt {events.mqtt}"
        self._events = events
        self._bus = bus
        self._host, self._port, self._tls = host, port, tls
        self._site = bus.site
        self._base = f"nvr/{self._site}"
        self.availability = f"{self._base}/availability"
        self._outbox = bus.outbox(self.name)
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._outbox.add_waker(lambda: _call_soon(loop, self._wake.set))
        self._announced: set[str] = set()

    # --- topics and payloads ---------------------------------------------------------------

    def camera_topic(self, camera: str, what: str) -> str:
        return f"{self._base}/camera/{camera}/{what}"

    def discovery_topic(self, object_id: str) -> str:
        return f"{self._events.discovery_prefix}/binary_sensor/nvr_{self._site}/{object_id}/config"

    def route(self, event: Event) -> tuple[str, bool] | None:
        """(topic, retained) of an event; None if it has no topic."""
        if event.kind == CAMERA_STATE and event.camera is not None:
            return self.camera_topic(event.camera, "state"), True
        if event.kind == CAMERA_OUTAGE and event.camera is not None:
            return self.camera_topic(event.camera, "outage"), False
        if event.kind == CLOCK:
            if event.camera is None:
                return f"{self._base}/clock", True
            return self.camera_topic(event.camera, "clock"), True
        if event.kind == STORAGE:
            return f"{self._base}/storage", True
        if event.kind == EXPORT:
            return f"{self._base}/export", False
        if event.kind == PICTURE and event.camera is not None:
            return self.camera_topic(event.camera, "picture"), True
        return None

    def _device(self) -> dict[str, Any]:
        return {
            "identifiers": [f"nvr_{self._site}"],
            "name": f"NVR {self._site}",
            "manufacturer": "nvr",
            "model": "network video recorder",
        }

    def camera_discovery(self, camera: str) -> dict[str, Any]:
        """Home Assistant's discovery document of a camera: a connectivity binary sensor."""
        return self._binary_sensor(
            "Recording",
            f"{camera}_recording",
            "connectivity",
            self.camera_topic(camera, "state"),
            "{{ 'ON' if value_json.state == 'recording' else 'OFF' }}",
            {
                "identifiers": [f"nvr_{self._site}_{camera}"],
                "name": f"Camera {camera}",
                "manufacturer": "nvr",
                "model": "camera recorded by nvr",
                "via_device": f"nvr_{self._site}",
            },
        )

    def picture_discovery(self, camera: str) -> dict[str, Any]:
        """A camera's picture health (issue 18) as a problem binary sensor: on while its
        picture is covered, defocused, re-pointed, frozen or without signal."""
        return self._binary_sensor(
            "Picture",
            f"{camera}_picture",
            "problem",
            self.camera_topic(camera, "picture"),
            "{{ 'OFF' if value_json.state in ['ok', 'learning'] else 'ON' }}",
            {"identifiers": [f"nvr_{self._site}_{camera}"]},
        )

    def storage_discovery(self) -> dict[str, Any]:
        """The storage forecast as a problem binary sensor (on at warning or critical)."""
        return self._binary_sensor(
            "Storage forecast",
            "storage",
            "problem",
            f"{self._base}/storage",
            "{{ 'ON' if value_json.state in ['warning', 'critical'] else 'OFF' }}",
            self._device(),
        )

    def _binary_sensor(
        self,
        name: str,
        unique: str,
        device_class: str,
        topic: str,
        template: str,
        device: dict[str, Any],
    ) -> dict[str, Any]:
        """A Home Assistant binary sensor whose state and attributes are `topic`'s JSON,
        available while the daemon is (its will)."""
        return {
            "name": name,
            "unique_id": f"nvr_{self._site}_{unique}",
            "device_class": device_class,
            "state_topic": topic,
            "value_template": template,
            "json_attributes_topic": topic,
            "availability_topic": self.availability,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": device,
        }

    # --- the connection ----------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        context = ssl.create_default_context() if self._tls else None
        return aiomqtt.Client(
            self._host,
            self._port,
            username=self._events.username,
            password=self._events.password(),
            identifier=f"nvr-{self._site}",
            will=aiomqtt.Will(self.availability, OFFLINE, qos=1, retain=True),
            keepalive=KEEPALIVE,
            timeout=TIMEOUT,
            tls_context=context,
            clean_session=True,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, publish, reconnect with back-off, until `stop`; then say `offline`."""
        delay = BACKOFF_INITIAL
        while not stop.is_set():
            try:
                async with self._client() as client:
                    await self._connected(client)
                    delay = BACKOFF_INITIAL
                    await self._serve(client, stop)
                    await client.publish(self.availability, OFFLINE, qos=1, retain=True)
                    return
            except aiomqtt.MqttError as err:
                self._bus.failed(self.name, str(err) or type(err).__name__)
            except ConfigError as err:  # the password cannot be read (yet): tried again
                self._bus.failed(self.name, "; ".join(f"events.{p}" for p in err.problems))
            except Exception as err:  # a bug: never the end of the daemon, nor of retrying
                log.exception("events: %s failed", self.name)
                self._bus.failed(self.name, str(err) or type(err).__name__)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(BACKOFF_CAP, delay * 2)

    async def _publish(
        self, client: aiomqtt.Client, topic: str, doc: dict[str, Any] | str, retain: bool
    ) -> None:
        payload = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
        await client.publish(topic, payload, qos=1, retain=retain)

    async def _announce(self, client: aiomqtt.Client, camera: str) -> None:
        if self._events.discovery and camera not in self._announced:
            await self._publish(
                client, self.discovery_topic(camera), self.camera_discovery(camera), True
            )
            await self._publish(
                client,
                self.discovery_topic(f"{camera}_picture"),
                self.picture_discovery(camera),
                True,
            )
        self._announced.add(camera)

    async def _forget(self, client: aiomqtt.Client, camera: str) -> None:
        """A camera taken out of the config: its retained topics are emptied (which removes
        it from Home Assistant)."""
        for topic in (
            self.discovery_topic(camera),
            self.discovery_topic(f"{camera}_picture"),
            self.camera_topic(camera, "state"),
            self.camera_topic(camera, "clock"),
            self.camera_topic(camera, "picture"),
        ):
            await client.publish(topic, b"", qos=1, retain=True)
        self._announced.discard(camera)

    async def _connected(self, client: aiomqtt.Client) -> None:
        """Discovery, the retained states as they are now, then `online`."""
        self._announced.clear()
        if self._events.discovery:
            await self._publish(
                client, self.discovery_topic("storage"), self.storage_discovery(), True
            )
        for camera, event in sorted(self._bus.camera_states().items()):
            await self._announce(client, camera)
            await self._publish(
                client, self.camera_topic(camera, "state"), event.body(self._site), True
            )
        storage = self._bus.storage_state()
        if storage is not None:
            await self._publish(client, f"{self._base}/storage", storage.body(self._site), True)
        await self._publish(client, self.availability, ONLINE, True)
        self._bus.delivered(self.name)
        log.info("events: connected to %s as nvr-%s", self.name, self._site)

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Publish queued events until `stop` and the outbox is empty (the recorders' last
        states go out before `offline`); raise MqttError when the broker goes away (noticed
        by the messages iterator, which ends at a disconnection)."""
        watch = asyncio.create_task(_until_disconnected(client), name="mqtt-watch")
        try:
            while True:
                event = self._outbox.head()
                if event is None:
                    if stop.is_set():
                        return  # what was queued before the stop is out
                    self._wake.clear()
                    if self._outbox.head() is not None:
                        continue
                    waits = [asyncio.ensure_future(self._wake.wait()), watch]
                    stopping = asyncio.ensure_future(stop.wait())
                    waits.append(stopping)
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for task in waits:
                        if task is not watch and not task.done():
                            task.cancel()
                    if watch.done():
                        watch.result()  # raises the MqttError of the disconnection
                    continue
                if event.kind == CAMERA_REMOVED and event.camera is not None:
                    await self._forget(client, event.camera)
                    self._bus.delivered(self.name)
                    self._outbox.pop(event)
                    continue
                route = self.route(event)
                if route is not None:
                    if event.kind == CAMERA_STATE and event.camera is not None:
                        await self._announce(client, event.camera)
                    doc = event.body(self._site)
                    dropped = self._outbox.dropped_unreported
                    if dropped:
                        doc["dropped_before"] = dropped
                    await self._publish(client, route[0], doc, route[1])
                    if dropped:
                        self._outbox.take_dropped()
                    self._bus.delivered(self.name)
                self._outbox.pop(event)
        finally:
            if not watch.done():
                watch.cancel()


async def _until_disconnected(client: aiomqtt.Client) -> None:
    """Ends with MqttError when the connection drops (nothing is subscribed: no messages)."""
    async for _ in client.messages:
        pass


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any) -> None:
    """Wake the publisher from any thread; a closed loop (the daemon ended) is ignored."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass
