"""The API as the daemon serves it: `nvr run` with an `[api]` table, users made with the CLI
(beside the running daemon), live camera state over HTTP, playback of what it just recorded,
and a clean stop on SIGTERM."""

from __future__ import annotations

import time
from pathlib import Path

import av
import httpx
import pytest

from nvr.storage.server_clock import read_server_clock
from tests.api_rig import (
    PASSWORD,
    add_admin,
    answers,
    demo_config,
    free_port,
    login,
    nvr,
    running_daemon,
)
from tests.recording_rig import wait_for

pytestmark = pytest.mark.slow


def test_daemon_serves_the_api(tmp_path: Path) -> None:
    port = free_port()
    picture = "[cameras.picture]\ncheck_seconds = 1.0\nlearn_seconds = 2.0\n"
    cfg = demo_config(tmp_path / "nvr.toml", port, camera_extra=picture)
    add_admin(cfg)
    base = f"http://127.0.0.1:{port}"
    with running_daemon(cfg), login(base) as c:
        # A second user added while the daemon runs (another process, same index).
        made = nvr(
            [
                *("user", "add", "-c", str(cfg), "vic"),
                *("--role", "viewer", "--cameras", "demo", "--password-stdin"),
            ],
            tmp_path,
            stdin=PASSWORD + "\n",
        )
        assert made.returncode == 0, made.stderr

        def recorded() -> bool:
            (cam,) = c.get("/api/cameras").json()
            return cam["state"] == "recording" and cam["last_segment_end_ms"] is not None

        wait_for(recorded, 40, "a recorded segment")

        def picture_learned() -> bool:
            (cam,) = c.get("/api/cameras").json()
            return cam["picture"] is not None and cam["picture"]["state"] == "ok"

        # Picture health (issue 18): the moving test picture is learned and judged clear.
        wait_for(picture_learned, 40, "the picture reference learned")
        health = c.get("/api/health").json()
        # A real daemon reads this machine's clock: unsynchronised is its only reason.
        synced = read_server_clock().synchronised
        assert health["status"] == ("ok" if synced else "degraded"), health
        assert [r for r in health["reasons"] if not r.startswith("server clock")] == []
        assert health["clock_synchronised"] is synced
        assert health["cameras"][0]["state"] == "recording"
        assert health["cameras"][0]["picture"]["state"] == "ok"
        assert health["cameras"][0]["picture"]["checks"] >= 2
        metrics = c.get("/metrics").text
        assert 'nvr_camera_recording{camera="demo"} 1.0' in metrics
        assert 'nvr_camera_picture_state{camera="demo",state="ok"} 1.0' in metrics
        assert 'nvr_camera_picture_state{camera="demo",state="covered"} 0.0' in metrics
        status = nvr(["status", "-c", str(cfg)], tmp_path)
        assert "  picture: ok since " in status.stdout, status.stdout
        now = int(time.time() * 1000)
        r = c.get("/api/cameras/demo/recording.mp4", params={"start": now - 60_000, "end": now})
        assert r.status_code == 200, r.text
        clip = tmp_path / "clip.mp4"
        clip.write_bytes(r.content)
        with av.open(str(clip)) as container:
            frames = sum(len(p.decode()) for p in container.demux(container.streams.video[0]))
        assert frames >= 20
        r = httpx.post(f"{base}/api/login", json={"username": "vic", "password": PASSWORD})
        assert r.status_code == 200
    text = (tmp_path / "daemon.log").read_text()
    assert "HTTP API on" in text
    assert PASSWORD not in text
    assert "access=" not in text and "Bearer" not in text
    assert not answers(base)
