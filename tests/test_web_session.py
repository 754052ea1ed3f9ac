"""The web UI's page session without a browser (issue 17): `POST /login` sets an HttpOnly,
SameSite=Strict cookie holding a login session; the API accepts it beside bearer tokens; an
unsafe method with the cookie needs `X-CSRF-Token` (the page's `<meta name="csrf-token">`);
logout ends it; failures are throttled by the API's `LoginThrottle`; pages carry the strict
CSP; the two catalogues have the same keys and cover every key the templates and scripts use.
Real API server on loopback (tests/api_rig.py), driven with httpx."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from nvr.api import ApiContext, ApiServer
from nvr.api.middleware import PAGE_CSP
from nvr.api.web.documents import DOCUMENT_MAX_BYTES
from nvr.api.web.i18n import CATALOGUES, SCRIPT_PREFIXES
from nvr.api.web.zone import SiteZone
from nvr.config import load_config
from nvr.config.errors import ConfigError
from nvr.config.models import ApiConfig, SiteConfig
from tests.api_rig import PASSWORD, Api, free_port, make_config, open_store, self_signed
from tests.recording_rig import wait_for

WEB = Path(__file__).resolve().parent.parent / "api" / "web"


@contextlib.contextmanager
def page_login(api: Api, name: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """A client logged in through the login form, as a browser would be."""
    with httpx.Client(base_url=api.base, timeout=30) as c:
        r = c.post(
            "/login",
            data={"username": name, "password": password, "next": "/health"},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/health"
        yield c


def csrf_of(c: httpx.Client, path: str = "/") -> str:
    html = c.get(path).text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found is not None, html[:500]
    return found.group(1)


def test_login_sets_a_strict_http_only_session_cookie(api: Api) -> None:
    with page_login(api, "olga") as c:
        cookie = next(h for k, h in c.get("/api/me").request.headers.items() if k == "cookie")
        assert cookie.startswith("nvr_session=")
        r = c.post(
            "/login",
            data={"username": "olga", "password": PASSWORD},
            follow_redirects=False,
        )
        raw = r.headers["set-cookie"].lower()
        assert "httponly" in raw and "samesite=strict" in raw and "path=/" in raw
        assert "secure" not in raw  # plain HTTP on loopback; TLS adds Secure
        me = c.get("/api/me")
        assert me.status_code == 200 and me.json()["name"] == "olga"
        entries = api.store.audit.entries(action="login", actor="olga")
        assert entries[-1].detail.get("via") == "page"


def test_pages_need_a_session_and_send_the_strict_csp(api: Api) -> None:
    with httpx.Client(base_url=api.base, timeout=30) as anon:
        r = anon.get("/cameras/h264aac", follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=%2Fcameras%2Fh264aac"
        page = anon.get("/login")
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == PAGE_CSP
        assert "'unsafe-inline'" not in PAGE_CSP and "script-src 'self';" in PAGE_CSP
        assert '<input name="username"' in page.text and 'name="password"' in page.text
        assert "<script>" not in page.text and " style=" not in page.text
        css = anon.get("/static/app.css")
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]
        assert anon.get("/api/me").headers["content-security-policy"] != PAGE_CSP


def test_cookie_requests_that_change_something_need_the_csrf_header(api: Api) -> None:
    with page_login(api, "root") as c:
        token = csrf_of(c)
        body = {"name": "newbie", "role": "viewer", "password": "a fresh long passphrase 7"}
        refused = c.post("/api/users", json=body)
        assert refused.status_code == 403, refused.text
        assert "X-CSRF-Token" in refused.json()["detail"]
        wrong = c.post("/api/users", json=body, headers={"X-CSRF-Token": token[:-2] + "xx"})
        assert wrong.status_code == 403
        made = c.post("/api/users", json=body, headers={"X-CSRF-Token": token})
        assert made.status_code == 201, made.text
        # reads need no token; a bearer token needs none either (no cookie involved)
        assert c.get("/api/users").status_code == 200
    with api.as_user("root") as bearer:
        r = bearer.patch("/api/users/newbie", json={"disabled": True})
        assert r.status_code == 200, r.text


def test_another_sessions_csrf_token_does_not_pass(api: Api) -> None:
    with page_login(api, "olga") as a, page_login(api, "olga") as b:
        other = csrf_of(b)
        r = a.post(
            "/api/locks",
            json={"camera": "h264aac", "start": 1, "end": 2, "reason": "x"},
            headers={"X-CSRF-Token": other},
        )
        assert r.status_code == 403


def test_logout_ends_the_session(api: Api) -> None:
    with page_login(api, "vera") as c:
        token = csrf_of(c)
        assert c.get("/api/me").status_code == 200
        forged = c.post("/logout", data={"csrf_token": "nope"}, follow_redirects=False)
        assert forged.status_code == 403
        assert c.get("/api/me").status_code == 200
        out = c.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert "nvr_session" not in c.cookies
    # the old cookie is dead on the server too, not only forgotten by the client
    with httpx.Client(base_url=api.base, timeout=30, cookies={"nvr_session": "x" * 43}) as stale:
        assert stale.get("/api/me").status_code == 401


def test_revoked_cookie_is_refused(api: Api) -> None:
    with page_login(api, "vera") as c:
        value = c.cookies["nvr_session"]
        c.post("/logout", data={"csrf_token": csrf_of(c)}, follow_redirects=False)
    with httpx.Client(base_url=api.base, timeout=30, cookies={"nvr_session": value}) as old:
        assert old.get("/api/me").status_code == 401
        r = old.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_failed_page_logins_are_audited_and_throttled(api: Api) -> None:
    with httpx.Client(base_url=api.base, timeout=30) as c:
        answers = [
            c.post("/login", data={"username": "olga", "password": "wrong password!"})
            for _ in range(5)
        ]
        codes = [r.status_code for r in answers]
        assert codes[:3] == [401, 401, 401]
        throttled = [r for r in answers[3:] if r.status_code == 429]
        assert throttled, codes
        assert int(throttled[0].headers["Retry-After"]) >= 1
        assert 'name="username"' in throttled[0].text  # the form again, saying why
        failed = api.store.audit.entries(action="login", outcome="failed")
        assert len(failed) >= 3 and all(e.detail.get("via") == "page" for e in failed)
        # an API login from the same address is throttled too: one LoginThrottle
        assert (
            c.post("/api/login", json={"username": "olga", "password": PASSWORD}).status_code == 429
        )


def test_login_form_from_another_site_is_refused(api: Api) -> None:
    with httpx.Client(base_url=api.base, timeout=30) as c:
        r = c.post(
            "/login",
            data={"username": "olga", "password": PASSWORD},
            headers={"Origin": "http://evil.example"},
            follow_redirects=False,
        )
        assert r.status_code == 403 and "nvr_session" not in c.cookies


def test_next_never_leaves_the_site(api: Api) -> None:
    with httpx.Client(base_url=api.base, timeout=30) as c:
        for target, expected in [("//evil.example/x", "/"), ("https://evil.example", "/")]:
            r = c.post(
                "/login",
                data={"username": "olga", "password": PASSWORD, "next": target},
                follow_redirects=False,
            )
            assert r.headers["location"] == expected


def test_a_camera_the_user_may_not_see_never_appears(api: Api) -> None:
    with page_login(api, "vera") as c:
        grid = c.get("/").text
        assert 'data-camera="h264aac"' in grid
        assert "bframes" not in grid and "gate" not in grid
        assert c.get("/cameras/bframes").status_code == 403
        assert c.get("/cameras/nosuch").status_code == 403  # whether or not it exists
        assert c.get("/cameras/h264aac").status_code == 200
        assert "bframes" not in c.get("/health").text
        assert c.get("/users").status_code == 403
        assert c.get("/audit").status_code == 403
        refused = c.get("/exports", params={"lang": "en"})
        assert refused.status_code == 403
        assert refused.headers["content-security-policy"] == PAGE_CSP
        assert refused.headers["cache-control"] == "no-store"
        assert "The export register needs the role operator, auditor or admin." in refused.text


def test_every_page_sends_a_visitor_without_a_session_to_the_login(api: Api) -> None:
    with httpx.Client(base_url=api.base, timeout=30) as anon:
        for path in ("/", "/exports", "/audit?actor=olga", "/users", "/health"):
            r = anon.get(path, follow_redirects=False)
            assert r.status_code == 303, path
            assert r.headers["location"] == "/login?next=" + quote(path, safe=""), path


def test_language_by_query_then_cookie(api: Api) -> None:
    with httpx.Client(base_url=api.base, timeout=30) as c:
        assert "用户名" in c.get("/login").text  # zh-CN by default
        en = c.get("/login", params={"lang": "en"})
        assert "User name" in en.text and 'lang="en"' in en.text
        assert "User name" in c.get("/login").text  # kept by the cookie
        assert "用户名" in c.get("/login", params={"lang": "zh-CN"}).text


def test_catalogues_have_the_same_keys_and_every_key_used() -> None:
    zh, en = CATALOGUES["zh-CN"], CATALOGUES["en"]
    assert set(zh) == set(en)
    for lang, cat in CATALOGUES.items():
        for key, text in cat.items():
            assert text.strip(), (lang, key)
            assert set(re.findall(r"{(\w+)}", text)) == set(re.findall(r"{(\w+)}", en[key])), (
                lang,
                key,
            )
    used: set[str] = set()
    for path in (WEB / "templates").glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z_.-]+[a-z_])["']""", path.read_text()))
    for path in (WEB / "static").glob("*.js"):
        used |= set(re.findall(r"""Nvr\.t\(\s*"([a-z_.-]+[a-z_])"[,)]""", path.read_text()))
    used |= set(re.findall(r"""text\("([a-z_.]+)"\)""", (WEB / "pages.py").read_text()))
    missing = sorted(k for k in used if k not in en)
    assert not missing, missing
    for key in used:
        if key.startswith("js."):
            assert key.startswith(SCRIPT_PREFIXES)


