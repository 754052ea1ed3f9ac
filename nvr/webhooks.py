"""Webhooks (`[[events.webhooks]]`): every event POSTed as JSON to a URL.

Owns `WebhookSender`: one thread per webhook (`webhook-<n>`) that takes the first event of its
`Outbox` (nvr.events), POSTs it and removes it once the receiver answered 2xx. A failure
(connection refused, timeout, 5xx, 408, 425, 429) keeps the event first and retries it after
a back-off (1 s doubling to 60 s), so events arrive in order; while it fails the webhook is a
health reason. Another 4xx means the receiver refuses this very event: it is logged and
skipped, never retried forever. The outbox is bounded: a receiver that stays down loses the
oldest events, and the next delivery says how many (`dropped_before`).

Signing (when `secret_env` / `secret_file` is set): headers `X-NVR-Timestamp` (Unix seconds)
and `X-NVR-Signature: sha256=<hex>`, the HMAC-SHA256 with the secret of
`<timestamp>.<body>` (the raw body bytes), so a receiver can refuse replays of old requests.

Blocking I/O (urllib) on the sender's own thread only: recording never waits for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from nvr.config.errors import ConfigError
from nvr.config.models import WebhookConfig
from nvr.events import Event, EventBus, Outbox

log = logging.getLogger("nvr.events.webhook")

BACKOFF_INITIAL = 1.0
BACKOFF_CAP = 60.0
RETRIED_STATUS = frozenset({408, 425, 429})
USER_AGENT = "nvr-webhook/1"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `<timestamp>.<body>`."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def describe_url(url: str) -> str:
    """The URL without its query (which may carry a token) for logs and health."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _Refused(Exception):
    """The receiver answered a 4xx that retrying will not change."""


class WebhookSender:
    """Delivers one webhook's events on its own thread, in order, retrying failures."""

    def __init__(self, index: int, hook: WebhookConfig, bus: EventBus) -> None:
        self.name = f"webhook {describe_url(hook.url)}"
        self._index = index
        self._hook = hook
        self._bus = bus
        self._secret: bytes | None = None
        self._signed = hook.secret_env is not None or hook.secret_file is not None
        self._outbox: Outbox = bus.outbox(self.name)
        self._wake = threading.Event()
        self._outbox.add_waker(self._wake.set)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"webhook-{index}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued while the receiver takes it, then end; a failure ends it at
        once. Waits `timeout` seconds at most. Blocking: the daemon calls it through
        `asyncio.to_thread`."""
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout)

    def _post(self, event: Event, dropped: int) -> None:
        doc = event.body(self._bus.site)
        if dropped:
            doc["dropped_before"] = dropped
        body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-NVR-Event": event.kind,
            "X-NVR-Delivery": str(event.id),
        }
        if self._signed:
            if self._secret is None:
                # Read at the first delivery, and again after a failure: a secret that is
                # missing is this webhook's problem (a health reason), never the daemon's.
                self._secret = self._hook.secret(f"events.webhooks[{self._index}]")
            assert self._secret is not None
            stamp = str(int(time.time()))
            headers["X-NVR-Timestamp"] = stamp
            headers["X-NVR-Signature"] = signature(self._secret, stamp, body)
        request = urllib.request.Request(self._hook.url, body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._hook.timeout_seconds) as reply:
                reply.read(65536)
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500 and err.code not in RETRIED_STATUS:
                raise _Refused(f"HTTP {err.code} {err.reason}") from None
            raise

    def _run(self) -> None:
        delay = BACKOFF_INITIAL
        while True:
            event = self._outbox.head()
            if event is None:
                if self._stop.is_set():
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            dropped = self._outbox.dropped_unreported
            try:
                self._post(event, dropped)
            except _Refused as err:
                log.error(
                    "%s refused event %d (%s): %s; not retried",
                    self.name,
                    event.id,
                    event.kind,
                    err,
                )
                self._outbox.pop(event)
                continue
            except (OSError, ValueError, ConfigError) as err:  # URLError, 5xx, timeouts
                self._bus.failed(self.name, self._reason(err))
                if self._stop.is_set() or self._stop.wait(delay):
                    return  # stopping: no more retries
                delay = min(BACKOFF_CAP, delay * 2)
                continue
            except Exception as err:  # a bug: logged, and this webhook keeps its thread
                log.exception("%s: delivery of event %d failed", self.name, event.id)
                self._bus.failed(self.name, f"{type(err).__name__}: {err}")
                if self._stop.wait(delay):
                    return
                delay = min(BACKOFF_CAP, delay * 2)
                continue
            if dropped:
                self._outbox.take_dropped()
                log.warning("%s: %d events were dropped while it was down", self.name, dropped)
            self._outbox.pop(event)
            self._bus.delivered(self.name)
            delay = BACKOFF_INITIAL

    def _reason(self, err: BaseException) -> str:
        if isinstance(err, ConfigError):  # its secret cannot be read (yet)
            return "; ".join(f"events.webhooks[{self._index}].{p}" for p in err.problems)
        return _reason(err)


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        reason = err.reason
        return str(getattr(reason, "strerror", None) or reason)
    return str(err) or type(err).__name__


def start_webhooks(bus: EventBus, hooks: list[WebhookConfig]) -> list[WebhookSender]:
    """One sender per webhook, started (a secret that cannot be read is that webhook's
    failure, retried like an unreachable receiver)."""
    senders = [WebhookSender(i, hook, bus) for i, hook in enumerate(hooks)]
    for sender in senders:
        sender.start()
    return senders
