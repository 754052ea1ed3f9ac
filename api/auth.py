"""Authentication helpers of the API: slowing down repeated failed logins, signed playback
links for `<video src>`, the static `/metrics` scrape token, and the role rules. Runs on the
event loop; the state here is in-memory and per daemon process (a restart forgets throttles
and invalidates links, which are short-lived by design). Never logs a password, a token or a
link signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nvr.storage.accounts import Role, User

PLAYBACK: tuple[Role, ...] = ("viewer", "operator", "admin")
OPERATE: tuple[Role, ...] = ("operator", "admin")
AUDIT: tuple[Role, ...] = ("auditor", "admin")
ADMIN: tuple[Role, ...] = ("admin",)

log = logging.getLogger("nvr.api")

LINK_TTL_MS = 10 * 60_000
"""A playback link's life without renewal."""

SESSION_COOKIE = "nvr_session"
"""The web pages' login session: an ordinary bearer token (`AccountStore.issue_token`, so
logout, password changes, disabled accounts and expiry end it exactly as they end a token)
carried in an HttpOnly, SameSite=Strict cookie that page scripts cannot read."""
CSRF_HEADER = "X-CSRF-Token"
"""A request authenticated by the session cookie with an unsafe method must carry this
header, equal to `csrf_token(session)`, which the pages put in `<meta name="csrf-token">`."""
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def csrf_token(session_token: str) -> str:
    """The CSRF token of a page session: an HMAC keyed by the session's own secret token,
    so it needs no storage, survives a restart with the session and dies with it; knowing
    it (it is in the page) reveals nothing about the cookie."""
    mac = hmac.new(session_token.encode("utf-8"), b"nvr page csrf v1", hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def csrf_matches(session_token: str, sent: str | None) -> bool:
    if not sent or len(sent) > 128:
        return False
    return hmac.compare_digest(sent.encode("utf-8"), csrf_token(session_token).encode("ascii"))


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    in_flight: int = 0
    refusal_noted: bool = False


@dataclass(frozen=True)
class Admission:
    """The throttle's answer to a login attempt: refused for `wait` seconds (429), or let
    through after sleeping `delay` seconds (the per-name ceiling)."""

    wait: float
    first_refusal: bool
    delay: float

    @property
    def refused(self) -> bool:
        return self.wait > 0


class LoginThrottle:
    """Slows password guessing without letting anyone lock a real user out.

    Design (issue 13):
    - Refusals (429) are keyed by the client address only: by the pair (name, address) after
      `free` failures, and by the address alone after `free_address` failures (a spray of
      names). Each further attempt on such a key must come 1, 2, 4 ... (at most `max_delay`)
      seconds after its previous failure. A failure from one address therefore never refuses
      an attempt from another: the admin's own workstation always gets to try.
    - The per-name ceiling only delays: once a name has `free_name` failures (from all
      addresses together), every attempt on it sleeps 0.1, 0.2 ... (at most `name_max_delay`)
      seconds before its password is checked. The sleep is not a queue, so a flood cannot
      make it longer for anyone; it only slows guessing spread over many addresses.
    - Attempts in flight count: an attempt is registered when it is admitted and counts as a
      failure until it ends, so a burst of concurrent guesses gets `free` through and the
      rest 429; past the free attempts only one per key may be in flight.
    - Failures older than `window` seconds are forgotten; state is in memory per process.
    Runs on the event loop (no locks needed: no await between check and registration)."""

    def __init__(
        self,
        *,
        free: int = 3,
        free_address: int = 10,
        free_name: int = 10,
        max_delay: float = 60.0,
        name_max_delay: float = 2.0,
        window: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free
        self._free_address = free_address
        self._free_name = free_name
        self._max_delay = max_delay
        self._name_max_delay = name_max_delay
        self._window = window
        self._clock = clock
        self._failures: dict[str, _Failures] = {}

    def _refusing_keys(self, user: str, client: str) -> list[tuple[str, int]]:
        return [
            (f"pair:{user.lower()}\0{client}", self._free),
            (f"addr:{client}", self._free_address),
        ]

    def _entry(self, key: str, now: float) -> _Failures | None:
        f = self._failures.get(key)
        if f is not None and f.in_flight == 0 and now - f.last > self._window:
            del self._failures[key]
            return None
        return f

    def admit(self, user: str, client: str) -> Admission:
        """Whether an attempt may go ahead now; if so it is registered as in flight and the
        caller must report its end with `failed` or `succeeded`."""
        now = self._clock()
        wait = 0.0
        first = False
        for key, free in self._refusing_keys(user, client):
            f = self._entry(key, now)
            if f is None or f.count + f.in_flight < free:
                continue
            if f.in_flight > 0:
                left = 1.0  # one attempt at a time once past the free ones
            else:
                left = f.last + min(self._max_delay, 2.0 ** max(0, f.count - free)) - now
            if left > 0:
                wait = max(wait, left)
                if not f.refusal_noted:
                    f.refusal_noted = True
                    first = True
        if wait > 0:
            return Admission(wait, first, 0.0)
        for key, _free in self._refusing_keys(user, client):
            self._failures.setdefault(key, _Failures()).in_flight += 1
        delay = 0.0
        named = self._entry(f"name:{user.lower()}", now)
        if named is not None and named.count >= self._free_name:
            delay = min(self._name_max_delay, 0.1 * 2.0 ** (named.count - self._free_name))
        return Admission(0.0, False, delay)

    def _end(self, user: str, client: str) -> None:
        for key, _free in self._refusing_keys(user, client):
            f = self._failures.get(key)
            if f is not None and f.in_flight > 0:
                f.in_flight -= 1

    def failed(self, user: str, client: str) -> None:
        """An admitted attempt failed (wrong password, or abandoned)."""
        self._end(user, client)
        now = self._clock()
        keys = [k for k, _free in self._refusing_keys(user, client)]
        for key in [*keys, f"name:{user.lower()}"]:
            f = self._failures.setdefault(key, _Failures())
            f.count += 1
            f.last = now
            f.refusal_noted = False
        if len(self._failures) > 100_000:  # bound memory under a spray of names
            cutoff = now - self._window
            self._failures = {
                k: v for k, v in self._failures.items() if v.last >= cutoff or v.in_flight
            }

    def succeeded(self, user: str, client: str) -> None:
        """An admitted attempt succeeded: the pair's and the name's failures are forgotten
        (not the address's: one good login must not launder a spray of guesses)."""
        self._end(user, client)
        pair = self._refusing_keys(user, client)[0][0]
        f = self._failures.get(pair)
        if f is not None and f.in_flight == 0:
            del self._failures[pair]
        self._failures.pop(f"name:{user.lower()}", None)


@dataclass(frozen=True)
class Link:
    """What a signed playback link grants: one user, one camera, one exact range, for as long
    as the session `token_id` that asked for it lives and the link is not expired."""

    user_id: int
    camera: str
    start_ms: int
    end_ms: int
    expires_ms: int
    token_id: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """HMAC-signed, short-lived playback links. A browser's `<video src>` cannot send an
    Authorization header, so the link itself carries the (narrow) right to play one range.

    A link belongs to the session (bearer token) that asked for it: it stops working when
    that session ends (logout, password change, account disabled, token expiry), checked on
    every request by the caller. It also expires `LINK_TTL_MS` after it was made, unless the
    page renews it (`renew`, through `POST /api/links/renew` with the session's token) while
    it is valid: the renewal is kept here, by the link's signature, so the URL the `<video>`
    element is playing stays the same and playback never breaks while the session lives. A
    leaked link therefore dies within `LINK_TTL_MS` of the page closing.
    The key is random per process: links die with a restart. Runs on the event loop."""

    MAX_RENEWED = 100_000

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self._renewed: dict[bytes, int] = {}

    def sign(self, link: Link) -> str:
        payload = json.dumps(
            [
                link.user_id,
                link.camera,
                link.start_ms,
                link.end_ms,
                link.expires_ms,
                link.token_id,
            ],
            separators=(",", ":"),
        ).encode("utf-8")
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def _open(self, token: str) -> tuple[Link, bytes] | None:
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
            user_id, camera, start, end, expires, token_id = json.loads(payload)
            link = Link(
                int(user_id), str(camera), int(start), int(end), int(expires), int(token_id)
            )
        except (ValueError, TypeError):
            return None
        return link, mac

    def authentic(self, token: str) -> Link | None:
        """The link if `token` was signed here (expired or not), with its renewed expiry."""
        opened = self._open(token)
        if opened is None:
            return None
        link, mac = opened
        renewed = self._renewed.get(mac)
        if renewed is not None and renewed > link.expires_ms:
            link = Link(
                link.user_id, link.camera, link.start_ms, link.end_ms, renewed, link.token_id
            )
        return link

    def verify(self, token: str, now_ms: int) -> Link | None:
        """The link if `token` is authentic and unexpired, else None."""
        link = self.authentic(token)
        return link if link is not None and link.expires_ms > now_ms else None

    def renew(self, token: str, until_ms: int, now_ms: int) -> Link | None:
        """Extend an authentic, unexpired link to `until_ms`; None if it is not one."""
        opened = self._open(token)
        link = self.verify(token, now_ms)
        if opened is None or link is None:
            return None
        mac = opened[1]
        if len(self._renewed) >= self.MAX_RENEWED:
            self._renewed = {k: v for k, v in self._renewed.items() if v > now_ms}
            if len(self._renewed) >= self.MAX_RENEWED:  # all live: the oldest renewal goes
                self._renewed.pop(next(iter(self._renewed)))
        until = max(until_ms, link.expires_ms)
        self._renewed[mac] = until
        return Link(link.user_id, link.camera, link.start_ms, link.end_ms, until, link.token_id)


def has_role(user: User, roles: tuple[Role, ...]) -> bool:
    return user.role in roles


class ScrapeToken:
    """The static bearer token that may read `/metrics` and nothing else (for Prometheus,
    whose scrape cannot log in). Only its sha256 is kept, in `[api] metrics_token_file`
    (written by `nvr metrics-token`); it does not expire. The file is re-read when it
    changes (so a new token needs no restart); a missing or malformed file is logged and
    accepts no token, and never stops the recorder. Blocking (a stat per check): call
    `matches` through `asyncio.to_thread`."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._digest: bytes | None = None

    @property
    def configured(self) -> bool:
        return self._path is not None

    def _load(self) -> bytes | None:
        path = self._path
        if path is None:
            return None
        try:
            st = path.stat()
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen == self._seen:
                return self._digest
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeError) as err:
            if self._seen != (-1, -1, -1):
                log.error("[api] metrics_token_file: cannot read %s: %s", path, err)
            self._seen, self._digest = (-1, -1, -1), None
            return None
        self._seen = seen
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            log.error(
                "[api] metrics_token_file: %s must hold the sha256 of the token as 64 lower-case "
                "hex digits (write it with `nvr metrics-token`); scrape token refused",
                path,
            )
            self._digest = None
        else:
            self._digest = bytes.fromhex(text)
        return self._digest

    def matches(self, token: str) -> bool:
        digest = self._load()
        if digest is None or not token or len(token) > 256:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode("utf-8")).digest(), digest)


def new_scrape_token() -> tuple[str, str]:
    """A new scrape token and the sha256 hex to store."""
    token = "nvrm_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode("utf-8")).hexdigest()
