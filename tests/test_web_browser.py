"""The operator web UI in a real browser (issue 17): headless Debian Chromium driven by
Playwright against `nvr run` recording two GStreamer test cameras (tests/camsim), one of which
is stopped for a few seconds to leave a gap. Login through the form, the grid with a tile per
permitted camera, the camera page's timeline (the gap with its cause, click to play, zoom),
a lock and an export from a selection (approved by a second person in another browser
context, downloaded and verified offline), a viewer who never sees another camera, and the
language switch. Live video is checked once `api/web/static/live.js` exists (the live-view
half of issue 17). Skips when Chromium or GStreamer's RTSP server is missing."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    FilePayload,
    Locator,
    Page,
    ViewportSize,
    sync_playwright,
)

from nvr.api.web.i18n import CATALOGUES
from nvr.api.web.zone import SiteZone
from nvr.config.models import PrivacyMask
from nvr.storage import SegmentStore, now_ms
from tests.api_rig import (
    NVR,
    PASSWORD,
    TEST_HASHER,
    Api,
    footage_end,
    free_port,
    nvr,
    run_api,
)
from tests.camsim import CameraSim
from tests.recording_rig import wait_for
from tests.scripted import BOOT_OFFSET, Connection, SimulatedClock, run_script

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
LIVE_JS = Path(__file__).resolve().parent.parent / "api" / "web" / "static" / "live.js"
USERS = {
    "olga": ("operator", "*"),
    "oscar": ("operator", "*"),
    "vera": ("viewer", "front"),
    "audrey": ("auditor", ""),
    "root": ("admin", "*"),
}
ZH = CATALOGUES["zh-CN"]
EN = CATALOGUES["en"]


@dataclass
class Daemon:
    base: str
    cfg: Path
    root: Path
    token: str
    back: CameraSim
    """`back`'s camera: a test may stop it (and must start it again)."""

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


def _timeline(c: httpx.Client, camera: str) -> dict[str, Any]:
    now = int(time.time() * 1000)
    r = c.get(f"/api/cameras/{camera}/timeline", params={"start": now - 3_600_000, "end": now})
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def _outages(timeline: dict[str, Any]) -> list[dict[str, Any]]:
    """The gaps the outage ledger explains (not the time before recording began, nor the
    segment still being written)."""
    gaps: list[dict[str, Any]] = timeline["gaps"]
    return [
        g for g in gaps if any(c["cause"] not in ("unknown", "in-progress") for c in g["causes"])
    ]


