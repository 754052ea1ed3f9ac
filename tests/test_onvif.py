"""ONVIF cameras against a device implementation we did not write (ipycam's ONVIF services on
127.0.0.1 in a child process, `tests.onvifsim`) whose stream URIs point at the loopback RTSP
simulator; real recorder threads, a real SQLite store, files reopened with PyAV. WS-Discovery
runs only inside a network namespace each test creates."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nvr.cli import NOT_RUNNING
from nvr.cli import main as nvr_main
from nvr.config import CameraConfig, ConfigError, load_config, parse_config
from nvr.daemon import run_daemon
from nvr.ingest.errors import CameraUnreachable, StreamError
from nvr.ingest.onvif import (
    MediaProfile,
    NoRtspProfile,
    NotOnvif,
    OnvifAuthRejected,
    OnvifOpener,
    ProfileNotFound,
    choose_profile,
    split_stream_uri,
)
from nvr.ingest.recorder import CameraRecorder
from nvr.ingest.sources import RtspOpener
from nvr.ingest.supervisor import default_opener
from nvr.ingest.timecheck.monitor import ClockMonitor
from nvr.ingest.timecheck.notes import DEVICE_INFO, ClockNotes
from nvr.storage import SegmentStore
from nvr.storage.server_clock import read_server_clock
from tests.api_rig import store_at
from tests.camsim import CameraSim
from tests.media import check_file
from tests.onvifsim import OnvifSim
from tests.recording_rig import assert_contiguous, wait_for

PASSWORD = "s3cret-Pw"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SegmentStore]:
    yield from store_at(tmp_path / "store")


@pytest.fixture
def device(camsim: CameraSim) -> Iterator[OnvifSim]:
    """An ipycam device: main profile 1920x1080 -> camsim `h264`, sub 640x360 -> `h265`."""
    with OnvifSim(camsim.port, PASSWORD) as sim:
        yield sim


def opener(
    cam: OnvifSim, *, password: str = PASSWORD, profile: str | None = None, **kw: Any
) -> OnvifOpener:
    return OnvifOpener(
        "lobby",
        cam.address,
        username="admin",
        password=password,
        profile=profile,
        transport="tcp",
        timeout_s=3.0,
        **kw,
    )


def stop_all(*recorders: CameraRecorder) -> None:
    for rec in recorders:
        rec.stop()
    for rec in recorders:
        rec.thread.join(15)
        assert not rec.thread.is_alive(), f"{rec.camera} did not stop"


# --- config ------------------------------------------------------------------------------------


def test_config_takes_onvif_instead_of_url() -> None:
    base = {"storage": {"root": "/tmp/x"}}
    cam = {"name": "lobby", "onvif": "http://10.0.0.7:80", "username": "admin"}
    config = parse_config(base | {"cameras": [cam | {"profile": "main"}]}, "t")
    lobby = config.cameras[0]
    assert (lobby.url, lobby.onvif, lobby.profile) == (None, "http://10.0.0.7:80", "main")
    assert lobby.max_clock_offset_seconds == 2.0
    cases = {
        "cameras[0](lobby): give either url": cam | {"url": "rtsp://10.0.0.7/x"},
        "cameras[0](lobby).onvif: must not contain credentials": cam
        | {"onvif": "http://admin:pw@10.0.0.7"},
        "cameras[0](lobby).onvif: must be an http:// or https://": cam
        | {"onvif": "rtsp://10.0.0.7"},
        "cameras[0](lobby).onvif: must be host and port only": cam
        | {"onvif": "http://10.0.0.7/cgi-bin/x"},
    }
    for expected, bad in cases.items():
        with pytest.raises(ConfigError) as err:
            parse_config(base | {"cameras": [bad]}, "t")
        assert expected in str(err.value), str(err.value)
        assert "pw@" not in str(err.value)
    with pytest.raises(ConfigError, match="give either url"):
        parse_config(base | {"cameras": [{"name": "x"}]}, "t")
    with pytest.raises(ConfigError, match="profile applies to onvif cameras only"):
        parse_config(
            base | {"cameras": [{"name": "x", "url": "rtsp://h/x", "profile": "main"}]}, "t"
        )


def test_default_opener_builds_an_onvif_opener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOBBY_PASSWORD", PASSWORD)
    cam = CameraConfig(
        name="lobby", onvif="http://127.0.0.1:9", username="admin", password_env="LOBBY_PASSWORD"
    )
    built = default_opener(cam)
    assert isinstance(built, OnvifOpener)
    assert (built.camera, built.address) == ("lobby", "http://127.0.0.1:9")


# --- profile choice (pure) ---------------------------------------------------------------------

PROFILES = [
    MediaProfile("p0", "MJPEG", "JPEG", 3840, 2160, 5),
    MediaProfile("p1", "Main", "H264", 1920, 1080, 25),
    MediaProfile("p2", "Sub", "H264", 640, 360, 25),
    MediaProfile("p3", "Main60", "H264", 1920, 1080, 60),
]


def test_choose_profile() -> None:
    assert choose_profile(PROFILES, None).token == "p3"  # highest resolution, then frame rate
    assert choose_profile(PROFILES[:3], None).token == "p1"  # JPEG is never chosen
    assert choose_profile(PROFILES, "p2").token == "p2"
    assert choose_profile(PROFILES, "sub").token == "p2"  # by name, any case
    with pytest.raises(ProfileNotFound, match=r"'nope' \(profiles: p0 \(MJPEG"):
        choose_profile(PROFILES, "nope")
    with pytest.raises(NoRtspProfile, match=r"only H\.264/H\.265"):
        choose_profile(PROFILES, "p0")
    with pytest.raises(NoRtspProfile, match=r"no H\.264/H\.265 media profile"):
        choose_profile(PROFILES[:1], None)


def test_stream_uri_loses_its_credentials() -> None:
    uri = split_stream_uri("rtsp://u%40x:p%3Aw@0.0.0.0:554/live?ch=1", "10.0.0.7")
    assert (uri.uri, uri.username, uri.password) == ("rtsp://10.0.0.7:554/live?ch=1", "u@x", "p:w")
    assert "p:w" not in repr(uri)
    with pytest.raises(NoRtspProfile, match="not rtsp://"):
        split_stream_uri("http://10.0.0.7/mjpeg", "10.0.0.7")


# --- against the device ------------------------------------------------------------------------


@pytest.mark.slow
def test_onvif_camera_is_resolved_and_recorded_end_to_end(
    device: OnvifSim, store: SegmentStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    monitor = ClockMonitor(store)
    op = opener(device)
    monitor.adopt("lobby", op)
    rec = CameraRecorder("lobby", op, store, segment_seconds=10, stall_seconds=3.0)
    rec.start()
    try:
        wait_for(lambda: len(store.segments("lobby")) >= 2, 40, "two segments")
    finally:
        stop_all(rec)
    assert op.resolved is not None and op.resolutions == 1
    assert op.resolved.profile.token == "Profile_Main"  # 1920x1080 beats 640x360
    assert op.resolved.stream.uri.endswith("/h264")
    segs = store.segments("lobby")
    assert_contiguous(segs)
    assert {check_file(s.path, decode=False).video_codec for s in segs} == {"h264"}
    (info,) = [e for e in store.events.since("lobby") if e.kind == DEVICE_INFO]
    detail = json.loads(info.detail)
    assert (detail["manufacturer"], detail["model"], detail["serial"]) == (
        "PythonCam",
        "VirtualCam-1",
        "PY-000042",
    )
    assert detail["firmware"] and detail["profile"]["token"] == "Profile_Main"
    offsets = [e for e in store.events.since("lobby") if e.kind == "clock-offset"]
    sources = {e.detail.split(":")[0] for e in offsets}
    assert sources == {"onvif", "rtcp"}, offsets  # GetSystemDateAndTime and RTCP reports
    assert all(e.value is not None and abs(e.value) < 1.0 for e in offsets), offsets
    assert store.audit.entries(action="clock-warning") == []
    assert PASSWORD not in caplog.text


@pytest.mark.slow
def test_profile_by_token_and_by_highest_resolution(device: OnvifSim) -> None:
    op = opener(device, profile="Profile_Sub")
    src = op.open()
    try:
        # camsim's h265 mount: the sub stream
        assert src.video is not None and src.video.codec_context.name == "hevc"
    finally:
        src.close()
    assert op.resolved is not None and op.resolved.stream.uri.endswith("/h265")
    # Make the sub profile the larger one: the default choice follows the resolution.
    device.set("sub_size", "2560x1440")
    op = opener(device)
    src = op.open()
    try:
        assert op.resolved is not None and op.resolved.profile.token == "Profile_Sub"
        assert src.video is not None and src.video.codec_context.name == "hevc"
    finally:
        src.close()
    with pytest.raises(ProfileNotFound, match="Profile_Main"):
        opener(device, profile="Profile_Third").open()


@pytest.mark.slow
def test_wrong_password_is_reported_and_retried_without_disturbing_others(
    device: OnvifSim, camsim: CameraSim, store: SegmentStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    good = CameraRecorder(
        "good",
        RtspOpener(
            camsim.url("h264"), username=None, password=None, transport="tcp", timeout_s=3.0
        ),
        store,
        segment_seconds=10,
        stall_seconds=3.0,
    )
    wrong = "Wr0ng-Secret"
    op = opener(device, password=wrong, auth_retry_s=1.0)
    bad = CameraRecorder("lobby", op, store, segment_seconds=10, stall_seconds=3.0)
    good.start()
    bad.start()
    try:
        wait_for(lambda: device.rejected() >= 3, 30, "three rejected ONVIF logins")
        status = bad.status()
        assert status.state == "reconnecting" and bad.thread.is_alive()
        assert "ONVIF login rejected" in status.detail and wrong not in status.detail
        (outage,) = store.ledger.open_outages("lobby")
        assert outage.cause == "auth-rejected" and wrong not in outage.detail
        wait_for(lambda: good.status().state == "recording", 20, "the good camera recording")
        # The password is fixed on the camera: recording starts on a later try by itself.
        device.set("password", wrong)
        wait_for(lambda: bool(store.segments("lobby")), 40, "a segment after the fix")
    finally:
        stop_all(good, bad)
    assert wrong not in caplog.text and PASSWORD not in caplog.text
    assert "auth-rejected" in caplog.text
    assert store.segments("good") and assert_contiguous(store.segments("good")) > 0
    (first, *_rest) = store.ledger.outages("lobby")
    assert first.cause == "auth-rejected" and first.end_ms is not None


def test_not_onvif_unreachable_and_no_profile_are_told_apart(device: OnvifSim) -> None:
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # a web server, not an ONVIF device
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html><body>Not Found</body></html>")

        def log_message(self, format: str, *args: object) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        cases: list[tuple[str, type[StreamError], str]] = [
            (f"http://127.0.0.1:{web.server_address[1]}", NotOnvif, "not-onvif"),
            (f"http://127.0.0.1:{closed}", CameraUnreachable, "unreachable"),
            (device.address, OnvifAuthRejected, "auth-rejected"),
        ]
        for address, kind, cause in cases:
            op = OnvifOpener(
                "x",
                address,
                username="admin",
                password="not-it",
                profile=None,
                transport="tcp",
                timeout_s=3.0,
            )
            with pytest.raises(kind) as err:
                op.open()
            assert err.value.cause == cause and "not-it" not in str(err.value), err.value
        device.set("no_profiles", 1)
        with pytest.raises(NoRtspProfile) as no_profile:
            opener(device).open()
        assert no_profile.value.cause == "no-rtsp-profile"
    finally:
        web.shutdown()
        web.server_close()


@pytest.mark.slow
def test_stream_uri_is_resolved_again_after_repeated_failures(
    camsim: CameraSim, camsim_clips: Path, store: SegmentStore
) -> None:
    """A camera that comes back from a reboot streaming on another URI."""
    second = CameraSim(camsim_clips)
    second.start()
    try:
        with OnvifSim(camsim.port, PASSWORD) as cam:
            op = opener(cam, reresolve_after=2)
            rec = CameraRecorder("lobby", op, store, segment_seconds=10, stall_seconds=3.0)
            rec.start()
            try:
                wait_for(lambda: rec.status().state == "recording", 20, "recording")
                camsim.stop()  # the old URI is gone for good ...
                cam.set("rtsp_port", second.port)  # ... and the device names the new one
                wait_for(lambda: op.resolutions == 2, 60, "a second resolution")
                wait_for(lambda: rec.status().state == "recording", 30, "recording again")
                assert op.resolved is not None
                assert op.resolved.stream.uri == second.url("h264")
            finally:
                stop_all(rec)
    finally:
        second.stop()
    assert store.ledger.outages("lobby")[0].cause in ("stream-ended", "unreachable")


@pytest.mark.slow
def test_camera_clock_30s_off_is_flagged_in_status_and_audit(
    device: OnvifSim, store: SegmentStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device.set("skew_s", 30)
    notes = ClockNotes(store)
    op = opener(device)
    op.attach(notes)
    op.open().close()
    readings = [e for e in store.events.since("lobby") if e.kind == "clock-offset"]
    (onvif,) = [e for e in readings if e.detail.startswith("onvif")]
    assert onvif.value is not None and 29.0 <= onvif.value <= 31.0, onvif
    (warning,) = store.audit.entries(action="clock-warning")
    assert (warning.actor, warning.target, warning.outcome) == ("system", "lobby", "warning")
    assert 29.0 <= warning.detail["offset_s"] <= 31.0 and warning.detail["limit_s"] == 2.0
    # The hourly check finds it again: still one audit row (the warning has not cleared).
    op.check_clock()
    assert len(store.audit.entries(action="clock-warning")) == 1
    device.set("skew_s", 0)
    op.check_clock()
    assert [e.target for e in store.audit.entries(action="clock-recovered")] == ["lobby"]
    device.set("skew_s", 30)
    op.check_clock()
    assert len(store.audit.entries(action="clock-warning")) == 2
    config = tmp_path / "nvr.toml"
    config.write_text(
        f'[storage]\nroot = "{store.root}"\n[[cameras]]\nname = "lobby"\n'
        f'onvif = "{device.address}"\nusername = "admin"\npassword_env = "LOBBY_PW"\n',
        encoding="utf-8",
    )
    assert nvr_main(["status", "-c", str(config)]) == NOT_RUNNING  # printed all the same
    out = capsys.readouterr().out
    assert "device: PythonCam VirtualCam-1, firmware" in out and "serial PY-000042" in out
    line = next(x for x in out.splitlines() if "camera clock (onvif" in x)
    assert line.strip().startswith("WARNING"), out
    assert re.search(r": \+(29|30)\.\d{3} s from the server's \(limit 2 s\)", line), line
    assert "server clock:" in out


def test_hourly_and_on_connect_clock_checks_are_scheduled(device: OnvifSim) -> None:
    now = [1000.0]
    op = opener(device, check_interval_s=3600.0, monotonic=lambda: now[0])
    assert not op.clock_check_due(now[0])  # never connected: nothing to check
    woken: list[int] = []
    op.set_waker(lambda: woken.append(1))
    src = op.open()  # resolves: the clock was read just now
    src.close()
    assert not op.clock_check_due(now[0]) and not woken
    now[0] += 10
    op.open().close()  # a reconnect: check the clock on this connect
    assert woken and op.clock_check_due(now[0])
    op.check_clock()
    assert not op.clock_check_due(now[0])
    now[0] += 3600
    assert op.clock_check_due(now[0])


# --- discovery, in a network namespace ----------------------------------------------------------


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with only a loopback that carries multicast."""
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    name = f"nvrtest-{os.getpid()}-{time.monotonic_ns() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "set", "lo", "multicast", "on"],
            ["route", "add", "224.0.0.0/4", "dev", "lo"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_discover_lists_devices_and_prints_camera_blocks(netns: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), CAM_PW=PASSWORD)
    inside = ["ip", "netns", "exec", netns]
    cmd = [*inside, sys.executable, "-m", "nvr.cli", "discover", "--timeout", "2"]
    with OnvifSim(8554, PASSWORD, discovery=True, prefix=inside) as cam:
        plain, login = (
            subprocess.run(
                args, capture_output=True, text=True, timeout=60, cwd=REPO, env=env, check=True
            ).stdout
            for args in (cmd, [*cmd, "--username", "admin", "--password-env", "CAM_PW"])
        )
    address = cam.address  # 127.0.0.1 of the namespace's own loopback
    assert plain.startswith(address), plain
    assert "onvif://www.onvif.org/name/LobbyCam" in plain
    assert "device:" not in plain  # no login: no model, no profiles
    assert "device: PythonCam VirtualCam-1" in login, login
    assert "profile Profile_Main (MainStream, 1920x1080 H264 30 fps): rtsp://" in login
    assert "profile Profile_Sub (SubStream, 640x360" in login
    assert PASSWORD not in login
    block = login.split("# Ready to paste into the config file:", 1)[1]
    doc = tomllib.loads(f'[storage]\nroot = "/tmp/x"\n{block}')
    config = parse_config(doc, "pasted")
    (camera,) = config.cameras
    assert (camera.name, camera.onvif, camera.profile) == ("lobbycam", address, "Profile_Main")
    assert (camera.username, camera.password_env) == ("admin", "LOBBYCAM_PASSWORD")