def test_every_problem_code_has_a_message_in_both_catalogues() -> None:
    """Every `code` the API gives a problem (issue 17: the pages show refusals in their own
    language) has a `problem.<code>` message in zh-CN and in English, shipped to the scripts."""
    root = WEB.parent.parent
    codes = {"error", "storage", "invalid-request", "too-large", "bad-request"}
    codes |= {"not-found", "method-not-allowed", "login-required"}  # app.HTTP_CODES
    codes |= {"export-refused", "export-not-pending"}  # storage.exports.ExportRefused
    for path in [*(root / "api").rglob("*.py"), root / "storage" / "exports.py"]:
        text = path.read_text()
        codes |= set(re.findall(r'\bcode(?: =|=)\s*"([a-z-]+)"', text))
    assert {"camera-forbidden", "role-forbidden", "self-approval", "busy"} <= codes
    for code in sorted(codes):
        for lang, cat in CATALOGUES.items():
            assert f"problem.{code}" in cat, (lang, code)
    assert "problem.".startswith(SCRIPT_PREFIXES)


def test_problems_carry_a_stable_code_and_the_english_detail(api: Api) -> None:
    with page_login(api, "vera") as c:
        r = c.get("/api/cameras/bframes/timeline", params={"start": 0, "end": 60_000})
        assert r.status_code == 403
        assert r.json()["code"] == "camera-forbidden"
        assert r.json()["detail"] == "you are not permitted to see this camera"
        r = c.get("/api/exports")
        assert r.status_code == 403 and r.json()["code"] == "role-forbidden"
        assert "needs the role" in r.json()["detail"]
        r = c.post("/api/logout")
        assert r.status_code == 403 and r.json()["code"] == "csrf-missing"
        r = c.get(
            "/api/cameras/h264aac/recording.mp4",
            params={"start": "2001-01-01T00:00:00Z", "end": "2001-01-01T00:01:00Z"},
        )
        assert r.status_code == 404 and r.json()["code"] == "no-footage", r.text
        r = c.get("/api/cameras/h264aac/recording.mp4", params={"start": "x", "end": 2000})
        assert r.status_code in (400, 422)
        assert r.json()["code"] in ("bad-request", "invalid-request")
    r = httpx.get(f"{api.base}/api/cameras")
    assert r.status_code == 401 and r.json()["code"] == "login-required"


