"""Alerts out (issue 16, item 3): events to the real Mosquitto on 127.0.0.1:1883 (skipped with
a reason when it is not there) and to signed webhooks on a local HTTP receiver. Real daemons
(`nvr run`) record the GStreamer camera simulator; a destination that is down never costs a
frame, and is a health reason until it is back."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from nvr.api.services import ApiContext
from nvr.config import ConfigError, NvrConfig, load_config
from nvr.config.checks import events_problems
from nvr.config.models import EventsConfig, WebhookConfig
from nvr.events import (
    CAMERA_REMOVED,
    CAMERA_STATE,
    CLOCK,
    EXPORT,
    PICTURE,
    STORAGE,
    Event,
    EventBus,
    Outbox,
)
from nvr.ingest.timecheck.notes import CameraClockReading, ClockNotes
from nvr.mqtt import MqttPublisher
from nvr.retention import RetentionService
from nvr.webhooks import WebhookSender
from tests.api_rig import (
    NVR,
    Api,
    ServerThread,
    add_admin,
    contiguous_trio,
    export_body,
    footage_end,
    free_port,
    login,
    make_config,
    nvr,
    open_index,
    open_store,
    running_daemon,
)
from tests.camsim import CameraSim
from tests.recording_rig import assert_contiguous, wait_for

BROKER = ("127.0.0.1", 1883)


def broker_absent() -> str | None:
    try:
        with socket.create_connection(BROKER, timeout=1):
            return None
    except OSError as err:
        return f"no MQTT broker (Mosquitto) on {BROKER[0]}:{BROKER[1]}: {err}"


needs_broker = pytest.mark.skipif(
    broker_absent() is not None, reason=broker_absent() or "broker present"
)


def site_name() -> str:
    """A site of its own per test: parallel runs never see each other's topics."""
    return f"t{uuid.uuid4().hex[:12]}"


# --- an MQTT listener and a webhook receiver (the real thing, on loopback) -----------------


class Listener:
    """A paho client subscribed to `topics`, keeping every message (its own thread)."""

    def __init__(self, *topics: str, port: int = BROKER[1]) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self._client.connect(BROKER[0], port)
        self._client.loop_start()
        assert subscribed.wait(10), "the broker did not confirm the subscription"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def docs(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(topic) if p.startswith(b"{")]

    def retained(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, r in self.messages if t == topic and r]

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish through the listener's own connection (QoS 1, not retained)."""
        self._client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@contextmanager
def listening(*topics: str, port: int = BROKER[1]) -> Iterator[Listener]:
    listener = Listener(*topics, port=port)
    try:
        yield listener
    finally:
        listener.close()


def clear_retained(site: str) -> None:
    """Leave the broker as it was: every retained topic of the test's site emptied."""
    with listening(f"nvr/{site}/#", f"homeassistant/+/nvr_{site}/#") as seen:
        # The broker sends the retained messages on subscribing, before anything published
        # after: once our own marker comes back, every retained message is in.
        marker = f"nvr/{site}/test-marker"
        seen.publish(marker, b"end")
        wait_for(lambda: bool(seen.on(marker)), 10, "the broker's retained messages")
        topics = {t for t, _, r in seen.messages if r}
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(*BROKER)
    client.loop_start()
    for topic in topics:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


class Receiver:
    """A webhook receiver on 127.0.0.1:`port` (ThreadingHTTPServer on its own thread);
    header names kept in lower case (HTTP's are case-insensitive)."""

    def __init__(self, port: int, status: int = 204) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        lock = threading.Lock()
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def verified(headers: dict[str, str], body: bytes, secret: bytes) -> dict[str, Any]:
    """The event of a webhook request whose signature checks out (else AssertionError)."""
    stamp = headers["x-nvr-timestamp"]
    assert abs(int(stamp) - time.time()) < 300, stamp
    mac = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-nvr-signature"], f"sha256={mac}"), headers
    doc: dict[str, Any] = json.loads(body)
    assert headers["x-nvr-event"] == doc["kind"]
    return doc


# --- configuration ------------------------------------------------------------------------