@pytest.mark.slow
async def test_daemon_records_an_onvif_camera_and_status_shows_device_and_clocks(
    device: OnvifSim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole wiring: config -> supervisor -> ONVIF opener, clock monitor -> index -> status."""
    monkeypatch.setenv("LOBBY_PW", PASSWORD)
    root = tmp_path / "data"
    path = tmp_path / "nvr.toml"
    path.write_text(
        f'[storage]\nroot = "{root}"\nreserve_bytes = 0\n[[cameras]]\nname = "lobby"\n'
        f'onvif = "{device.address}"\nusername = "admin"\npassword_env = "LOBBY_PW"\n'
        "segment_seconds = 10\n",
        encoding="utf-8",
    )
    config = load_config(path)
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(config, stop=stop), name="daemon-under-test")

    def recorded() -> bool:
        if not (root / "index.db").exists():
            return False
        reader = SegmentStore(root, config.storage.index_url(), exclusive=False)
        try:
            kinds = {e.detail.split(":")[0] for e in reader.events.since("lobby")}
            return bool(reader.segments("lobby")) and {"onvif", "rtcp"} <= kinds
        finally:
            reader.close()

    try:
        deadline = time.monotonic() + 40
        while not await asyncio.to_thread(recorded):
            assert time.monotonic() < deadline, "no segment and clock readings within 40 s"
            assert not daemon.done(), daemon
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(daemon, 30)
    assert nvr_main(["status", "-c", str(path)]) == NOT_RUNNING  # stopped by now
    out = capsys.readouterr().out
    assert "device: PythonCam VirtualCam-1, firmware" in out, out
    assert "profile Profile_Main (1920x1080 H264)" in out
    assert re.search(r"camera clock \(onvif, [^)]*\): [+-]0\.\d{3} s from the server's", out)
    assert re.search(r"camera clock \(rtcp, [^)]*\): [+-]0\.\d{3} s from the server's", out)
    server = read_server_clock()
    assert ("WARNING server clock: NOT" in out) == (not server.synchronised), out
    reader = SegmentStore(root, config.storage.index_url(), exclusive=False)
    try:
        warnings = [e.target for e in reader.audit.entries(action="clock-warning")]
    finally:
        reader.close()
    assert warnings == ([] if server.synchronised else ["server"])
    assert PASSWORD not in out