@pytest.fixture(scope="module")
def daemon(camsim_clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """`nvr run` recording `front` (h264aac, with the substream h264 for the grid) and
    `back` (h264), each from its own camera simulator; `back`'s camera is stopped for 6 s
    once both record, then both record on until the segment after the gap is closed."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Debian's chromium is not installed")
    tmp = tmp_path_factory.mktemp("web")
    front = CameraSim(camsim_clips, mounts=["h264aac", "h264"])  # h264: its substream
    back = CameraSim(camsim_clips, mounts=["h264"])
    front.start()
    back.start()
    port = free_port()
    cfg = tmp / "nvr.toml"
    cfg.write_text(
        f'[storage]\nroot = "{tmp / "data"}"\n'
        '[site]\nname = "web test"\ntimezone = "Asia/Shanghai"\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\nwebrtc_addresses = ["127.0.0.1"]\n'
        f'[[cameras]]\nname = "front"\nurl = "{front.url("h264aac")}"\nsegment_seconds = 10\n'
        f'live_url = "{front.url("h264")}"\n'
        f'[[cameras]]\nname = "back"\nurl = "{back.url("h264")}"\nsegment_seconds = 10\n'
    )
    for name, (role, cams) in USERS.items():
        args = ["user", "add", "-c", str(cfg), name, "--role", role, "--password-stdin"]
        if cams:
            args += ["--cameras", cams]
        made = nvr(args, tmp, stdin=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
    log = (tmp / "daemon.log").open("wb")
    proc = subprocess.Popen([*NVR, "run", "-c", str(cfg)], cwd=tmp, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, 30, "the daemon's API")
        r = httpx.post(f"{base}/api/login", json={"username": "root", "password": PASSWORD})
        assert r.status_code == 200, r.text
        d = Daemon(base, cfg, tmp / "data", r.json()["token"], back)
        with d.api() as c:

            def recorded(n: int) -> bool:
                cams = {x["name"]: x for x in c.get("/api/cameras").json()}
                return (
                    all(
                        len(_timeline(c, name)["spans"]) >= 1 and cams[name]["state"] == "recording"
                        for name in ("front", "back")
                    )
                    and n >= 0
                )

            wait_for(lambda: recorded(0), 60, "both cameras to record a segment")
            back.stop()
            time.sleep(6)  # the camera is off for a while: the gap the timeline must show
            back.start()

            def gap_closed() -> bool:
                tl = _timeline(c, "back")
                return bool(_outages(tl)) and len(tl["spans"]) >= 2

            wait_for(gap_closed, 60, "the gap in back's timeline, and footage after it")
        yield d
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            log.close()
            front.stop()
            back.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--allow-loopback-in-peer-connection",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield b
        finally:
            b.close()


@dataclass
class Session:
    context: BrowserContext
    page: Page
    problems: list[str]


class _Served(Protocol):
    base: str


def log_in(
    browser: Browser,
    daemon: _Served,
    name: str,
    init_script: str = "",
    viewport: ViewportSize | None = None,
) -> Session:
    """A fresh browser context logged in as `name` through the login form."""
    context = browser.new_context(
        base_url=daemon.base,
        accept_downloads=True,
        viewport=viewport or {"width": 1280, "height": 720},
    )
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"pageerror {err}"))
    page.on(
        "console",
        lambda m: problems.append(f"console {m.text}") if m.type == "error" else None,
    )
    page.goto("/login")
    page.fill('input[name="username"]', name)
    page.fill('input[name="password"]', PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_url(f"{daemon.base}/")
    return Session(context, page, problems)


def csp_violations(s: Session) -> list[str]:
    return [p for p in s.problems if "Content Security Policy" in p or "Refused to" in p]


def test_login_and_the_grid_shows_a_tile_per_camera(browser: Browser, daemon: Daemon) -> None:
    s = log_in(browser, daemon, "olga")
    try:
        page = s.page
        tiles = page.locator(".tile[data-camera]")
        assert sorted(tiles.evaluate_all("ts => ts.map(t => t.dataset.camera)")) == [
            "back",
            "front",
        ]
        for name in ("front", "back"):
            tile = page.locator(f'[data-camera="{name}"]')
            assert tile.locator("video").count() == 1
            assert tile.locator("[data-badge]").get_attribute("data-badge") == "recording"
            assert tile.locator(".state").inner_text() == ZH["state.recording"]
            picture = tile.locator("[data-picture]")  # when the camera's picture is checked
            if picture.count():
                state = picture.get_attribute("data-picture") or ""
                assert picture.inner_text() == ZH.get(f"picture.{state}", state)
        # back was stopped: its last gap is on its tile, with the cause's name
        last_gap = page.locator('[data-camera="back"] .last-gap').inner_text()
        assert "+08:00" in last_gap
        assert any(ZH[k] in last_gap for k in ZH if k.startswith("cause.")), last_gap
        assert page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert "+08:00" in page.locator("footer").inner_text()
        assert csp_violations(s) == []
    finally:
        s.context.close()


def _zoom_to(page: Page, selector: str, steps: int = 24) -> None:
    """Wheel-zoom the timeline around the middle of the element `selector`."""
    box = page.locator(selector).first.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(steps):
        page.mouse.wheel(0, -100)
    page.wait_for_timeout(200)


def _click_to_play(page: Page, span: Locator, at: float, timeout_ms: int) -> None:
    """Click the timeline's `span` at the fraction `at` of its width; wait until the player
    has a file and is 1.5 s into it."""
    box = span.bounding_box()
    assert box is not None and box["width"] > 20, box
    page.mouse.click(box["x"] + box["width"] * at, box["y"] + box["height"] / 2)
    page.wait_for_function(
        "() => { const v = document.getElementById('playback');"
        " return v.dataset.fileStart && v.currentTime > 1.5 }",
        timeout=timeout_ms,
    )


def test_the_timeline_shows_the_gap_with_its_cause_and_a_click_plays(
    browser: Browser, daemon: Daemon
) -> None:
    with daemon.api() as c:
        tl = _timeline(c, "back")
    gaps = _outages(tl)
    assert gaps
    s = log_in(browser, daemon, "olga")
    try:
        page = s.page
        page.goto("/cameras/back")
        page.wait_for_selector("#gaps li.gap-item")
        items = page.locator("#gaps li.gap-item")
        shown = items.evaluate_all(
            "xs => xs.map(x => [Number(x.dataset.start), x.dataset.causes, x.textContent])"
        )
        for g in gaps:
            match = [x for x in shown if x[0] == g["start_ms"]]
            assert match, (g, shown)
            causes = [cause["cause"] for cause in g["causes"]]
            assert match[0][1] == ",".join(causes)
            for cause in causes:
                assert ZH.get(f"cause.{cause}", cause) in match[0][2]
        assert page.locator("#track .gap").count() >= 1
        assert page.locator("#track .span").count() >= 2
        # zoom in around the gap, then click the footage after it
        _zoom_to(page, f'#track .gap[data-start="{gaps[-1]["start_ms"]}"]')
        _click_to_play(page, page.locator("#track .span").last, 0.3, 30_000)
        video = page.locator("#playback")
        start = int(video.get_attribute("data-start") or 0)
        last = tl["spans"][-1]
        after_gap = [sp for sp in tl["spans"] if sp["start_ms"] >= gaps[-1]["end_ms"]]
        assert after_gap and after_gap[0]["start_ms"] <= start <= max(last["end_ms"], start)
        first = page.evaluate("Number(document.getElementById('playback').dataset.wallclock)")
        page.wait_for_timeout(1500)
        later = page.evaluate("Number(document.getElementById('playback').dataset.wallclock)")
        assert later > first >= start - 1100  # from the keyframe at or before the click
        assert page.locator("#wallclock").inner_text().endswith("+08:00")
        if LIVE_JS.exists():  # the camera page's live view of the main stream
            page.wait_for_function(
                "() => { const v = document.getElementById('live');"
                " return v.dataset.liveMode && v.currentTime > 0.5 }",
                timeout=30_000,
            )
        # in and out points from the playing video
        page.click("#mark-in")
        page.wait_for_timeout(1200)
        page.click("#mark-out")
        a = int(page.locator("#in-text").get_attribute("data-ms") or 0)
        b = int(page.locator("#out-text").get_attribute("data-ms") or 0)
        assert start - 1100 <= a < b, (a, b)
        assert page.locator("#in-text").inner_text().endswith("+08:00")
        assert csp_violations(s) == []
    finally:
        s.context.close()


def _select(page: Page, camera: str, a: float, b: float) -> tuple[int, int]:
    """Open `camera`'s page, zoom to its last span and drag across it from fraction `a` to
    `b` of its width: the in/out points."""
    page.goto(f"/cameras/{camera}")
    page.wait_for_selector("#track .span")
    _zoom_to(page, "#track .span >> nth=-1")
    span = page.locator("#track .span").last
    box = span.bounding_box()
    assert box is not None and box["width"] > 20, box
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * a, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * b, y, steps=8)
    page.mouse.up()
    start = int(page.locator("#in-text").get_attribute("data-ms") or 0)
    end = int(page.locator("#out-text").get_attribute("data-ms") or 0)
    assert 0 < start < end
    return start, end


def said(page: Page, key: str) -> None:
    """Wait until the page's message line says `key` (the text before its first value)."""
    page.wait_for_selector(f'#message.ok:has-text("{ZH[key].split("{")[0]}")')


def test_a_lock_from_a_selection_appears_in_nvr_locks(browser: Browser, daemon: Daemon) -> None:
    s = log_in(browser, daemon, "olga")
    try:
        page = s.page
        start, end = _select(page, "front", 0.2, 0.7)
        page.fill('#lock-form input[name="reason"]', "fight at the gate, browser test")
        page.fill('#lock-form input[name="case_id"]', "C-2026-17")
        page.click("#lock-form button[type=submit]")
        said(page, "js.locked")
        with daemon.api() as c:
            locks = [lk for lk in c.get("/api/locks").json() if lk["case_id"] == "C-2026-17"]
        assert len(locks) == 1
        assert (locks[0]["camera"], locks[0]["start_ms"], locks[0]["end_ms"]) == (
            "front",
            start,
            end,
        )
        assert locks[0]["created_by"] == "olga"
        listed = nvr(["locks", "-c", str(daemon.cfg)], daemon.cfg.parent)
        assert listed.returncode == 0, listed.stderr
        assert "fight at the gate, browser test" in listed.stdout
        assert "case C-2026-17" in listed.stdout
        page.wait_for_selector("#marks .lock")  # the timeline shows it after the lock
        assert csp_violations(s) == []
    finally:
        s.context.close()


def test_an_export_requested_by_one_is_approved_by_another_and_verifies(
    browser: Browser, daemon: Daemon, tmp_path: Path
) -> None:
    olga = log_in(browser, daemon, "olga")
    oscar = log_in(browser, daemon, "oscar")
    try:
        page = olga.page
        start, end = _select(page, "front", 0.1, 0.6)
        form = "#export-form"
        page.fill(f'{form} input[name="purpose"]', "traffic accident, browser test")
        page.fill(f'{form} input[name="recipient"]', "Yuzhong police, officer Li")
        page.fill(f'{form} input[name="approval_document"]', "YZ-2026-1202-17")
        page.fill(f'{form} input[name="requester_work_id"]', "OP-1001")
        letter = b"%PDF-1.4 approval YZ-2026-1202-17 signed by the chief\n" * 100
        page.set_input_files(
            f'{form} input[name="document_file"]',
            files=FilePayload(name="approval.pdf", mimeType="application/pdf", buffer=letter),
        )
        page.click(f"{form} button[type=submit]")
        said(page, "js.export_requested")
        with daemon.api() as c:
            mine = [e for e in c.get("/api/exports").json() if e["requester"] == "olga"]
        assert mine and (mine[0]["start_ms"], mine[0]["end_ms"]) == (start, end)
        sha = hashlib.sha256(letter).hexdigest()
        assert mine[0]["approval_document"] == (f"YZ-2026-1202-17 [approval.pdf, sha256:{sha}]")
        export_id = mine[0]["id"]
        # olga cannot approve her own request: it is not in her inbox
        page.goto("/exports")
        assert page.locator(f'.pending[data-export="{export_id}"]').count() == 0
        # oscar, in his own browser context, approves it
        other = oscar.page
        other.goto("/exports")
        item = other.locator(f'.pending[data-export="{export_id}"]')
        with other.expect_download() as shown:  # the approver reads the document first
            item.locator(f'a.document[data-sha256="{sha}"]').click()
        assert Path(shown.value.path()).read_bytes() == letter
        item.locator('input[name="approver_work_id"]').first.fill("OP-2002")
        item.locator("button[name=approve]").click()
        row = other.locator(f'tr[data-export="{export_id}"]')

        def ready() -> bool:
            other.reload()
            return row.get_attribute("data-state") == "ready"

        wait_for(ready, 60, "the package to be built")
        with other.expect_download() as got:
            row.locator("a.download").click()
        package = tmp_path / "package.zip"
        got.value.save_as(package)
        with daemon.api() as c:
            key = c.get("/api/signing-key")
            assert key.status_code == 200
        key_file = tmp_path / "key.pem"
        key_file.write_bytes(key.content)
        ok = nvr(["verify-export", str(package), "--key", str(key_file)], tmp_path)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        with zipfile.ZipFile(package) as z:
            manifest = json.loads(z.read("manifest.json"))
        assert sha in json.dumps(manifest)  # the signed manifest names the document
        with daemon.api() as c:
            done = c.get(f"/api/exports/{export_id}").json()
            audit = c.get("/api/audit", params={"action": "export-download"}).json()
        assert (done["requester"], done["approver"]) == ("olga", "oscar")
        assert [e["actor"] for e in audit if e["target"] == f"export:{export_id}"] == ["oscar"]
        assert csp_violations(olga) == [] and csp_violations(oscar) == []
    finally:
        olga.context.close()
        oscar.context.close()


def test_a_viewer_never_sees_a_camera_it_may_not(browser: Browser, daemon: Daemon) -> None:
    s = log_in(browser, daemon, "vera")
    try:
        page = s.page
        tiles = page.locator(".tile[data-camera]")
        assert tiles.evaluate_all("ts => ts.map(t => t.dataset.camera)") == ["front"]
        assert "back" not in page.content()
        r = page.goto("/cameras/back")
        assert r is not None and r.status == 403
        assert ZH["error.camera_forbidden"] in page.locator("main").inner_text()
        status = page.evaluate(
            "async () => (await fetch('/api/cameras/back/timeline?start=0&end=1000')).status"
        )
        assert status == 403
        if LIVE_JS.exists():
            whep = page.evaluate(
                "async () => (await fetch('/api/cameras/back/whep', {method: 'POST',"
                " headers: {'Content-Type': 'application/sdp', 'X-CSRF-Token':"
                " document.querySelector('meta[name=csrf-token]').content},"
                " body: 'v=0\\r\\n'})).status"
            )
            assert whep == 403
            assert page.evaluate(WS_OPENS, "back") != "open"
            assert page.evaluate(WS_OPENS, "front") == "open"  # the check can tell
        page.goto("/health")
        assert page.locator('[data-camera-health="back"]').count() == 0
        assert page.locator('[data-camera-health="front"]').count() == 1
    finally:
        s.context.close()


def _request_export(page: Page, camera: str, purpose: str) -> int:
    """Select part of `camera`'s last span and request its export; the request's id."""
    _select(page, camera, 0.2, 0.4)
    form = "#export-form"
    page.fill(f'{form} input[name="purpose"]', purpose)
    page.fill(f'{form} input[name="recipient"]', "nobody in particular")
    page.fill(f'{form} input[name="approval_document"]', "DOC-1")
    page.fill(f'{form} input[name="requester_work_id"]', "OP-1001")
    page.click(f"{form} button[type=submit]")
    said(page, "js.export_requested")
    text = page.locator("#message").inner_text()
    found = re.search(r"#(\d+)", text)
    assert found is not None, text
    return int(found.group(1))


def test_an_export_is_rejected_by_the_second_person_or_withdrawn_by_the_first(
    browser: Browser, daemon: Daemon
) -> None:
    olga = log_in(browser, daemon, "olga")
    oscar = log_in(browser, daemon, "oscar")
    audrey = log_in(browser, daemon, "audrey")
    try:
        rejected = _request_export(olga.page, "back", "to be rejected")
        withdrawn = _request_export(olga.page, "back", "to be withdrawn")
        other = oscar.page
        other.goto("/exports")
        item = other.locator(f'.pending[data-export="{rejected}"]')
        reject = item.locator("form", has=other.locator("button[name=reject]"))
        reject.locator('input[name="approver_work_id"]').fill("OP-2002")
        reject.locator('input[name="reason"]').fill("no court order attached")
        with other.expect_navigation():
            reject.locator("button[name=reject]").click()
        row = other.locator(f'tr[data-export="{rejected}"]')
        assert row.get_attribute("data-state") == "rejected"
        assert other.locator(f'.pending[data-export="{rejected}"]').count() == 0
        # only the requester may withdraw: oscar has no button, olga has
        assert other.locator(f'tr[data-export="{withdrawn}"] form').count() == 0
        page = olga.page
        page.goto("/exports")
        mine = page.locator(f'tr[data-export="{withdrawn}"]')
        mine.locator('input[name="reason"]').fill("asked for the wrong camera")
        with page.expect_navigation():
            mine.locator("button[type=submit]").click()
        assert page.locator(f'tr[data-export="{withdrawn}"]').get_attribute("data-state") == (
            "cancelled"
        )
        # the auditor reads the whole register, decides nothing, downloads nothing
        audit = audrey.page
        audit.goto("/exports")
        states = audit.locator("tr[data-export]").evaluate_all(
            "rs => Object.fromEntries(rs.map(r => [r.dataset.export, r.dataset.state]))"
        )
        assert states[str(rejected)] == "rejected" and states[str(withdrawn)] == "cancelled"
        assert audit.locator(".pending").count() == 0 and audit.locator("a.download").count() == 0
        with daemon.api() as c:
            done = c.get(f"/api/exports/{rejected}").json()
        assert (done["state"], done["approver"]) == ("rejected", "oscar")
        for s in (olga, oscar, audrey):
            assert csp_violations(s) == []
    finally:
        for s in (olga, oscar, audrey):
            s.context.close()


WS_OPENS = """camera => new Promise(done => {
  const ws = new WebSocket('ws://' + location.host + '/api/cameras/' + camera + '/live');
  ws.onopen = () => { done('open'); ws.close(); };
  ws.onerror = () => done('error');
  ws.onclose = e => done('closed ' + e.code);
})"""


def test_admin_manages_users_in_the_users_page(browser: Browser, daemon: Daemon) -> None:
    s = log_in(browser, daemon, "root")
    try:
        page = s.page
        page.goto("/users")
        add = page.locator("form.panel")
        add.locator('input[name="name"]').fill("newcomer")
        add.locator('select[name="role"]').select_option("viewer")
        add.locator('input[name="cameras"]').fill("front")
        add.locator('input[name="password"]').fill("a long and fresh passphrase 17")
        with page.expect_navigation():
            add.locator("button[type=submit]").click()
        row = page.locator('tr[data-user="newcomer"]')
        assert row.count() == 1
        with daemon.api() as c:
            made = {u["name"]: u for u in c.get("/api/users").json()}["newcomer"]
        assert (made["role"], made["cameras"]) == ("viewer", ["front"])
        row.locator('select[name="role"]').select_option("operator")
        with page.expect_navigation():
            row.locator('select[name="role"] ~ button').click()
        with daemon.api() as c:
            changed = {u["name"]: u for u in c.get("/api/users").json()}["newcomer"]
        assert changed["role"] == "operator"
        assert csp_violations(s) == []
    finally:
        s.context.close()


def test_health_page_shows_forecast_disk_clock_and_cameras(
    browser: Browser, daemon: Daemon
) -> None:
    s = log_in(browser, daemon, "olga")
    try:
        page = s.page
        page.goto("/health")
        assert page.locator("[data-status]").get_attribute("data-status") in (
            "ok",
            "degraded",
            "critical",
        )
        assert page.locator("[data-forecast]").count() == 1
        assert "GB" in page.locator("main").inner_text()
        assert page.locator("[data-camera-health]").count() == 2
    finally:
        s.context.close()


def test_chinese_and_english_switch(browser: Browser, daemon: Daemon) -> None:
    s = log_in(browser, daemon, "audrey")
    try:
        page = s.page
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        assert page.locator("h1").inner_text() == ZH["grid.title"]
        page.click('[data-lang-switch="en"]')
        page.wait_for_selector('html[lang="en"]')
        assert page.locator("h1").inner_text() == EN["grid.title"]
        page.goto("/audit")  # the choice is kept (cookie)
        assert page.locator("h1").inner_text() == EN["audit.title"]
        assert page.locator("tr[data-action=login]").count() >= 1
        page.click('[data-lang-switch="zh-CN"]')
        assert page.locator("h1").inner_text() == ZH["audit.title"]
    finally:
        s.context.close()


LIVE_NEEDED = pytest.mark.skipif(
    not LIVE_JS.exists(), reason="live view (api/web/static/live.js) has not landed yet"
)

FRAME_STATS = """v => {
  const c = document.createElement('canvas'); c.width = 64; c.height = 36;
  const g = c.getContext('2d'); g.drawImage(v, 0, 0, 64, 36);
  const d = g.getImageData(0, 0, 64, 36).data; let sum = 0, max = 0;
  for (let i = 0; i < d.length; i += 4) { const y = (d[i] + d[i+1] + d[i+2]) / 3;
    sum += y; if (y > max) max = y; }
  return {mean: sum / (d.length / 4), max, t: v.currentTime, mode: v.dataset.liveMode};
}"""


def _tiles_play_live(s: Session) -> dict[str, str]:
    modes = {}
    for name in ("front", "back"):
        video = s.page.locator(f'[data-camera="{name}"] video')
        s.page.wait_for_function(
            "v => v.dataset.liveMode && v.currentTime > 0.5 && v.videoWidth > 0",
            arg=video.element_handle(),
            timeout=30_000,
        )
        first = video.evaluate(FRAME_STATS)
        s.page.wait_for_timeout(1500)
        later = video.evaluate(FRAME_STATS)
        assert later["t"] > first["t"], (name, first, later)  # it advances
        assert later["max"] > 40 and later["mean"] > 10, (name, later)  # not black
        modes[name] = str(later["mode"])
    return modes


@LIVE_NEEDED
def test_grid_tiles_play_live_over_webrtc(browser: Browser, daemon: Daemon) -> None:
    s = log_in(browser, daemon, "olga")
    try:
        assert _tiles_play_live(s) == {"front": "webrtc", "back": "webrtc"}
        assert csp_violations(s) == []
    finally:
        s.context.close()


@LIVE_NEEDED
def test_grid_tiles_fall_back_to_mse_without_webrtc(browser: Browser, daemon: Daemon) -> None:
    no_webrtc = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;"
    s = log_in(browser, daemon, "olga", init_script=no_webrtc)
    try:
        assert _tiles_play_live(s) == {"front": "mse", "back": "mse"}
        assert csp_violations(s) == []
    finally:
        s.context.close()


@LIVE_NEEDED
def test_tiles_start_when_scrolled_into_view_and_stop_when_out(
    browser: Browser, daemon: Daemon
) -> None:
    s = log_in(browser, daemon, "olga", viewport={"width": 600, "height": 420})
    try:
        page = s.page
        first = page.locator(".tile[data-camera]").first
        last = page.locator(".tile[data-camera]").last
        page.wait_for_function(
            "t => ['webrtc', 'mse'].includes(t.dataset.live)", arg=first.element_handle()
        )
        assert last.get_attribute("data-live") is None  # below the fold: never started
        last.scroll_into_view_if_needed()
        page.wait_for_function(
            "t => ['webrtc', 'mse'].includes(t.dataset.live)", arg=last.element_handle()
        )
        page.wait_for_function("t => t.dataset.live === 'stopped'", arg=first.element_handle())
        first.scroll_into_view_if_needed()
        page.wait_for_function(
            "t => ['webrtc', 'mse'].includes(t.dataset.live)", arg=first.element_handle()
        )
    finally:
        s.context.close()


@LIVE_NEEDED
def test_an_open_grid_follows_the_users_cameras_and_withdrawn_live_views_end(
    browser: Browser, daemon: Daemon
) -> None:
    """An admin changes a viewer's cameras while the viewer's grid is open (issue 17): a
    granted camera gets its tile and plays; a withdrawn one loses its tile, and its live
    views end on the server at once (WebRTC and MSE, audited `permission withdrawn`)."""
    no_webrtc = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;"
    rtc = log_in(browser, daemon, "vera")
    mse = log_in(browser, daemon, "vera", init_script=no_webrtc)
    since = int(time.time() * 1000)
    try:
        for s in (rtc, mse):
            s.page.wait_for_function(
                "() => { const v = document.querySelector('[data-camera=front] video');"
                " return v && v.dataset.liveMode && v.currentTime > 0.5 }",
                timeout=30_000,
            )
        with daemon.api() as c:
            r = c.patch("/api/users/vera", json={"cameras": ["front", "back"]})
            assert r.status_code == 200, r.text
        for s in (rtc, mse):
            s.page.wait_for_function(
                "() => { const v = document.querySelector('[data-camera=back] video');"
                " return v && v.dataset.liveMode && v.currentTime > 0.5 }",
                timeout=40_000,
            )
        with daemon.api() as c:
            r = c.patch("/api/users/vera", json={"cameras": ["back"]})
            assert r.status_code == 200, r.text
            ended = [
                e
                for e in c.get("/api/audit", params={"action": "live-end"}).json()
                if e["actor"] == "vera" and e["target"] == "front" and e["at_ms"] >= since
            ]

            def withdrawn() -> list[str]:
                entries = c.get("/api/audit", params={"action": "live-end"}).json()
                return sorted(
                    e["detail"]["via"]
                    for e in entries
                    if e["actor"] == "vera"
                    and e["target"] == "front"
                    and e["at_ms"] >= since
                    and e["detail"]["reason"] == "permission withdrawn"
                )

            # ended by the server, before any page noticed
            wait_for(lambda: withdrawn() == ["mse", "webrtc"], 15, "both live views to end")
            assert not [e for e in ended if e["detail"]["reason"] != "permission withdrawn"]
        for s in (rtc, mse):
            s.page.wait_for_selector(".tile[data-camera=front]", state="detached", timeout=40_000)
            tiles = s.page.locator(".tile[data-camera]")
            assert tiles.evaluate_all("ts => ts.map(t => t.dataset.camera)") == ["back"]
            assert csp_violations(s) == [], s.problems
    finally:
        rtc.context.close()
        mse.context.close()
        with daemon.api() as c:
            c.patch("/api/users/vera", json={"cameras": ["front"]})


def test_audit_records_the_pages_logins(daemon: Daemon) -> None:
    with daemon.api() as c:
        entries = c.get("/api/audit", params={"action": "login"}).json()
    assert any(e["detail"].get("via") == "page" for e in entries), json.dumps(entries)[:500]


def test_a_tile_turns_to_outage_when_its_camera_stops(browser: Browser, daemon: Daemon) -> None:
    """Last in the module: it stops `back`'s camera (and starts it again)."""
    s = log_in(browser, daemon, "olga")
    try:
        page = s.page
        badge = page.locator('[data-camera="back"] [data-badge]')
        assert badge.get_attribute("data-badge") == "recording"
        daemon.back.stop()
        try:
            page.wait_for_function(
                "b => b.dataset.badge === 'outage'", arg=badge.element_handle(), timeout=40_000
            )  # the grid refreshes its states every 10 s, without a reload
            state = page.locator('[data-camera="back"]').get_attribute("data-state")
            assert state != "recording"
            assert (
                page.locator('[data-camera="front"] [data-badge]').get_attribute("data-badge")
                == "recording"
            )
        finally:
            daemon.back.start()
        page.wait_for_function(
            "b => b.dataset.badge === 'recording'", arg=badge.element_handle(), timeout=60_000
        )
    finally:
        s.context.close()


def test_picture_findings_show_on_the_timeline(browser: Browser, footage_api: Api) -> None:
    """A picture finding (issue 18) on the recorded footage: a mark on the timeline and a
    line saying what and when (footage recorded in seconds by tests/scripted.py)."""
    store = footage_api.store
    end = max(seg.end_ms for seg in store.segments("h264aac"))
    store.pictures.open("h264aac", "covered", end - 20_000, end - 19_000, 0.9, "lens covered", None)
    day = SiteZone.of(footage_api.config.site).today(end)
    s = log_in(browser, footage_api, "olga")
    try:
        page = s.page
        page.goto(f"/cameras/h264aac?day={day.isoformat()}")
        page.wait_for_selector("#marks .picture[data-kind=covered]")
        line = page.locator("#pictures li[data-kind=covered]").inner_text()
        assert ZH["picture.covered"] in line and "lens covered" in line
        assert csp_violations(s) == []
    finally:
        s.context.close()


def test_a_masked_user_plays_footage_while_the_masked_copy_is_made(
    browser: Browser, footage_template: Path, tmp_path: Path
) -> None:
    """A user behind a camera's privacy mask (issue 18) clicks the timeline and the video
    plays (the masked copy is streamed as it is encoded): the time advances and the drawn
    picture is black in the masked quarter and not elsewhere."""
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    offset = time.time_ns() // 1_000_000 - (footage_end(root) + 60_000)
    quarter = PrivacyMask(points=[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)])
    for api in run_api(
        root,
        clock=lambda: time.time_ns() // 1_000_000 - offset,
        privacy_masks={"h264aac": [quarter]},
    ):
        day = SiteZone.of(api.config.site).today(footage_end(root))
        s = log_in(browser, api, "vera")
        try:
            page = s.page
            page.goto(f"/cameras/h264aac?day={day.isoformat()}")
            _zoom_to(page, "#track .span")
            _click_to_play(page, page.locator("#track .span").first, 0.2, 60_000)
            first = page.evaluate("document.getElementById('playback').currentTime")
            page.wait_for_timeout(1000)
            assert page.evaluate("document.getElementById('playback').currentTime") > first
            levels = page.evaluate(
                """() => {
                  const v = document.getElementById('playback');
                  const c = document.createElement('canvas');
                  c.width = v.videoWidth; c.height = v.videoHeight;
                  const g = c.getContext('2d');
                  g.drawImage(v, 0, 0);
                  const mean = (x, y, w, h) => {
                    const d = g.getImageData(x, y, w, h).data;
                    let t = 0;
                    for (let i = 0; i < d.length; i += 4) t += d[i] + d[i + 1] + d[i + 2];
                    return t / (d.length / 4) / 3;
                  };
                  const w = c.width, h = c.height;
                  return [mean(4, 4, w / 2 - 8, h / 2 - 8),
                          mean(w / 2 + 4, h / 2 + 4, w / 2 - 8, h / 2 - 8)];
                }"""
            )
            masked, rest = levels
            assert masked <= 6 and rest > 20, levels
            # The API's common refusals shown in the page's language (zh-CN by default):
            # mapped from the problem's code, the English detail kept beside it.
            end = footage_end(root)
            shown = page.evaluate(
                """async (end) => {
                  const tries = {
                    "camera-forbidden": ["GET", "/api/cameras/bframes/timeline?start=0&end=9"],
                    "role-forbidden": ["GET", "/api/exports"],
                    "masked-range-too-long": ["GET", "/api/cameras/h264aac/recording.mp4?start="
                      + (end - 3600000) + "&end=" + end],
                    "no-footage": ["GET", "/api/cameras/h264aac/recording.mp4"
                      + "?start=2001-01-01T00:00:00Z&end=2001-01-01T00:01:00Z"],
                  };
                  const out = {};
                  for (const [k, [m, u]] of Object.entries(tries)) {
                    try { await Nvr.api(m, u); out[k] = null; }
                    catch (e) { out[k] = [e.code, e.message, e.detail]; }
                  }
                  return out;
                }""",
                end,
            )
            for code, got in shown.items():
                assert got is not None, code
                assert got[0] == code and got[1] == ZH[f"problem.{code}"], got
                assert got[2] and got[2] != got[1]  # the English detail, for API clients
            assert csp_violations(s) == [], s.problems
        finally:
            s.context.close()
        played = [
            e for e in api.store.audit.entries() if e.actor == "vera" and e.action == "playback"
        ]
        assert played and all(e.detail.get("masked") is True for e in played)
        assert any(e.detail.get("progressive") is True for e in played)


