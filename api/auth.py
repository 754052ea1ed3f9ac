"""Authentication helpers of the API: slowing down repeated failed logins, signed playback
links for `<video src>`, and the role rules. Runs on the event loop; the state here is
in-memory and per daemon process (a restart forgets throttles and invalidates links, which
are short-lived by design). Never logs a password, a token or a link signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from storage.accounts import Role, User

PLAYBACK: tuple[Role, ...] = ("viewer", "operator", "admin")
OPERATE: tuple[Role, ...] = ("operator", "admin")
AUDIT: tuple[Role, ...] = ("auditor", "admin")
ADMIN: tuple[Role, ...] = ("admin",)


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    refusal_noted: bool = False


class LoginThrottle:
    """After `free` failed logins for a user name or from a client address, each further
    attempt must wait 1, 2, 4 ... (at most `max_delay`) seconds after the previous failure.
    Failures older than `window` seconds are forgotten."""

    def __init__(
        self,
        *,
        free: int = 3,
        max_delay: float = 60.0,
        window: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free
        self._max_delay = max_delay
        self._window = window
        self._clock = clock
        self._failures: dict[str, _Failures] = {}

    def _keys(self, user: str, client: str) -> tuple[str, str]:
        return f"user:{user.lower()}", f"addr:{client}"

    def wait_needed(self, user: str, client: str) -> tuple[float, bool]:
        """Seconds before another attempt for this user or from this client is allowed,
        and whether this is the first refusal since the last failure (worth auditing once;
        a flood of refused attempts must not flood the audit log)."""
        now = self._clock()
        wait = 0.0
        first = False
        for key in self._keys(user, client):
            f = self._failures.get(key)
            if f is None:
                continue
            if now - f.last > self._window:
                del self._failures[key]
                continue
            if f.count >= self._free:
                delay = min(self._max_delay, 2.0 ** (f.count - self._free))
                left = f.last + delay - now
                if left > 0:
                    wait = max(wait, left)
                    if not f.refusal_noted:
                        f.refusal_noted = True
                        first = True
        return max(0.0, wait), first

    def failed(self, user: str, client: str) -> None:
        now = self._clock()
        for key in self._keys(user, client):
            f = self._failures.setdefault(key, _Failures())
            f.count += 1
            f.last = now
            f.refusal_noted = False
        if len(self._failures) > 100_000:  # bound memory under a spray of names
            cutoff = now - self._window
            self._failures = {k: v for k, v in self._failures.items() if v.last >= cutoff}

    def succeeded(self, user: str, client: str) -> None:
        for key in self._keys(user, client):
            self._failures.pop(key, None)


@dataclass(frozen=True)
class Link:
    """What a signed playback link grants: one user, one camera, one exact range."""

    user_id: int
    camera: str
    start_ms: int
    end_ms: int
    expires_ms: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """HMAC-signed, short-lived playback links. A browser's `<video src>` cannot send an
    Authorization header, so the link itself carries the (narrow) right to play one range.
    The key is random per process: links die with a restart."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def sign(self, link: Link) -> str:
        payload = json.dumps(
            [link.user_id, link.camera, link.start_ms, link.end_ms, link.expires_ms],
            separators=(",", ":"),
        ).encode("utf-8")
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def verify(self, token: str, now_ms: int) -> Link | None:
        """The link if `token` is authentic and unexpired, else None."""
        try:
            head, mac_text = token.split(".", 1)
            payload = _unb64(head)
            mac = _unb64(mac_text)
        except (ValueError, UnicodeError):
            return None
        good = hmac.new(self._key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, good):
            return None
        try:
            user_id, camera, start, end, expires = json.loads(payload)
            link = Link(int(user_id), str(camera), int(start), int(end), int(expires))
        except (ValueError, TypeError):
            return None
        return link if link.expires_ms > now_ms else None


def has_role(user: User, roles: tuple[Role, ...]) -> bool:
    return user.role in roles