def test_a_bad_site_timezone_is_refused_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        f'[storage]\nroot = "{tmp_path}"\n[site]\ntimezone = "Asia/Chongking"\n'
        '[[cameras]]\nname = "a"\nurl = "rtsp://127.0.0.1:9/a"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "site.timezone" in text and "Asia/Chongking" in text


def test_site_zone_gives_local_times_with_their_offset() -> None:
    zone = SiteZone.of(SiteConfig(timezone="Asia/Shanghai"))
    ms = 1_794_904_000_000  # 2026-11-17T08:26:40Z
    assert zone.local(ms) == "2026-11-17 16:26:40 +08:00"
    start, end = zone.day_bounds(date(2026, 11, 17))
    assert end - start == 86_400_000 and zone.local(start) == "2026-11-17 00:00:00 +08:00"
    berlin = SiteZone.of(SiteConfig(timezone="Europe/Berlin"))
    a, b = berlin.day_bounds(date(2026, 10, 25))  # clocks go back: a 25-hour day
    assert b - a == 25 * 3_600_000
    assert SiteZone.of(SiteConfig()).name  # the system's zone by name, for the browser


def test_pages_give_scripts_the_zone_and_the_texts(api: Api) -> None:
    with page_login(api, "olga") as c:
        html = c.get("/", params={"lang": "en"}).text
        assert re.search(r'<body data-tz="[^"]+"', html)
        found = re.search(r'id="nvr-text">(.*?)</script>', html, re.S)
        assert found is not None
        texts = json.loads(found.group(1))
        assert texts["js.done"] == "Done." and texts["cause.stalled"] == "stalled"
        assert "login.password" not in texts  # only what scripts use