def test_h265_footage_plays_as_an_h264_copy_in_chromium(
    browser: Browser, users_template: Path, scripted_clips: Path, tmp_path: Path
) -> None:
    """Chromium on Linux cannot decode H.265: the camera page asks for an H.264 copy
    (`h264=true`), which the server makes on demand (streamed while it is encoded) and says
    so; the <video> plays it, the drawn picture is not black, the original segment files are
    untouched and the playback is audited as transcoded."""
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    start = now_ms() - 3_600_000
    clock = SimulatedClock(start)
    store = SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        clock=clock.wall_ms,
        uptime=lambda: clock.wall_ms() - BOOT_OFFSET,
        password_hasher=TEST_HASHER,
    )
    try:
        run_script(store, scripted_clips, clock, [Connection("h265", seconds=14)], camera="gate")
        segments = store.segments("gate")
        assert segments and all(s.video_codec == "hevc" for s in segments)
        originals = {s.path: hashlib.sha256(s.path.read_bytes()).hexdigest() for s in segments}
        end = max(s.end_ms for s in segments)
    finally:
        store.close()
    offset = time.time_ns() // 1_000_000 - (end + 60_000)
    for api in run_api(root, clock=lambda: time.time_ns() // 1_000_000 - offset):
        day = SiteZone.of(api.config.site).today(end)
        s = log_in(browser, api, "olga")
        try:
            page = s.page
            assert page.evaluate(
                """() => document.createElement('video')
                     .canPlayType('video/mp4; codecs="hvc1.1.6.L93.B0"')"""
            ) == "", "this Chromium decodes H.265: the test shows nothing"
            page.goto(f"/cameras/gate?day={day.isoformat()}")
            _zoom_to(page, "#track .span")
            _click_to_play(page, page.locator("#track .span").first, 0.2, 60_000)
            video = page.locator("#playback")
            assert video.get_attribute("data-transcoded") == "h264"
            said = ZH["js.playing_transcoded"].split("{time}")[1]
            assert said in page.locator("#message").inner_text()
            first = page.evaluate("document.getElementById('playback').currentTime")
            page.wait_for_timeout(1000)
            assert page.evaluate("document.getElementById('playback').currentTime") > first
            level = page.evaluate(
                """() => {
                  const v = document.getElementById('playback');
                  const c = document.createElement('canvas');
                  c.width = v.videoWidth; c.height = v.videoHeight;
                  const g = c.getContext('2d');
                  g.drawImage(v, 0, 0);
                  const d = g.getImageData(0, 0, c.width, c.height).data;
                  let t = 0;
                  for (let i = 0; i < d.length; i += 4) t += d[i] + d[i + 1] + d[i + 2];
                  return t / (d.length / 4) / 3;
                }"""
            )
            assert level > 20, level
            assert csp_violations(s) == [], s.problems
        finally:
            s.context.close()
        played = [
            e for e in api.store.audit.entries() if e.actor == "olga" and e.action == "playback"
        ]
        assert played and all(e.detail.get("transcoded") == "h264" for e in played)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in originals} == originals


