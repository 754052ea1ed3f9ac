"""`/metrics` follows Prometheus conventions (issue 16, item 8): `promtool check metrics` is
clean where promtool is installed (Debian package `prometheus`), and the conventions are also
checked here with prometheus-client's own parser, so the test means something without it:
base units, windows before the unit, no `_days`, counters ending `_total`; build info,
process metrics, HTTP requests by route template (never the raw path) and status."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from nvr.api.health import GbHealth
from tests.api_rig import run_api

UNITS = ("_bytes", "_seconds", "_bits_per_second", "_ratio", "_info")
"""Suffixes of a family with a unit; others are counts or states (below)."""
UNITLESS = {
    "nvr_camera_segments",
    "nvr_camera_reconnects",
    "nvr_camera_stalled",
    "nvr_camera_recording",
    "nvr_camera_state",
    "nvr_camera_picture_state",
    "nvr_camera_picture_checks",
    "nvr_storage_capacity_state",
    "nvr_clock_synchronized",
    "nvr_gb28181_registered",
    "nvr_gb28181_streams",
    "nvr_http_requests",
    "process_open_fds",
    "process_max_fds",
}
RENAMED = (
    "nvr_camera_gap_seconds_24h",
    "nvr_camera_recorded_ratio_24h",
    "nvr_camera_bitrate_bps",
    "nvr_storage_forecast_days",
)


def convention_problems(text: str) -> list[str]:
    """What in an exposition breaks the naming conventions this project follows."""
    problems = []
    families = list(text_string_to_metric_families(text))
    for family in families:
        name = family.name
        if name.endswith("_created"):
            continue  # prometheus-client's creation time of a counter or histogram
        if re.search(r"_days?(_|$)|_bps$|_ms$|_percent", name):
            problems.append(f"{name}: not a base unit")
        if re.search(r"_(\d+[smhd])$", name):
            problems.append(f"{name}: the window goes before the unit")
        if family.type == "counter":
            bad = [s.name for s in family.samples if not s.name.endswith(("_total", "_created"))]
            if bad:
                problems.append(f"{name}: counter samples {bad} do not end in _total")
        if not name.endswith(UNITS) and name not in UNITLESS:
            problems.append(f"{name}: no unit suffix and not a known count or state")
        if not family.documentation:
            problems.append(f"{name}: no help text")
    return problems


def test_metrics_follow_prometheus_conventions(users_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    for api in run_api(root):
        with api.as_user("root") as c:
            now = api.store.now()
            span = {"start": now - 3_600_000, "end": now}
            assert c.get("/api/cameras/gate/timeline", params=span).status_code == 200
            assert c.get("/api/cameras/lobby-9/timeline", params=span).status_code == 404
            assert c.get("/no/such/path/123").status_code == 404
            text = c.get("/metrics").text
    assert convention_problems(text) == []
    names = {f.name for f in text_string_to_metric_families(text)}
    assert not names & set(RENAMED)
    assert {"nvr_camera_gap_24h_seconds", "nvr_storage_forecast_seconds"} <= names
    assert {"nvr_build_info", "process_cpu_seconds", "process_resident_memory_bytes"} <= names
    assert re.search(r'^nvr_build_info\{.*version="[^"]+".*\} 1\.0$', text, re.M), text
    requests = {
        (s.labels["route"], s.labels["status"])
        for f in text_string_to_metric_families(text)
        if f.name == "nvr_http_requests"
        for s in f.samples
        if s.name == "nvr_http_requests_total"
    }
    assert ("/api/cameras/{name}/timeline", "200") in requests, requests
    assert ("unmatched", "404") in requests, requests
    assert ("/api/login", "200") in requests, requests
    assert not any("gate" in route or "/no/such" in route for route, _ in requests)
    assert "nvr_http_request_duration_seconds_bucket{" in text
    # The checker itself catches what it should (it can fail).
    bad = "# HELP nvr_x_days d\n# TYPE nvr_x_days gauge\nnvr_x_days 1\n"
    bad += "# HELP nvr_y_bytes_24h y\n# TYPE nvr_y_bytes_24h gauge\nnvr_y_bytes_24h 1\n"
    assert len(convention_problems(bad)) == 4

    promtool = shutil.which("promtool")
    if promtool is None:
        return  # conventions checked above; promtool is in Debian's `prometheus` package
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    # promtool does fail on a bad name (so a clean pass means something).
    worse = subprocess.run(
        [promtool, "check", "metrics"],
        input="# HELP nvr_speed_bps s\n# TYPE nvr_speed_bps counter\nnvr_speed_bps 1\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert worse.returncode != 0


def test_gb28181_registration_and_platform_clock_in_health_and_metrics(
    users_template: Path, tmp_path: Path
) -> None:
    """`[gb28181]`'s registration and the platform's clock offset are in `/api/health`
    (degraded, with the reason, like a camera clock beyond its limit) and in `/metrics`
    (promtool-clean); a registered platform with a good clock leaves health alone."""
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    state = {
        "gb": GbHealth(
            server_id="50010000002000000001",
            server="127.0.0.1:5060",
            registered=True,
            last_error="",
            clock_offset_s=-90.25,
            clock_finding="platform clock differs from ours by -90.2 s",
            clock_limit_s=2.0,
            streams=2,
        )
    }
    for api in run_api(root, gb28181=lambda: state["gb"]):
        with api.as_user("root") as c:
            body = c.get("/api/health").json()
            text = c.get("/metrics").text
            state["gb"] = replace(state["gb"], clock_offset_s=0.5, clock_finding="")
            ok = c.get("/api/health").json()
            state["gb"] = replace(state["gb"], registered=False, last_error="timed out")
            away = c.get("/api/health").json()
            away_text = c.get("/metrics").text
    assert body["gb28181"] == {
        "server_id": "50010000002000000001",
        "server": "127.0.0.1:5060",
        "registered": True,
        "last_error": "",
        "clock_offset_s": -90.25,
        "clock_limit_s": 2.0,
        "clock_warning": True,
        "streams": 2,
    }
    assert body["status"] == "degraded"
    assert "gb28181: platform clock differs from ours by -90.2 s" in body["reasons"]
    assert not any("gb28181" in r for r in ok["reasons"])
    assert ok["gb28181"]["clock_warning"] is False
    assert away["status"] == "degraded"
    assert any("gb28181: not registered" in r and "timed out" in r for r in away["reasons"])
    assert re.search(r"^nvr_gb28181_registered 1\.0$", text, re.M), text
    assert re.search(r"^nvr_gb28181_platform_clock_offset_seconds -90\.25$", text, re.M)
    assert re.search(r"^nvr_gb28181_streams 2\.0$", text, re.M)
    assert re.search(r"^nvr_gb28181_registered 0\.0$", away_text, re.M)
    assert convention_problems(text) == []
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_no_gb28181_metrics_without_it(users_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    for api in run_api(root):
        with api.as_user("root") as c:
            assert c.get("/api/health").json()["gb28181"] is None
            assert "nvr_gb28181" not in c.get("/metrics").text