def test_an_approval_document_is_kept_by_its_sha256_and_handed_back(api: Api) -> None:
    letter = b"%PDF-1.4 approval letter YZ-2026-1122-07\n" * 2000  # ~80 KiB: over the JSON limit
    sha = hashlib.sha256(letter).hexdigest()
    with page_login(api, "olga") as c:
        token = csrf_of(c)
        headers = {"X-CSRF-Token": token, "X-Filename": "%E6%89%B9%E6%96%87.pdf"}
        assert c.post("/exports/documents", content=letter).status_code == 403  # no CSRF
        r = c.post("/exports/documents", content=letter, headers=headers)
        assert r.status_code == 201, r.text
        assert r.json() == {
            "sha256": sha,
            "bytes": len(letter),
            "name": "批文.pdf",
            "url": f"/exports/documents/{sha}",
        }
    kept = api.root / "exports" / "approval-documents" / sha
    assert kept.read_bytes() == letter
    assert not [p for p in kept.parent.iterdir() if p.name.startswith(".upload")]
    (entry,) = api.store.audit.entries(action="approval-document")
    assert (entry.actor, entry.target, entry.detail["bytes"]) == (
        "olga",
        f"document:{sha}",
        len(letter),
    )
    with api.as_user("audrey") as auditor:
        got = auditor.get(f"/exports/documents/{sha}")
        assert got.status_code == 200 and got.content == letter
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["content-disposition"].startswith("attachment")
        assert auditor.get(f"/exports/documents/{'0' * 64}").status_code == 404
    with api.as_user("vera") as viewer:
        assert viewer.get(f"/exports/documents/{sha}").status_code == 403
        assert viewer.post("/exports/documents", content=b"x").status_code == 403