def test_the_camera_page_plays_the_cameras_audio_as_opus(browser: Browser, daemon: Daemon) -> None:
    """`front` records AAC (a 440 Hz tone): its camera page's live view over WebRTC gets an
    Opus audio track beside the video, and what the browser decodes from it is not silence
    (WebAudio reads the level); the label says Opus. `back` records no audio: none."""
    s = log_in(browser, daemon, "olga")
    try:
        page = s.page
        page.goto("/cameras/front?live=webrtc")
        page.wait_for_function(
            "() => { const v = document.getElementById('live');"
            " return v.dataset.liveAudio && v.currentTime > 0.5 }",
            timeout=30_000,
        )
        live = page.locator("#live")
        assert live.get_attribute("data-live-mode") == "webrtc"
        assert live.get_attribute("data-live-audio") == "opus"
        assert "Opus" in page.locator("[data-live-label]").inner_text()
        level = page.evaluate(
            """async () => {
              const v = document.getElementById('live');
              const tracks = v.srcObject.getAudioTracks();
              if (tracks.length !== 1 || tracks[0].readyState !== 'live') return -1;
              const ctx = new AudioContext();
              await ctx.resume();
              const analyser = ctx.createAnalyser();
              ctx.createMediaStreamSource(new MediaStream(tracks)).connect(analyser);
              const data = new Float32Array(analyser.fftSize);
              let best = 0;
              for (let i = 0; i < 40 && best < 0.02; i++) {
                await new Promise((r) => setTimeout(r, 100));
                analyser.getFloatTimeDomainData(data);
                let sum = 0;
                for (const x of data) sum += x * x;
                best = Math.max(best, Math.sqrt(sum / data.length));
              }
              ctx.close();
              return best;
            }"""
        )
        assert level >= 0.02, level
        page.goto("/cameras/back?live=webrtc")
        page.wait_for_function(
            "() => { const v = document.getElementById('live');"
            " return v.dataset.liveAudio && v.currentTime > 0.5 }",
            timeout=30_000,
        )
        assert live.get_attribute("data-live-audio") == "none"
        assert csp_violations(s) == [], s.problems
    finally:
        s.context.close()