def test_events_config_is_checked_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "nvr.toml"
    base = f'[storage]\nroot = "{tmp_path / "data"}"\n'

    def problems(text: str) -> list[str]:
        cfg.write_text(base + text)
        with pytest.raises(ConfigError) as info:
            load_config(cfg)
        return info.value.problems

    assert problems('[events]\nmqtt = "http://127.0.0.1:1883"\n') == [
        "events.mqtt: must be an mqtt:// or mqtts:// URL, found scheme 'http'"
    ]
    assert problems('[events]\nmqtt = "mqtt://u:p@127.0.0.1"\n') == [
        "events.mqtt: must not contain credentials; use username and password_env or password_file"
    ]
    assert problems('[events]\nsite = "a/b"\n') == [
        "events.site: must match [A-Za-z0-9_-]{1,64} (a topic level), found 'a/b'"
    ]
    assert problems('[events]\nmqt = "mqtt://127.0.0.1"\n') == [
        "events.mqt: unknown key (not part of the schema); did you mean 'mqtt'?"
    ]
    assert problems('[[events.webhooks]]\nurl = "ftp://127.0.0.1/x"\n') == [
        "events.webhooks[0].url: must be an http:// or https:// URL, found scheme 'ftp'"
    ]
    assert problems('[[events.webhooks]]\nurl = "http://127.0.0.1/x"\nsecrte_env = "X"\n') == [
        "events.webhooks[0].secrte_env: unknown key (not part of the schema); "
        "did you mean 'secret_env'?"
    ]
    # Secrets that cannot be read now: check-config names them (every one at once).
    cfg.write_text(
        base + '[events]\nmqtt = "mqtt://127.0.0.1"\nusername = "nvr"\n'
        'password_env = "NVR_TEST_SURELY_UNSET_MQTT"\n'
        f'[[events.webhooks]]\nurl = "https://example.invalid/hook"\n'
        f'secret_file = "{tmp_path / "missing"}"\n'
    )
    config = load_config(cfg)
    assert config.events is not None and config.events.site  # default: the host's name
    assert events_problems(config) == [
        "events.password_env: expected environment variable NVR_TEST_SURELY_UNSET_MQTT to be set",
        f"events.webhooks[0].secret_file: cannot read {tmp_path / 'missing'}: "
        "No such file or directory",
    ]
    done = subprocess.run(
        [*NVR, "check-config", str(cfg)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "events.password_env" in done.stderr, done


# --- the bus and a webhook, without a daemon -------------------------------------------------


def test_outbox_is_bounded_and_drops_the_oldest_with_a_count() -> None:
    bus = EventBus("s", queue_size=10)
    box: Outbox = bus.outbox("test")
    for i in range(25):
        bus.emit(CAMERA_STATE, "cam", {"n": i})
    assert len(box) == 10 and box.dropped == 15
    head = box.head()
    assert head is not None and head.data == {"n": 15}
    assert bus.camera_states()["cam"].data == {"n": 24}


def test_a_webhook_that_comes_back_gets_the_queued_events_signed_in_order(tmp_path: Path) -> None:
    port = free_port()
    secret = tmp_path / "hook.secret"
    secret.write_text("correct horse\n")
    bus = EventBus("depot", queue_size=10)
    hook = WebhookConfig(url=f"http://127.0.0.1:{port}/hook", secret_file=secret)
    sender = WebhookSender(0, hook, bus)
    sender.start()
    receiver: Receiver | None = None
    try:
        for i in range(25):  # the receiver is down: 15 of them cannot be kept
            bus.emit(CAMERA_STATE, "gate", {"state": "recording", "n": i})
        wait_for(lambda: bool(bus.problems()), 10, "the webhook to count as unreachable")
        (problem,) = bus.problems()
        assert f"webhook http://127.0.0.1:{port}/hook unreachable" in problem
        assert "Connection refused" in problem and "15 events dropped" in problem
        receiver = Receiver(port)
        # (the receiver keeps a request before it answers: wait for the sender's count)
        wait_for(lambda: bus.destinations()[0].delivered == 10, 30, "the queued events delivered")
        docs = [verified(h, b, b"correct horse") for h, b in receiver.posts]
        assert [d["n"] for d in docs] == list(range(15, 25))  # in order, the newest kept
        assert docs[0]["dropped_before"] == 15 and "dropped_before" not in docs[1]
        assert all(d["site"] == "depot" and d["camera"] == "gate" for d in docs)
        assert bus.problems() == []
        (state,) = bus.destinations()
        assert state.ok and state.delivered == 10 and state.queued == 0
    finally:
        sender.stop()
        if receiver is not None:
            receiver.close()


def test_a_webhook_refusing_an_event_does_not_block_the_others(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(port, status=400)
    bus = EventBus("depot", queue_size=10)
    sender = WebhookSender(0, WebhookConfig(url=f"http://127.0.0.1:{port}/x"), bus)
    sender.start()
    try:
        bus.emit(CAMERA_STATE, "gate", {"n": 1})
        bus.emit(CAMERA_STATE, "gate", {"n": 2})
        wait_for(lambda: bus.destinations()[0].queued == 0, 10, "both events tried once")
        assert len(receiver.posts) == 2
        assert "x-nvr-signature" not in receiver.posts[0][0]  # no secret: unsigned
        (state,) = bus.destinations()
        assert state.queued == 0
    finally:
        sender.stop()
        receiver.close()


def test_clock_warnings_and_the_storage_forecast_are_events(tmp_path: Path) -> None:
    bus = EventBus("depot")
    box = bus.outbox("test")
    store = open_index(tmp_path / "data")
    try:
        notes = ClockNotes(store)
        notes.listener = bus.emit
        now = int(time.time() * 1000)
        for offset in (0.1, 5.0, 6.0, 0.2):  # ok, a warning begins, goes on, clears
            notes.camera_clock("gate", CameraClockReading(offset, 0.01, "rtcp", now), 2.0)
        config = load_config_text(tmp_path, f'[storage]\nroot = "{tmp_path / "data"}"\n')
        retention = RetentionService(config, store)
        retention.listener = bus.emit
        retention.capacity_once()
        retention.capacity_once()  # the same state: told once
    finally:
        store.close()
    events = drain(box)
    assert [(e.kind, e.camera, e.data["state"]) for e in events] == [
        ("clock", "gate", "warning"),
        ("clock", "gate", "ok"),
        ("storage-forecast", None, "unknown"),
    ]
    assert events[0].data["offset_seconds"] == 5.0 and events[0].data["limit_seconds"] == 2.0
    assert bus.storage_state() is events[2]  # retained for MQTT (re)connects


def load_config_text(tmp_path: Path, text: str) -> NvrConfig:
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(text)
    return load_config(cfg)


def drain(box: Outbox) -> list[Event]:
    out = []
    while (event := box.head()) is not None:
        out.append(event)
        box.pop(event)
    return out


async def until(cond: Callable[[], bool], seconds: float, what: str) -> None:
    """`wait_for` on the event loop (the publisher under test runs on it)."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


@needs_broker
async def test_mqtt_topics_a_removed_camera_forgotten_and_offline_at_a_clean_stop() -> None:
    site = site_name()
    bus = EventBus(site)
    publisher = MqttPublisher(EventsConfig(mqtt="mqtt://127.0.0.1:1883", site=site), bus)
    stop = asyncio.Event()
    base = f"nvr/{site}"
    discovery = f"homeassistant/binary_sensor/nvr_{site}/gate/config"
    try:
        with listening(f"{base}/#", f"homeassistant/binary_sensor/nvr_{site}/#") as seen:
            task = asyncio.create_task(publisher.run(stop))
            bus.emit(CAMERA_STATE, "gate", {"state": "recording"})
            bus.emit(STORAGE, None, {"state": "critical", "detail": "12 days; window 30"})
            bus.emit(CLOCK, "gate", {"state": "warning", "offset_seconds": 5.0})
            bus.emit(PICTURE, "gate", {"state": "covered", "previous": "ok", "score": 0.1})
            bus.emit(EXPORT, "gate", {"id": 7, "state": "pending"})
            await until(lambda: bool(seen.on(f"{base}/export")), 15, "every topic published")
            assert seen.docs(f"{base}/camera/gate/state")[-1]["state"] == "recording"
            assert seen.docs(f"{base}/storage")[-1]["state"] == "critical"
            assert seen.docs(f"{base}/camera/gate/clock")[-1]["offset_seconds"] == 5.0
            assert seen.docs(f"{base}/export")[-1]["id"] == 7
            assert json.loads(seen.on(discovery)[-1])["device_class"] == "connectivity"
            sensor = f"homeassistant/binary_sensor/nvr_{site}/storage/config"
            storage = json.loads(seen.on(sensor)[-1])
            assert storage["device_class"] == "problem"
            # Picture health (issue 18): a retained topic and a problem sensor per camera.
            assert seen.docs(f"{base}/camera/gate/picture")[-1]["state"] == "covered"
            picture = f"homeassistant/binary_sensor/nvr_{site}/gate_picture/config"
            assert json.loads(seen.on(picture)[-1])["device_class"] == "problem"
            # A reload took the camera away: Home Assistant is told to forget it.
            bus.emit(CAMERA_REMOVED, "gate", {"reason": "removed from the config"})
            await until(lambda: seen.on(discovery)[-1] == b"", 15, "the discovery emptied")
            assert seen.on(f"{base}/camera/gate/state")[-1] == b""
            assert seen.on(picture)[-1] == b""
            assert seen.on(f"{base}/camera/gate/picture")[-1] == b""
            assert "gate" not in bus.camera_states()
            # A clean stop says goodbye itself.
            stop.set()
            await asyncio.wait_for(task, 15)
            await until(
                lambda: seen.on(f"{base}/availability")[-1:] == [b"offline"], 15, "'offline'"
            )
    finally:
        clear_retained(site)


def test_a_webhook_whose_secret_is_missing_is_a_reason_until_it_is_there(
    tmp_path: Path,
) -> None:
    port = free_port()
    receiver = Receiver(port)
    secret = tmp_path / "late.secret"
    bus = EventBus("depot")
    hook = WebhookConfig(url=f"http://127.0.0.1:{port}/x", secret_file=secret)
    sender = WebhookSender(0, hook, bus)
    sender.start()
    try:
        bus.emit(CAMERA_STATE, "gate", {"state": "recording"})
        wait_for(lambda: bool(bus.problems()), 10, "the missing secret as a reason")
        assert f"events.webhooks[0].secret_file: cannot read {secret}" in bus.problems()[0]
        assert receiver.posts == []  # never sent unsigned
        secret.write_text("late\n")
        wait_for(lambda: bus.destinations()[0].delivered == 1, 30, "the event delivered")
        verified(*receiver.posts[0], b"late")
        assert bus.problems() == []
    finally:
        sender.stop()
        receiver.close()


# --- a real daemon ----------------------------------------------------------------------------


@needs_broker
@pytest.mark.slow
def test_mqtt_state_outage_discovery_and_last_will(camsim: CameraSim, tmp_path: Path) -> None:
    site = site_name()
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        f'[storage]\nroot = "{tmp_path / "data"}"\n'
        f'[events]\nmqtt = "mqtt://127.0.0.1:1883"\nsite = "{site}"\n'
        f'[[cameras]]\nname = "gate"\nurl = "{camsim.url("h264")}"\nsegment_seconds = 10\n'
        "stall_seconds = 2.0\n"
    )
    base = f"nvr/{site}"
    state_topic = f"{base}/camera/gate/state"
    discovery = f"homeassistant/binary_sensor/nvr_{site}/gate/config"
    try:
        with (
            listening(f"{base}/#", f"homeassistant/binary_sensor/nvr_{site}/#") as seen,
            running_daemon(cfg) as proc,
        ):
            wait_for(
                lambda: any(d["state"] == "recording" for d in seen.docs(state_topic)),
                30,
                "state 'recording' published",
            )
            assert seen.on(f"{base}/availability")[-1] == b"online"
            first = seen.docs(state_topic)[0]
            assert first["site"] == site and first["camera"] == "gate"
            # Retained: a newcomer (Home Assistant starting later) gets them at once.
            with listening(state_topic, discovery, f"{base}/availability") as late:
                wait_for(
                    lambda: bool(late.retained(discovery) and late.retained(state_topic)),
                    10,
                    "the retained discovery config and state",
                )
                assert late.retained(f"{base}/availability") == [b"online"]
                config = json.loads(late.retained(discovery)[-1])
                assert json.loads(late.retained(state_topic)[-1])["state"] == "recording"
            assert config["device_class"] == "connectivity"
            assert config["state_topic"] == state_topic
            assert config["availability_topic"] == f"{base}/availability"
            assert config["payload_not_available"] == "offline"
            assert config["unique_id"] == f"nvr_{site}_gate_recording"
            # The camera goes away: the outage and the state change are published.
            camsim.stop()
            wait_for(
                lambda: any(d["phase"] == "began" for d in seen.docs(f"{base}/camera/gate/outage")),
                30,
                "the outage published",
            )
            (began,) = [d for d in seen.docs(f"{base}/camera/gate/outage") if d["phase"] == "began"]
            assert began["cause"] in ("stream-ended", "stalled", "unreachable"), began
            assert isinstance(began["start_ms"], int)
            wait_for(
                lambda: seen.docs(state_topic)[-1]["state"] != "recording",
                30,
                "a state other than recording",
            )
            # Back again: the outage ends, with its length.
            camsim.start()
            wait_for(
                lambda: any(d["phase"] == "ended" for d in seen.docs(f"{base}/camera/gate/outage")),
                60,
                "the end of the outage published",
            )
            ended = [d for d in seen.docs(f"{base}/camera/gate/outage") if d["phase"] == "ended"]
            assert ended[0]["start_ms"] == began["start_ms"] and ended[0]["seconds"] > 0
            # SIGKILL: no goodbye; the broker publishes the last will.
            proc.kill()
            proc.wait(10)
            wait_for(
                lambda: seen.on(f"{base}/availability")[-1] == b"offline",
                30,
                "the broker to publish the last will 'offline'",
            )
    finally:
        clear_retained(site)


def events_config(root: Path, url: str, mqtt_port: int, hook_port: int, secret: Path) -> str:
    return (
        f'[storage]\nroot = "{root}"\n'
        f'[events]\nmqtt = "mqtt://127.0.0.1:{mqtt_port}"\nsite = "{site_name()}"\n'
        f'[[events.webhooks]]\nurl = "http://127.0.0.1:{hook_port}/hook?token=t"\n'
        f'secret_file = "{secret}"\n'
        f'[[cameras]]\nname = "gate"\nurl = "{url}"\nsegment_seconds = 10\n'
    )


@pytest.mark.slow
def test_destinations_down_never_cost_a_frame_and_are_health_reasons(
    camsim: CameraSim, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    api_port, mqtt_port, hook_port = free_port(), free_port(), free_port()
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret-hmac\n")
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        events_config(root, camsim.url("h264"), mqtt_port, hook_port, secret)
        + f'[api]\nlisten = "127.0.0.1:{api_port}"\n'
    )
    add_admin(cfg)
    receiver: Receiver | None = None
    with running_daemon(cfg), login(f"http://127.0.0.1:{api_port}") as api:

        def reasons() -> str:
            return "\n".join(api.get("/api/health").json()["reasons"])

        wait_for(
            lambda: (
                f"mqtt mqtt://127.0.0.1:{mqtt_port} unreachable" in reasons()
                and f"webhook http://127.0.0.1:{hook_port}/hook unreachable" in reasons()
            ),
            30,
            "both destinations named in health",
        )
        assert "token" not in reasons()  # the URL's query (a secret, often) is never shown
        assert api.get("/api/health").json()["status"] in ("degraded", "critical")
        wait_for(
            lambda: "WARNING events: mqtt" in nvr(["status", "-c", str(cfg)], tmp_path).stdout,
            10,
            "nvr status to name the broker",
        )

        def segments() -> int:
            with closing(open_index(root)) as store:
                return len(store.segments("gate"))

        wait_for(lambda: segments() >= 2, 60, "two segments written while both are down")
        # The receiver comes back: the queued events arrive, signed; its reason clears.
        receiver = Receiver(hook_port)
        try:
            wait_for(
                lambda: any(
                    verified(h, b, b"s3cret-hmac").get("state") == "recording"
                    for h, b in receiver.posts
                ),
                60,
                "the retried 'recording' event",
            )
            wait_for(lambda: "webhook" not in reasons(), 15, "the webhook reason to clear")
            assert "mqtt" in reasons()  # the broker is still down
            docs = [verified(h, b, b"s3cret-hmac") for h, b in receiver.posts]
            states = [d["state"] for d in docs if d["kind"] == "camera-state"]
            assert states[:2] == ["connecting", "recording"], docs  # from the very start
            assert [d["id"] for d in docs] == sorted(d["id"] for d in docs)
        finally:
            receiver.close()
    text = (tmp_path / "daemon.log").read_text()
    assert "s3cret-hmac" not in text and "token=t" not in text
    with closing(open_index(root)) as store:
        segs = store.segments("gate")
        assert [o.cause for o in store.ledger.outages("gate")] == ["daemon-stopped"]
    assert len(segs) >= 2
    assert_contiguous(segs)  # PyAV reopens every file: no frame missing inside or between


# --- export requests (the API emits; no broker needed to see what goes out) -----------------


@pytest.mark.slow
def test_export_requests_and_decisions_are_events(footage_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    offset = time.time_ns() // 1_000_000 - (footage_end(root) + 60_000)
    store = open_store(root, lambda: time.time_ns() // 1_000_000 - offset)
    bus = EventBus("depot")
    box = bus.outbox("test")
    ctx = ApiContext(config=make_config(root, free_port()), store=store, emit=bus.emit)
    server = ServerThread(ctx)
    server.start()
    api = Api(server.base, store, root, ctx.config, server)
    try:
        trio = contiguous_trio(store, "h264aac")
        body = export_body(trio[0].start_ms + 1000, trio[1].end_ms - 1000)
        with api.as_user("olga") as olga, api.as_user("oscar") as oscar:
            first = olga.post("/api/exports", json=body).json()["id"]
            r = oscar.post(
                f"/api/exports/{first}/reject", json={"approver_work_id": "OP-2", "reason": "no"}
            )
            assert r.status_code == 200, r.text
            second = olga.post("/api/exports", json=body).json()["id"]
            r = oscar.post(f"/api/exports/{second}/approve", json={"approver_work_id": "OP-2"})
            assert r.status_code == 200, r.text
            # Refused decisions are no events: the requester approving her own request.
            third = olga.post("/api/exports", json=body).json()["id"]
            r = olga.post(f"/api/exports/{third}/approve", json={"approver_work_id": "OP-1"})
            assert r.status_code == 403
    finally:
        server.stop()
        store.close()
    events = drain(box)
    assert [(e.kind, e.camera, e.data["id"], e.data["state"], e.data["actor"]) for e in events] == [
        ("export", "h264aac", first, "pending", "olga"),
        ("export", "h264aac", first, "rejected", "oscar"),
        ("export", "h264aac", second, "pending", "olga"),
        ("export", "h264aac", second, "approved", "oscar"),
        ("export", "h264aac", third, "pending", "olga"),
    ]
    doc = events[0].body("depot")
    assert doc["requester"] == "olga" and doc["start"].endswith("Z")
    assert "purpose" not in doc and "recipient" not in doc  # those stay in the register


MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto (the broker program) is not installed")
@pytest.mark.slow
def test_a_broker_that_comes_back_gets_the_state_and_clears_the_reason(
    camsim: CameraSim, tmp_path: Path
) -> None:
    assert MOSQUITTO is not None
    port = free_port()  # nothing listens there until the broker starts below
    site = site_name()
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        f'[storage]\nroot = "{tmp_path / "data"}"\n'
        f'[events]\nmqtt = "mqtt://127.0.0.1:{port}"\nsite = "{site}"\n'
        f'[[cameras]]\nname = "gate"\nurl = "{camsim.url("h264")}"\nsegment_seconds = 10\n'
    )

    def status() -> str:
        return nvr(["status", "-c", str(cfg)], tmp_path).stdout

    with running_daemon(cfg):
        wait_for(
            lambda: f"WARNING events: mqtt mqtt://127.0.0.1:{port}: unreachable" in status(),
            30,
            "nvr status to name the unreachable broker",
        )
        broker = subprocess.Popen(
            [MOSQUITTO, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(lambda: broker_listening(port), 10, "the second broker to listen")
            with listening(f"nvr/{site}/#", port=port) as seen:
                state = f"nvr/{site}/camera/gate/state"
                wait_for(
                    lambda: (
                        any(d["state"] == "recording" for d in seen.docs(state))
                        and seen.on(f"nvr/{site}/availability")[-1:] == [b"online"]
                    ),
                    60,
                    "the retained state and 'online' after the reconnect",
                )
                wait_for(
                    lambda: f"events: mqtt mqtt://127.0.0.1:{port}: ok" in status(),
                    10,
                    "the broker's reason to clear in nvr status",
                )
        finally:
            broker.terminate()
            broker.wait(10)


def broker_listening(port: int) -> bool:
    try:
        with socket.create_connection((BROKER[0], port), timeout=1):
            return True
    except OSError:
        return False
