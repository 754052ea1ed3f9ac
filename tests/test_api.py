"""The HTTP API against a real uvicorn on a free port, driven with httpx: accounts, logins,
roles and camera permissions, playback of footage recorded from the loopback RTSP server
(reopened with PyAV), Range/ETag, bad input, timeline, health and metrics.

Its fixtures live in tests/api_rig.py (registered by tests/conftest.py)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import threading
from datetime import datetime
from pathlib import Path

import av
import httpx
import pytest

from nvr.api import ApiContext, ApiServer
from nvr.config.models import ApiConfig
from nvr.ingest.status import RecorderStatus
from nvr.retention import Forecast
from nvr.storage import SegmentStore
from tests.api_rig import (
    CAMERAS,
    PASSWORD,
    Api,
    contiguous_trio,
    footage_end,
    free_port,
    make_config,
    nvr_here,
    open_store,
    run_api,
    self_signed,
    write_config,
)
from tests.recording_rig import wait_for

# --- accounts and logins ---------------------------------------------------------------------


def test_only_healthz_answers_without_a_login(api: Api) -> None:
    with api.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/openapi.json").status_code == 401
        assert c.get("/docs").status_code == 401
    with api.as_user("root") as c:
        schema = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    assert "/api/cameras/{name}/recording.mp4" in schema["paths"]
    with api.client() as c:
        for path, ops in schema["paths"].items():
            if path in ("/healthz", "/api/login"):
                continue
            url = path.replace("{name}", "h264aac").replace("{export_id}", "1")
            url = url.replace("{lock_id}", "1")
            for method in ops:
                r = c.request(method.upper(), url, params={"start": "0", "end": "1"})
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                assert r.headers.get("www-authenticate", "").startswith("Bearer")
        for bad in ("Bearer nope", "Basic cm9vdDp4", "Bearer " + "x" * 300):
            r = c.get("/api/cameras", headers={"Authorization": bad})
            assert r.status_code == 401


def test_login_token_logout_and_audit(api: Api) -> None:
    token = api.login("vera")
    with api.client(token) as c:
        me = c.get("/api/me").json()
        assert me["name"] == "vera" and me["role"] == "viewer" and me["cameras"] == ["h264aac"]
        assert c.post("/api/logout").status_code == 204
        assert c.get("/api/me").status_code == 401
    with api.client() as c:
        r = c.post("/api/login", json={"username": "vera", "password": "wrong password!"})
        assert r.status_code == 401
        r = c.post("/api/login", json={"username": "nobody", "password": "wrong password!"})
        assert r.status_code == 401
    entries = api.store.audit.entries(action="login")
    outcomes = [(e.actor, e.outcome) for e in entries]
    assert ("vera", "ok") in outcomes and ("vera", "failed") in outcomes
    assert ("nobody", "failed") in outcomes
    assert any(e.action == "logout" for e in api.store.audit.entries(actor="vera"))
    dump = " ".join(str(e) for e in api.store.audit.entries())
    assert PASSWORD not in dump and token not in dump and "wrong password" not in dump
    assert api.store.audit.verify() == []


def test_repeated_failures_are_slowed_down(api: Api) -> None:
    with api.client() as c:
        codes = []
        for _ in range(5):
            r = c.post("/api/login", json={"username": "olga", "password": "not her password"})
            codes.append(r.status_code)
        assert codes[:3] == [401, 401, 401]
        assert 429 in codes[3:]
        r = c.post("/api/login", json={"username": "olga", "password": PASSWORD})
        assert r.status_code == 429, "even the right password waits out the delay"
        assert int(r.headers["retry-after"]) >= 1
        api.throttle_clock.advance(int(r.headers["retry-after"]) + 0.2)
        assert (
            c.post("/api/login", json={"username": "olga", "password": PASSWORD}).status_code == 200
        )
    refused = [e for e in api.store.audit.entries(action="login") if e.outcome == "refused"]
    assert 1 <= len(refused) <= 2, "throttled attempts are audited once per delay, not flooded"


def test_roles_and_camera_permissions(api: Api) -> None:
    with api.as_user("vera") as c:
        assert [x["name"] for x in c.get("/api/cameras").json()] == ["h264aac"]
        assert c.get("/api/audit").status_code == 403
        assert c.get("/api/users").status_code == 403
        r = c.get("/api/cameras/bframes/timeline", params={"start": "0", "end": "1"})
        assert r.status_code == 403  # exists, not permitted
        r = c.get("/api/cameras/nosuch/timeline", params={"start": "0", "end": "1"})
        assert r.status_code == 403  # never tells a viewer which cameras exist
        body = {"camera": "h264aac", "start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:00Z"}
        lock = {**body, "reason": "x"}
        assert c.post("/api/locks", json=lock).status_code == 403
    with api.as_user("audrey") as c:
        assert c.get("/api/audit").status_code == 200
        assert c.get("/api/exports").status_code == 200
        r = c.get(
            "/api/cameras/h264aac/recording.mp4",
            params={"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:00Z"},
        )
        assert r.status_code == 403  # auditors read logs, they do not watch footage
    with api.as_user("olga") as c:
        assert {x["name"] for x in c.get("/api/cameras").json()} == {"h264aac", "bframes", "gate"}
        assert (
            c.get("/api/cameras/nosuch/timeline", params={"start": "0", "end": "1"}).status_code
            == 404
        )
    with api.as_user("root") as c:
        r = c.post(
            "/api/users",
            json={"name": "vic", "role": "viewer", "password": PASSWORD, "cameras": ["bframes"]},
        )
        assert r.status_code == 201, r.text
        r = c.post("/api/users", json={"name": "vic", "role": "viewer", "password": PASSWORD})
        assert r.status_code == 409
        r = c.patch("/api/users/vic", json={"cameras": ["h264aac", "bframes"]})
        assert r.json()["cameras"] == ["bframes", "h264aac"]
        assert c.patch("/api/users/vic", json={"disabled": True}).json()["disabled"] is True
    with api.client() as c:
        r = c.post("/api/login", json={"username": "vic", "password": PASSWORD})
        assert r.status_code == 401
    actions = {e.action for e in api.store.audit.entries(target="user:vic")}
    assert {"user-add", "user-cameras", "user-disable"} <= actions


def test_user_cli_and_audit_verify(tmp_path: Path) -> None:
    root = tmp_path / "store"
    cfg = write_config(root, tmp_path / "nvr.toml")
    done = nvr_here(
        [
            "user",
            "add",
            "-c",
            str(cfg),
            "ada",
            "--role",
            "operator",
            "--cameras",
            "h264aac",
            "--password-stdin",
        ],
        tmp_path,
        stdin=PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    weak = nvr_here(
        ["user", "add", "-c", str(cfg), "bob", "--role", "viewer", "--password-stdin"],
        tmp_path,
        stdin="short\n",
    )
    assert weak.returncode != 0 and "at least" in weak.stderr
    listed = nvr_here(["user", "list", "-c", str(cfg)], tmp_path)
    assert "ada\toperator\tenabled\tcameras h264aac" in listed.stdout
    assert nvr_here(["user", "disable", "-c", str(cfg), "ada"], tmp_path).returncode == 0
    assert "ada\toperator\tdisabled" in nvr_here(["user", "list", "-c", str(cfg)], tmp_path).stdout
    ok = nvr_here(["audit-verify", "-c", str(cfg)], tmp_path)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        assert {e.action for e in store.audit.entries()} >= {"user-add", "user-disable"}
        assert all(e.actor.startswith("cli:") for e in store.audit.entries())
    finally:
        store.close()
    # Edit an audit row behind the store's back (the triggers must be dropped to do it).
    import sqlite3

    db = sqlite3.connect(root / "index.db")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET actor = 'someone-else' WHERE id = 1")
    db.commit()
    db.close()
    bad = nvr_here(["audit-verify", "-c", str(cfg)], tmp_path)
    assert bad.returncode == 1
    assert "audit entry 1" in bad.stdout


# --- playback --------------------------------------------------------------------------------


def video_packets(path: Path) -> list[tuple[bytes, bool]]:
    with av.open(str(path)) as c:
        return [(bytes(p), p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size > 0]


@pytest.mark.parametrize("camera", CAMERAS)
def test_recording_spanning_three_segments_is_one_standard_mp4(
    footage_api: Api, camera: str, tmp_path: Path
) -> None:
    trio = contiguous_trio(footage_api.store, camera)
    start, end = trio[0].start_ms + 2500, trio[2].end_ms - 1500
    with footage_api.as_user("olga") as c:
        r = c.get(f"/api/cameras/{camera}/recording.mp4", params={"start": start, "end": end})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert int(r.headers["content-length"]) == len(r.content)
    out = tmp_path / "range.mp4"
    out.write_bytes(r.content)
    assert r.content[4:8] == b"ftyp" and b"moof" not in r.content[:200_000], "not fragmented"
    with av.open(str(out)) as container:
        v = container.streams.video[0]
        assert v.time_base is not None
        packets = [p for p in container.demux(v) if p.size > 0]
        decoded = sum(len(p.decode()) for p in packets) + len(v.codec_context.decode(None))
        first_dts = packets[0].dts
        assert first_dts is not None
        last = max(packets, key=lambda p: p.dts or 0)
        media_s = float(((last.dts or 0) + (last.duration or 0) - first_dts) * v.time_base)
        has_audio = bool(container.streams.audio)
    assert packets[0].is_keyframe
    assert decoded == len(packets)
    asked_s = (end - start) / 1000
    assert abs(media_s - asked_s) <= 1.01, (media_s, asked_s)  # one GOP (1 s), ms rounding
    footage_start = r.headers["x-recording-start"]
    first_ms = int(datetime.fromisoformat(footage_start).timestamp() * 1000)
    assert start - 1000 <= first_ms <= start
    assert has_audio == (camera == "h264aac")
    # The samples are the recorded ones, byte for byte, from the keyframe before the start.
    original: list[tuple[bytes, bool]] = []
    for seg in trio:
        original += video_packets(seg.path)
    ours = [(bytes(p), p.is_keyframe) for p in packets]
    offset = next(i for i in range(len(original)) if original[i : i + 5] == ours[:5])
    assert original[offset : offset + len(ours)] == ours
    assert original[offset][1], "starts on a keyframe"
    entries = footage_api.store.audit.entries(action="playback", actor="olga")
    assert entries[-1].target == camera
    assert entries[-1].detail["bytes"] == len(r.content)
    assert entries[-1].detail["start_ms"] == start and entries[-1].detail["end_ms"] == end
    assert entries[-1].detail["footage_start_ms"] == first_ms
    assert entries[-1].detail["range"] is None  # the whole file, not a Range


def test_range_requests_give_the_exact_bytes(footage_api: Api) -> None:
    trio = contiguous_trio(footage_api.store, "h264aac")
    params = {"start": trio[0].start_ms, "end": trio[2].end_ms}
    url = "/api/cameras/h264aac/recording.mp4"
    with footage_api.as_user("vera") as c:
        full = c.get(url, params=params)
        assert full.status_code == 200
        body = full.content
        size = len(body)
        etag = full.headers["etag"]
        assert full.headers["accept-ranges"] == "bytes"
        for header, first, last in [
            ("bytes=0-99", 0, 99),
            ("bytes=100-", 100, size - 1),
            ("bytes=-500", size - 500, size - 1),
            (f"bytes={size // 2}-{size // 2 + 70_000}", size // 2, size // 2 + 70_000),
            ("bytes=1000-2000000000", 1000, size - 1),
            (f"bytes={size - 1}-{size - 1}", size - 1, size - 1),
        ]:
            r = c.get(url, params=params, headers={"Range": header})
            assert r.status_code == 206, (header, r.status_code)
            assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert int(r.headers["content-length"]) == last - first + 1
            assert r.content == body[first : last + 1], header
        r = c.get(url, params=params, headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
        r = c.get(url, params=params, headers={"If-None-Match": etag})
        assert r.status_code == 304 and not r.content
        r = c.get(url, params=params, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert r.status_code == 200 and r.content == body
        r = c.get(url, params=params, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert r.status_code == 206 and r.content == body[:10]
        r = c.get(url, params=params, headers={"Range": "bytes=0-1,5-6"})
        assert r.status_code == 200 and r.content == body  # several ranges: the whole file
        r = c.head(url, params=params)
        assert r.status_code == 200 and int(r.headers["content-length"]) == size
        assert not r.content
        again = c.get(url, params=params)
        assert again.headers["etag"] == etag and again.content == body
    played = footage_api.store.audit.entries(action="playback", actor="vera")
    assert len(played) == 13  # every response with footage, the 304 and the HEAD are audited


def test_bad_input_is_4xx_never_500(footage_api: Api) -> None:
    seg = footage_api.store.segments("h264aac")[0]
    good = {"start": str(seg.start_ms), "end": str(seg.end_ms)}
    bad_times = [
        {"start": "abc", "end": "1"},
        {"start": "2026-13-45T00:00:00Z", "end": good["end"]},
        {"start": "2026-11-22T08:00:00", "end": good["end"]},  # no zone
        {"start": good["end"], "end": good["start"]},  # reversed
        {"start": good["start"], "end": good["start"]},  # empty
        {"start": str(seg.start_ms), "end": str(seg.start_ms + 200 * 86_400_000)},  # huge
        {"start": "-1", "end": "5"},
        {"start": "99999999999999999999999", "end": "1"},
        {"start": "1e10", "end": "2e10"},
        {"start": "x" * 100, "end": "1"},
        {"start": good["start"]},
        {},
    ]
    names = [
        "..",
        "../h264aac",
        "..%2Fh264aac",
        "%2e%2e",
        "H264AAC",
        "h264aac%00",
        "a" * 65,
        "h264aac.mp4",
        "%",
        "h264aac;rm",
        " h264aac",
    ]
    with footage_api.as_user("olga") as c:
        for params in bad_times:
            for path in ("recording.mp4", "timeline"):
                r = c.get(f"/api/cameras/h264aac/{path}", params=params)
                assert 400 <= r.status_code < 500, (path, params, r.status_code, r.text)
            r = c.delete("/api/cameras/h264aac/recordings", params=params)
            assert 400 <= r.status_code < 500, (params, r.status_code)
        for name in names:
            for path in ("recording.mp4", "timeline"):
                r = c.get(f"/api/cameras/{name}/{path}", params=good)
                assert 400 <= r.status_code < 500, (name, path, r.status_code, r.text)
        r = c.get("/api/cameras/h264aac/recording.mp4", params={"start": "0", "end": "1"})
        assert r.status_code == 400  # before 2000
        r = c.get(
            "/api/cameras/h264aac/recording.mp4",
            params={"start": "2001-01-01T00:00:00Z", "end": "2001-01-01T01:00:00Z"},
        )
        assert r.status_code == 404  # no footage then
        r = c.get("/api/cameras/h264aac/recording.mp4", params=good, headers={"Range": "bytes=x"})
        assert r.status_code == 200  # an unreadable Range header is ignored (RFC 9110)


def test_timeline_shows_spans_and_gaps_with_causes(footage_api: Api) -> None:
    segs = footage_api.store.segments("h264aac")
    (restart,) = [
        o for o in footage_api.store.ledger.outages("h264aac") if o.cause != "daemon-stopped"
    ]
    with footage_api.as_user("vera") as c:
        r = c.get(
            "/api/cameras/h264aac/timeline",
            params={"start": segs[0].start_ms - 5000, "end": segs[-1].end_ms + 30_000},
        )
    assert r.status_code == 200, r.text
    tl = r.json()
    assert len(tl["spans"]) == 2
    assert sum(s["segments"] for s in tl["spans"]) == len(segs)
    assert tl["spans"][0]["start_ms"] == segs[0].start_ms
    assert tl["spans"][-1]["end_ms"] == segs[-1].end_ms
    gaps = tl["gaps"]
    assert gaps[0]["causes"][0]["cause"] == "unknown"  # before the first recording
    middle = gaps[1]
    assert middle["start_ms"] == tl["spans"][0]["end_ms"]
    assert middle["end_ms"] == tl["spans"][1]["start_ms"]
    assert [x["cause"] for x in middle["causes"]] == [restart.cause]
    assert gaps[-1]["causes"][0]["cause"] == "daemon-stopped"
    assert tl["recorded_ms"] == sum(s["end_ms"] - s["start_ms"] for s in tl["spans"])


class StalledCamera:
    """Live state of the recorders: `h264aac` stalled for ten minutes (a seam, as the
    supervisor's snapshot is)."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def snapshot(self) -> list[RecorderStatus]:
        def status(camera: str, state: str, since: int) -> RecorderStatus:
            return RecorderStatus(camera, state, since, "", None, 3, 1000, 2, 0.0, False)

        return [
            status("h264aac", "stalled", self.now_ms - 600_000),
            status("bframes", "recording", self.now_ms - 3_600_000),
        ]


def test_cameras_health_and_metrics(footage_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    now = footage_end(root) + 60_000
    for api in run_api(root, clock=lambda: now, live=StalledCamera(now)):
        logging.getLogger("nvr.camera.h264aac").warning("camera h264aac: stalled (test)")
        logging.getLogger("nvr.camera.bframes").warning("camera bframes: stalled (test)")
        with api.as_user("vera") as c:
            (cam,) = c.get("/api/cameras").json()
            health = c.get("/api/health").json()
            metrics = c.get("/metrics")
        last = api.store.last_segment("h264aac")
        assert last is not None
        assert cam["name"] == "h264aac" and cam["state"] == "stalled"
        assert cam["last_segment_end_ms"] == last.end_ms
        recorded = api.store.recorded_ms("h264aac", now - 86_400_000, now)
        assert cam["recorded_share_24h"] == pytest.approx(recorded / 86_400_000)
        assert 200_000 < cam["bitrate_bps"] < 1_500_000  # the clip is ~490 kbit/s
        assert health["status"] == "critical"
        assert any("h264aac stalled" in r for r in health["reasons"])
        (ch,) = health["cameras"]
        assert ch["down_for_s"] == pytest.approx(600, abs=1)
        assert ch["last_segment_age_s"] == pytest.approx(60, abs=1)
        assert {o["cause"] for o in ch["outages_24h"]} >= {"daemon-stopped"}
        assert health["storage"]["free_bytes"] > 0
        assert [e["message"] for e in health["last_errors"]] == ["camera h264aac: stalled (test)"]
        assert metrics.status_code == 200
        text = metrics.text
        assert 'nvr_camera_stalled{camera="h264aac"} 1.0' in text
        assert 'nvr_camera_state{camera="h264aac",state="stalled"} 1.0' in text
        assert "nvr_camera_recorded_24h_ratio" in text and "nvr_storage_free_bytes" in text
        assert "nvr_camera_gap_seconds_total" in text
        assert 'camera="bframes"' not in text, "series of cameras the user may not see"
        with api.as_user("olga") as c:
            assert 'nvr_camera_recording{camera="bframes"} 1.0' in c.get("/metrics").text
            errors = c.get("/api/health").json()["last_errors"]
            assert {e["logger"] for e in errors} >= {"nvr.camera.h264aac", "nvr.camera.bframes"}


def test_health_follows_the_storage_forecast(users_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    current = [Forecast("warning", 33.5, 30, 4e10, 123_456_789, 0, "33.5 days at 40 GB/day")]
    for api in run_api(root, capacity=lambda: current[0]):
        with api.as_user("vera") as c:
            health = c.get("/api/health").json()
            assert health["status"] == "degraded"
            assert health["storage"]["forecast_days"] == 33.5
            assert health["storage"]["state"] == "warning"
            assert health["retention_compliant"] is True
            current[0] = Forecast("critical", 12.0, 30, 4e10, 1, 0, "12.0 days at 40 GB/day")
            health = c.get("/api/health").json()
            assert health["status"] == "critical"
            assert health["retention_compliant"] is False
            assert any("storage forecast critical" in r for r in health["reasons"])
            assert "nvr_storage_forecast_seconds 1.0368e+06" in c.get("/metrics").text


def test_tls_when_a_certificate_is_configured(users_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    cert, key = self_signed(tmp_path)
    store = open_store(root)
    port = free_port()
    config = make_config(root, port).model_copy(
        update={"api": ApiConfig(listen=f"127.0.0.1:{port}", tls_certificate=cert, tls_key=key)}
    )
    server = ApiServer(ApiContext(config=config, store=store))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        assert server.url == f"https://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{server.url}/healthz", verify=trust, timeout=1).is_success
            except httpx.TransportError:
                return False

        wait_for(answers, 20, "the HTTPS API")
        r = httpx.post(
            f"{server.url}/api/login",
            json={"username": "vera", "password": PASSWORD},
            verify=trust,
        )
        assert r.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)  # no plain HTTP
    finally:
        server.stop()
        thread.join(15)
        store.close()
