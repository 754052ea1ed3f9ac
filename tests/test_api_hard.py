"""The API under attack (issue 13), against a real uvicorn on a free port: body limits,
problem responses that never echo input, the login throttle (many addresses, concurrent
guesses), forged client addresses, log injection, playback cost limits, revoked links,
account rules, security headers, the offline docs page, the metrics scrape token and the
audit of refused and HEAD footage requests. Clients on other source addresses bind to
127.0.0.x (all of 127/8 is loopback on Linux)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import plan_cost
from nvr.api import ApiContext
from nvr.api.playback import PlaybackService, RangeReader
from nvr.config.models import ApiConfig
from nvr.storage.media.virtual import plan
from tests.api_rig import (
    CHROMIUM,
    HEADLESS,
    PASSWORD,
    Api,
    ServerThread,
    footage_end,
    free_port,
    make_config,
    nvr_here,
    open_store,
    run_api,
    write_config,
)
from tests.recording_rig import wait_for

PROBLEM = "application/problem+json"


def run_with(root: Path, **settings: object) -> Iterator[Api]:
    """An API over `root` with `[api]` settings changed."""
    store = open_store(root)
    port = free_port()
    config = make_config(root, port)
    api_config = ApiConfig(listen=f"127.0.0.1:{port}", **settings)  # type: ignore[arg-type]
    server = ServerThread(ApiContext(config=config, store=store, api=api_config))
    try:
        server.start()
        yield Api(server.base, store, root, config, server)
    finally:
        server.stop()
        store.close()


def from_address(api: Api, address: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=api.base,
        headers=headers,
        timeout=60,
        transport=httpx.HTTPTransport(local_address=address),
    )


def login_as(c: httpx.Client, name: str, password: str = PASSWORD) -> httpx.Response:
    return c.post("/api/login", json={"username": name, "password": password})


# --- 1. bodies -------------------------------------------------------------------------------


def test_large_bodies_get_413_before_they_are_read(api: Api) -> None:
    big = b'{"username": "root", "password": "' + b"x" * (1 << 20) + b'"}'
    with api.client() as c:
        r = c.post("/api/login", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text[:200]
        assert r.headers["content-type"] == PROBLEM
        assert len(r.content) < 1000 and b"xxxx" not in r.content

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 16384):
                yield big[i : i + 16384]

        r = c.post("/api/login", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413, "a chunked body is cut off at the limit too"
        # an authenticated route refuses the body before (not after) looking at it
        r = c.post("/api/users", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert c.get("/healthz").status_code == 200


def test_validation_errors_are_problems_that_never_echo_input(api: Api) -> None:
    secret = "s3cret-" + "y" * 2000  # too long a password: invalid, and must not come back
    with api.client() as c:
        r = c.post("/api/login", json={"username": "root", "password": secret})
        assert r.status_code == 422
        assert r.headers["content-type"] == PROBLEM
        body = r.json()
        assert body["status"] == 422 and body["title"] and "password" in body["detail"]
        assert "s3cret" not in r.text and "yyyy" not in r.text
        r = c.post("/api/login", content=b"{not json", headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == PROBLEM
        assert "not json" not in r.text
        r = c.get("/api/me")
        assert r.status_code == 401 and r.json()["status"] == 401


def test_bodies_within_the_limit_are_configurable(users_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    for small in run_with(root, max_body_bytes=2048):
        with small.client() as c:
            body = {"username": "root", "password": "p" * 1000}
            assert login_as(c, "root", "p" * 1000).status_code == 401
            body["password"] = "p" * 3000
            r = c.post("/api/login", json=body)
            assert r.status_code == 413


# --- 2, 3. login throttle ----------------------------------------------------------------------


@pytest.mark.slow  # 30 threads guessing in real time; the decisions: tests/test_login_throttle.py
def test_guesses_from_many_addresses_never_lock_the_admin_out(api: Api) -> None:
    stop = threading.Event()
    attacker_codes: list[int] = []
    throttled: set[str] = set()

    def attack(address: str) -> None:
        with from_address(api, address) as c:
            while not stop.is_set():
                code = login_as(c, "root", "not the password").status_code
                attacker_codes.append(code)
                if code == 429:
                    throttled.add(address)
                time.sleep(0.2)

    attackers = [
        threading.Thread(target=attack, args=(f"127.0.0.{10 + i}",), daemon=True) for i in range(30)
    ]
    for t in attackers:
        t.start()
    try:
        # The throttle is engaged (each attacker reaches its limit after three guesses;
        # on a loaded machine not all of them get that far soon).
        wait_for(lambda: len(throttled) >= 3, 120, "attackers throttled")
        admin_codes = []
        with from_address(api, "127.0.0.2") as admin:
            for _ in range(5):
                admin_codes.append(login_as(admin, "root").status_code)
                time.sleep(0.5)
    finally:
        stop.set()
        for t in attackers:
            t.join(60)
    assert 429 in attacker_codes, "the attackers were throttled"
    assert admin_codes == [200] * 5, admin_codes


async def test_concurrent_guesses_cannot_bypass_the_throttle(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base, timeout=120) as c:
        answers = await asyncio.gather(
            *(
                c.post("/api/login", json={"username": "olga", "password": f"guess {i}"})
                for i in range(40)
            )
        )
    codes = [r.status_code for r in answers]
    assert codes.count(401) <= 3, codes
    assert codes.count(429) >= 37, codes
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)


def test_a_wrong_password_elsewhere_does_not_refuse_the_right_one_here(api: Api) -> None:
    with from_address(api, "127.0.0.3") as guesser:
        codes = [login_as(guesser, "olga", "wrong wrong").status_code for _ in range(5)]
        assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
    with from_address(api, "127.0.0.4") as olga:
        assert login_as(olga, "olga").status_code == 200


# --- 5. input errors -------------------------------------------------------------------------


def test_extreme_dates_and_huge_numbers_are_4xx(api: Api) -> None:
    with api.as_user("olga") as c:
        for start, end in [
            ("0001-01-01T00:00:00+01:00", "2026-01-01T00:00:00Z"),
            ("2026-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"),
            ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"),
        ]:
            r = c.get("/api/cameras/gate/timeline", params={"start": start, "end": end})
            assert r.status_code == 400, (start, end, r.status_code, r.text)
            assert r.headers["content-type"] == PROBLEM


def test_a_range_header_of_thousands_of_digits_is_ignored(footage_api: Api) -> None:
    seg = footage_api.store.segments("h264aac")[0]
    params = {"start": str(seg.start_ms), "end": str(seg.end_ms)}
    with footage_api.as_user("olga") as c:
        for header in (f"bytes={'9' * 5000}-", f"bytes=0-{'9' * 5000}", f"bytes=-{'1' * 5000}"):
            r = c.get(
                "/api/cameras/h264aac/recording.mp4", params=params, headers={"Range": header}
            )
            assert r.status_code == 200, (header[:20], r.status_code)


# --- 6. log injection ------------------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_control_characters_in_request_paths_are_escaped_in_the_log(api: Api) -> None:
    lines = Lines()
    logger = logging.getLogger("nvr.api.access")
    logger.addHandler(lines)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with api.client() as c:
            c.get("/x%0a2026-12-01 12:00:00 INFO nvr.api.access POST /api/login -> 200%0d%1b[2J")
        deadline = time.monotonic() + 10
        while not any("/x" in line for line in lines.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(old_level)
    forged = [line for line in lines.lines if "/x" in line]
    assert forged, lines.lines
    assert all("\n" not in line and "\r" not in line and "\x1b" not in line for line in forged)
    assert "\\x0a" in forged[0]


# --- 8. client address spoofing ----------------------------------------------------------------


def test_forwarded_headers_are_believed_only_from_trusted_proxies(
    users_template: Path, tmp_path: Path
) -> None:
    forged = {"X-Forwarded-For": "203.0.113.9"}
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    for a in run_with(root):
        with a.client() as c:
            r = c.post(
                "/api/login", json={"username": "vera", "password": "wrong!"}, headers=forged
            )
            assert r.status_code == 401
        clients = [e.detail.get("client") for e in a.store.audit.entries(action="login")]
        assert clients == ["127.0.0.1"], clients
    root2 = tmp_path / "store2"
    shutil.copytree(users_template, root2)
    for a in run_with(root2, trusted_proxies=("127.0.0.1",)):
        with a.client() as c:
            r = c.post(
                "/api/login", json={"username": "vera", "password": "wrong!"}, headers=forged
            )
            assert r.status_code == 401
        clients = [e.detail.get("client") for e in a.store.audit.entries(action="login")]
        assert clients == ["203.0.113.9"], clients


# --- 4. playback cost --------------------------------------------------------------------------


def footage_range(api: Api, camera: str = "h264aac") -> tuple[int, int]:
    """The longest segment of `camera` (a full 10 s one)."""
    seg = max(api.store.segments(camera), key=lambda s: s.end_ms - s.start_ms)
    return seg.start_ms, seg.end_ms


def test_ranges_cut_at_the_same_frames_share_one_plan(footage_api: Api) -> None:
    start, end = footage_range(footage_api)
    with footage_api.as_user("vera") as c:
        tags = []
        for shift in (5003, 5004, 5010):
            params = {"start": str(start + shift), "end": str(end)}
            r = c.get("/api/cameras/h264aac/recording.mp4", params=params)
            assert r.status_code == 200
            tags.append(r.headers["etag"])
        assert tags[0] == tags[1] == tags[2], "a few ms later in the same GOP: the same file"
        r = c.get(
            "/api/cameras/h264aac/recording.mp4", params={"start": str(start), "end": str(end)}
        )
        assert r.headers["etag"] != tags[0], "another keyframe: another file"


async def test_plan_builds_are_limited_per_user_and_in_total(footage_api: Api) -> None:
    from nvr.api.playback import PlanBusy, PlaybackService

    start, end = footage_range(footage_api)
    service = PlaybackService(
        footage_api.store, max_builds=2, max_builds_per_user=1, queue_wait=0
    )
    recs = []
    for i in range(4):
        rec = await service.resolve("h264aac", start + i * 2500, end)
        assert rec is not None, (i, start, end, footage_api.store.segments("h264aac"))
        recs.append(rec)
    assert len({r.etag for r in recs}) == 4
    results = await asyncio.gather(
        service.file(recs[0], user_id=1),
        service.file(recs[1], user_id=1),  # the same user's second build: refused
        service.file(recs[2], user_id=2),
        service.file(recs[3], user_id=3),  # a third build at once: refused
        service.file(recs[0], user_id=4),  # shares the first build: not counted
        return_exceptions=True,
    )
    busy = [isinstance(r, PlanBusy) for r in results]
    assert busy == [False, True, False, True, False], results
    assert all(r.retry_after > 0 for r in results if isinstance(r, PlanBusy))
    # once built, the plans are served from the cache to anyone, without limits
    again = await asyncio.gather(*(service.file(recs[0], user_id=1) for _ in range(5)))
    assert all(vf is again[0] for vf in again)


async def test_plan_builds_beyond_the_limit_wait_briefly_for_a_slot(footage_api: Api) -> None:
    """Most plans take milliseconds: a request finding every build slot busy waits for one
    (up to `queue_wait`), so 20 viewers arriving together are all served; only requests
    beyond `max_waiting` are refused at once."""
    from nvr.api.playback import PlanBusy, PlaybackService

    start, end = footage_range(footage_api)
    service = PlaybackService(
        footage_api.store, max_builds=2, max_builds_per_user=1, queue_wait=30, max_waiting=5
    )
    recs = []
    for i in range(8):
        rec = await service.resolve("h264aac", start + (i % 4) * 2500, end - (i // 4) * 1000)
        assert rec is not None
        recs.append(rec)
    assert len({r.etag for r in recs}) == 8
    results = await asyncio.gather(
        *(service.file(rec, user_id=10 + i) for i, rec in enumerate(recs)),
        return_exceptions=True,
    )
    busy = [isinstance(r, PlanBusy) for r in results]
    # two build at once, five wait for a slot and are built in turn, the eighth finds the
    # waiting room full
    assert busy == [False] * 7 + [True], results


def test_head_never_builds_a_plan_and_is_audited(footage_api: Api) -> None:
    start, end = footage_range(footage_api)
    params = {"start": str(start + 1000), "end": str(end - 1000)}
    url = "/api/cameras/h264aac/recording.mp4"
    with footage_api.as_user("vera") as c:
        r = c.head(url, params=params)
        assert r.status_code == 200 and r.headers["etag"]
        assert "content-length" not in r.headers, "the length would need the plan"
        got = c.get(url, params=params)
        assert got.status_code == 200
        r = c.head(url, params=params)
        assert int(r.headers["content-length"]) == len(got.content), "cached: length known"
    heads = [
        e
        for e in footage_api.store.audit.entries(action="playback", actor="vera")
        if e.detail.get("method") == "HEAD"
    ]
    assert len(heads) == 2


# --- 12. refused footage requests are audited ---------------------------------------------------


def test_refused_footage_requests_are_audited(footage_api: Api) -> None:
    start, end = footage_range(footage_api, "bframes")
    params = {"start": str(start), "end": str(end)}
    with footage_api.as_user("vera") as c:  # vera may see h264aac only
        r = c.get("/api/cameras/bframes/recording.mp4", params=params)
        assert r.status_code == 403
    with footage_api.as_user("audrey") as c:  # an auditor may not play footage
        r = c.get("/api/cameras/h264aac/recording.mp4", params=params)
        assert r.status_code == 403
    refused = [
        (e.actor, e.target, e.detail.get("status"))
        for e in footage_api.store.audit.entries(action="playback")
        if e.outcome == "refused"
    ]
    assert ("vera", "bframes", 403) in refused and ("audrey", "h264aac", 403) in refused
    assert footage_api.store.audit.verify() == []


# --- 9. accounts -------------------------------------------------------------------------------


def test_common_and_repetitive_passwords_are_refused_everywhere(api: Api, tmp_path: Path) -> None:
    token = api.login("root")
    with api.client(token) as c:
        for weak in ("aaaaaaaaaa", "password123", "qwertyuiop", "1q2w3e4r5t", "Password2026"):
            r = c.post("/api/users", json={"name": "vera2", "role": "viewer", "password": weak})
            assert r.status_code == 400, (weak, r.text)
            assert r.headers["content-type"] == PROBLEM
            assert "too easy to guess" in r.json()["detail"] and weak not in r.text
            r = c.patch("/api/users/vera", json={"password": weak})
            assert r.status_code == 400, (weak, r.text)
        r = c.patch("/api/users/vera", json={"password": "amber lantern under snow"})
        assert r.status_code == 200, r.text
    cfg = write_config(api.root, tmp_path / "nvr.toml")
    for args in (
        ["user", "add", "-c", str(cfg), "bob", "--role", "viewer", "--password-stdin"],
        ["user", "set", "-c", str(cfg), "vera", "--password-stdin"],
    ):
        done = nvr_here(args, tmp_path, stdin="aaaaaaaaaa\n")
        assert done.returncode != 0 and "too easy to guess" in done.stderr, done.stderr
        assert "aaaaaaaaaa" not in done.stdout + done.stderr


def test_the_last_enabled_admin_cannot_be_demoted_or_disabled(api: Api, tmp_path: Path) -> None:
    token = api.login("root")
    with api.client(token) as c:
        for change in ({"role": "operator"}, {"disabled": True}):
            r = c.patch("/api/users/root", json=change)
            assert r.status_code == 409, r.text
            assert "last enabled admin" in r.json()["detail"]
        assert c.get("/api/me").json()["role"] == "admin"  # still admin, token still valid
        r = c.patch("/api/users/olga", json={"role": "admin"})
        assert r.status_code == 200
        r = c.patch("/api/users/olga", json={"disabled": True})  # root remains
        assert r.status_code == 200
    cfg = write_config(api.root, tmp_path / "nvr.toml")
    for args in (["user", "disable", "root"], ["user", "set", "root", "--role", "viewer"]):
        done = nvr_here([*args[:2], "-c", str(cfg), *args[2:]], tmp_path)
        assert done.returncode != 0 and "last enabled admin" in done.stderr, done.stderr
    refused = api.store.audit.entries(target="user:root", outcome="refused")
    assert len(refused) == 4
    assert nvr_here(["user", "enable", "-c", str(cfg), "olga"], tmp_path).returncode == 0
    assert nvr_here(["user", "disable", "-c", str(cfg), "root"], tmp_path).returncode == 0


# --- 10. the docs page ---------------------------------------------------------------------------


def test_docs_page_loads_swagger_ui_from_our_own_origin(api: Api) -> None:
    token = api.login("audrey")
    with api.client(token) as c:
        r = c.get("/docs")
        assert r.status_code == 200, r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe" not in csp
        page = r.text
        urls = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert len(urls) == 4 and all(u.startswith("/") and not u.startswith("//") for u in urls)
        assert "cdn" not in page.lower() and "http" not in page
        # no inline script: every <script> has a src and no body
        assert re.findall(r"<script[^>]*>([^<]*)</script>", page) == ["", ""]
        for url in urls:
            got = c.get(url)
            assert got.status_code == 200 and len(got.content) > 200, url
        bundle = c.get("/docs/assets/swagger-ui-bundle.js")
        assert bundle.headers["content-type"].startswith("text/javascript")
        assert b"SwaggerUIBundle" in bundle.content
        assert "/openapi.json" in c.get("/docs/assets/init.js").text
        assert c.get("/docs/assets/consts.py").status_code == 404
    with api.client() as c:
        assert c.get("/docs/assets/swagger-ui.css").status_code == 401


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_docs_page_renders_under_its_csp_in_a_browser(api: Api, tmp_path: Path) -> None:
    """Chromium, given the user's password as Basic credentials, renders the operations
    (the page, its assets and the schema all came from our origin, under our CSP)."""
    assert CHROMIUM is not None
    url = api.base.replace("http://", f"http://audrey:{PASSWORD.replace(' ', '%20')}@") + "/docs"
    done = subprocess.run(
        [
            CHROMIUM,
            *HEADLESS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--enable-logging=stderr",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    noise = "\n".join(x for x in done.stderr.splitlines() if "dbus" not in x)
    assert "opblock-summary-path" in done.stdout, done.stdout[-2000:] + noise[-3000:]
    assert "/api/cameras/{name}/timeline" in done.stdout.replace("&ZeroWidthSpace;", "").replace(
        "\u200b", ""
    )


# --- 11. the scrape token ------------------------------------------------------------------------


def test_a_static_scrape_token_reads_metrics_and_nothing_else(
    users_template: Path, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    hash_file = tmp_path / "metrics.sha256"
    cfg = write_config(root, tmp_path / "nvr.toml")
    cfg.write_text(cfg.read_text() + f'[api]\nmetrics_token_file = "{hash_file}"\n')
    done = nvr_here(["metrics-token", "-c", str(cfg)], tmp_path)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    stored = hash_file.read_text().strip()
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
    for scraped in run_with(root, metrics_token_file=hash_file):
        with scraped.client(token) as c:
            r = c.get("/metrics")
            assert r.status_code == 200, r.text
            assert 'camera="h264aac"' in r.text and 'camera="gate"' in r.text  # every camera
            for path in ("/api/me", "/api/health", "/api/cameras", "/api/audit", "/api/users"):
                assert c.get(path).status_code == 401, path
            assert c.get("/openapi.json").status_code == 401
            assert c.get("/docs").status_code == 401
            r = c.post("/api/cameras/h264aac/links", json={"start": 0, "end": 60_000})
            assert r.status_code == 401
        with scraped.client(token + "x") as c:
            assert c.get("/metrics").status_code == 401
        # a new token replaces the old one without a restart
        new = tmp_path / "prometheus.token"
        done = nvr_here(["metrics-token", "-c", str(cfg), "--token-file", str(new)], tmp_path)
        assert done.returncode == 0, done.stderr
        assert new.stat().st_mode & 0o777 == 0o600
        assert new.read_text().strip() not in done.stdout
        with scraped.client(token) as c:
            assert c.get("/metrics").status_code == 401
        with scraped.client(new.read_text().strip()) as c:
            assert c.get("/metrics").status_code == 200
        made = scraped.store.audit.entries(action="metrics-token")
        assert len(made) == 2 and all(e.actor.startswith("cli:") for e in made)


# --- 7. playback links end with the session -----------------------------------------------------


def test_playback_links_end_with_the_session_and_live_while_renewed(
    footage_template: Path, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    skew = [0]
    offset = time.time_ns() // 1_000_000 - (footage_end(root) + 60_000)
    for served in run_api(root, clock=lambda: time.time_ns() // 1_000_000 - offset + skew[0]):
        check_links(served, skew)


def check_links(api: Api, skew: list[int]) -> None:
    """Links over a store whose clock runs `skew[0]` ms ahead (the test moves it)."""
    start, end = footage_range(api)
    first = {"Range": "bytes=0-99"}

    def new_link(c: httpx.Client) -> str:
        r = c.post("/api/cameras/h264aac/links", json={"start": start, "end": end})
        assert r.status_code == 200, r.text
        return str(r.json()["url"])

    def refused(anon: httpx.Client, url: str, why: str) -> None:
        r = anon.get(url, headers=first)
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM, r.text
        assert why in r.json()["detail"], r.text

    with api.client() as anon, api.as_user("vera") as c:
        url = new_link(c)
        assert anon.get(url, headers=first).status_code == 206
        for _ in range(3):  # renewed every 6 minutes: the same URL plays past 10 minutes
            skew[0] += 6 * 60_000
            r = c.post("/api/links/renew", json={"url": url})
            assert r.status_code == 200, r.text
            assert r.json()["url"] == url
            assert anon.get(url, headers=first).status_code == 206
        with api.as_user("olga") as other:
            assert other.post("/api/links/renew", json={"url": url}).status_code == 403
        skew[0] += 11 * 60_000  # the page stopped renewing
        refused(anon, url, "expired at")
        assert c.post("/api/links/renew", json={"url": url}).status_code == 401

        url = new_link(c)  # logout ends the session's links at once
        assert anon.get(url, headers=first).status_code == 206
        assert c.post("/api/logout").status_code == 204
        refused(anon, url, "session this playback link was made in has ended")

    new_password = "amber lantern under snow"
    with api.client() as anon, api.as_user("vera") as c, api.as_user("root") as admin:
        url = new_link(c)  # so does a password change (by an admin, from elsewhere)
        r = admin.patch("/api/users/vera", json={"password": new_password})
        assert r.status_code == 200, r.text
        refused(anon, url, "has ended")
    with api.client() as anon, api.client(api.login("vera", new_password)) as c:
        url = new_link(c)  # and disabling the account
        with api.as_user("root") as admin:
            assert admin.patch("/api/users/vera", json={"disabled": True}).status_code == 200
        refused(anon, url, "has ended")


def test_a_24_hour_plan_with_audio_costs_memory_in_proportion_to_its_output() -> None:
    """6.2 million samples (25 fps video and 48 kHz AAC for 24 h): the plan's peak of
    allocated memory stays under 64 MiB (it was 520 MiB), of which the plan keeps its moov
    and piece list; the moov's sample tables count every sample."""
    srcs = plan_cost.sources(24.0)
    start = srcs[0].start_ms + 30_500
    end = srcs[0].start_ms + 24 * 3_600_000
    tracemalloc.start()
    try:
        vf = plan(srcs, start, end)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"
    samples = sum(
        s.index.video.count + (s.index.audio.count if s.index.audio else 0) for s in srcs[1:]
    )
    assert vf.nbytes < 32 << 20 and len(vf.header) > 4 * samples
    whole = bytes(vf.header)
    for a, b in ((0, 100), (1000, 5_000_000), (len(whole) - 7, len(whole)), (3 << 20, 9 << 20)):
        assert vf.header[a:b] == whole[a:b]
    stsz = whole.find(b"stsz")
    second = whole.find(b"stsz", stsz + 4)
    counted = [int.from_bytes(whole[i + 12 : i + 16], "big") for i in (stsz, second)]
    assert sum(counted) > samples  # the first segment from its keyframe at 30 s, all others


def test_a_segment_cut_short_after_planning_is_an_error_naming_its_file(
    footage_template: Path, tmp_path: Path
) -> None:
    """A plan names its files by path; one shorter than its index says when a range is read
    is an OSError naming the file (the stream ends), never wrong bytes."""
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    store = open_store(root)
    try:
        segs = store.segments("h264aac")
        service = PlaybackService(store)
        rec = asyncio.run(service.resolve("h264aac", segs[0].start_ms, segs[1].end_ms))
        assert rec is not None
        vf = asyncio.run(service.file(rec))
        whole = b"".join(vf.chunks(len(vf.header), vf.size - 1))
        victim = Path(vf.paths[-1])
        with victim.open("r+b") as f:
            f.truncate(victim.stat().st_size // 2)
        reader = RangeReader(vf, len(vf.header), vf.size - 1, chunk=1 << 16)
        read = b""
        try:
            with pytest.raises(OSError, match=f"{victim.name} is shorter than its index says"):
                while chunk := reader.read():
                    read += chunk
        finally:
            reader.close()
        assert whole.startswith(read)  # what came before the cut was the file's own bytes
    finally:
        store.close()