def test_the_approval_document_upload_is_in_the_openapi_schema(api: Api) -> None:
    """`POST /exports/documents` is published (issue 17): a binary body, 201 with the
    stored document, problems for a bad body, no login, no role and too large."""
    with httpx.Client(base_url=api.base, timeout=30) as c:
        r = c.get("/openapi.json", headers={"Authorization": f"Bearer {api.login('root')}"})
    assert r.status_code == 200
    op = r.json()["paths"]["/exports/documents"]["post"]
    body = op["requestBody"]
    assert body["required"] is True
    assert body["content"] == {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
    }
    assert [p["name"] for p in op["parameters"]] == ["X-Filename"]
    ok = op["responses"]["201"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/DocumentOut"}
    assert {"400", "401", "403", "413"} <= set(op["responses"])
    assert "/exports/documents/{sha256}" not in r.json()["paths"]


def test_an_approval_document_over_the_limit_is_refused_while_streaming(api: Api) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(17):  # 17 MiB, chunked: no declared length to refuse up front
            yield b"\0" * (1 << 20)

    with api.as_user("olga") as c:
        r = c.post("/exports/documents", content=body())
        assert r.status_code == 413, r.text
        host, port = api.base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(
                f"POST /exports/documents HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Length: {DOCUMENT_MAX_BYTES + 1}\r\n\r\n".encode()
            )
            assert raw.recv(64).startswith(b"HTTP/1.1 413")  # before a byte of it was sent
        # other routes keep the small JSON limit
        assert c.post("/api/locks", content=b"{" * 70_000).status_code == 413
    folder = api.root / "exports" / "approval-documents"
    assert not folder.exists() or not list(folder.iterdir())


def test_camera_page_days_are_local_calendar_days(api: Api) -> None:
    with page_login(api, "olga") as c:
        page = c.get("/cameras/h264aac", params={"day": "2026-11-22"})
        assert page.status_code == 200
        zone = SiteZone.of(api.config.site)
        start, end = zone.day_bounds(date(2026, 11, 22))
        assert f'data-day-start="{start}" data-day-end="{end}"' in page.text
        assert "?day=2026-11-21" in page.text and "?day=2026-11-23" in page.text
        assert c.get("/cameras/h264aac", params={"day": "22/11/2026"}).status_code == 400


def test_audit_page_filters_exactly(api: Api) -> None:
    with page_login(api, "olga"):
        pass  # a page login to find
    with page_login(api, "audrey") as c:
        html = c.get("/audit", params={"action": "login", "actor": "olga"}).text
        rows = re.findall(r'<tr data-action="([^"]+)"><td>\d+</td><td>[^<]+</td><td>([^<]+)<', html)
        assert rows and all(r == ("login", "olga") for r in rows), rows
        everything = c.get("/audit").text
        assert 'data-action="login"' in everything and "audrey" in everything


def test_over_tls_the_session_cookie_is_secure(users_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    cert, key = self_signed(tmp_path)
    port = free_port()
    config = make_config(root, port).model_copy(
        update={"api": ApiConfig(listen=f"127.0.0.1:{port}", tls_certificate=cert, tls_key=key)}
    )
    store = open_store(root)
    server = ApiServer(ApiContext(config=config, store=store))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        with httpx.Client(base_url=server.url, verify=trust, timeout=30) as c:

            def answers() -> bool:
                try:
                    return c.get("/healthz").is_success
                except httpx.TransportError:
                    return False

            wait_for(answers, 20, "the HTTPS API")
            r = c.post("/login", data={"username": "olga", "password": PASSWORD})
            assert r.status_code == 303, r.text
            raw = r.headers["set-cookie"].lower()
            assert "secure" in raw and "httponly" in raw and "samesite=strict" in raw
            assert "strict-transport-security" in c.get("/login").headers
    finally:
        server.stop()
        thread.join(15)
        store.close()
