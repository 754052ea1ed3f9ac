"""The `nvr` command as a user runs it: real processes, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nvr.storage import SegmentStore
from nvr.storage.media.boxes import Mp4Error
from nvr.storage.media.segment import parse_segment
from tests.api_rig import nvr_here
from tests.media import check_file
from tests.recording_rig import wait_for

NVR = [sys.executable, "-m", "nvr.cli"]


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return nvr_here(args, cwd, env=env)


def test_check_config_ok_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[storage]\nroot = "r"\n[[cameras]]\nname = "a"\nurl = "rtsp://127.0.0.1/x"\n')
    done = run(["check-config", str(good)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ok (1 camera," in done.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[storage]\nroot = "r"\n[retention]\ndays = 10\n[[cameras]]\nname = "a"\n'
        'url = "rtsp://u:hunter2@127.0.0.1/x"\nfps = 3\n'
    )
    done = run(["check-config", str(bad)], tmp_path)
    assert done.returncode != 0
    assert "retention.days: must be at least 30" in done.stderr
    assert "cameras[0](a).fps: unknown key" in done.stderr
    assert "cameras[0](a).url: must not contain credentials" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    missing = run(["check-config", str(tmp_path / "nope.toml")], tmp_path)
    assert missing.returncode != 0 and "cannot read file" in missing.stderr


def frames_in_flight(root: Path) -> int:
    """Video frames in the complete fragments of the segment being written under `root`."""
    parts = list(root.rglob("*.mp4.part"))
    if not parts:
        return 0
    try:
        index = parse_segment(parts[0])
    except (Mp4Error, OSError):  # no complete fragment yet, or renamed meanwhile
        return 0
    return index.video.count


@pytest.mark.slow
def test_run_without_config_records_the_demo_camera(tmp_path: Path) -> None:
    """`nvr run` on a fresh machine: ./nvr-data, SQLite, the built-in camera."""
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen([*NVR, "run"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    root = tmp_path / "nvr-data"
    try:
        wait_for(lambda: (root / "status.json").exists(), 20, "the daemon to start")
        wait_for(lambda: frames_in_flight(root) >= 20, 30, "20 frames in the segment in flight")
        # status.json is rewritten every 2 s: the state may still say connecting.
        wait_for(lambda: "demo: recording" in run(["status"], tmp_path).stdout, 10, "recording")
        status = run(["status"], tmp_path)
        assert status.returncode == 0, status.stderr
        assert "daemon: running" in status.stdout
        assert "demo: recording" in status.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        log.close()
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        (seg,) = store.segments("demo")
        found = check_file(seg.path)
        assert found.video_codec == "h264" and found.first_is_key
        assert found.decoded == found.frames >= 20
    finally:
        store.close()
    status = run(["status"], tmp_path)
    assert "daemon: not running" in status.stdout
    assert "demo: not running" in status.stdout
    assert "last hour: 1 segment," in status.stdout
    assert "open gap since" in status.stdout and "daemon-stopped" in status.stdout


@pytest.mark.slow
def test_credentials_never_reach_the_log(tmp_path: Path) -> None:
    config = tmp_path / "nvr.toml"
    config.write_text(
        '[storage]\nroot = "r"\n[[cameras]]\nname = "cam"\nurl = "rtsp://127.0.0.1:9/x"\n'
        'username = "admin"\npassword_env = "CAM_PW"\n'
    )
    env = dict(os.environ, CAM_PW="s3cr3t-pa55")
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [*NVR, "run", "-c", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: b"unreachable" in (tmp_path / "daemon.log").read_bytes(),
            20,
            "a failed connection in the log",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert "s3cr3t-pa55" not in text and "admin:" not in text
    status = run(["status", "-c", str(config)], tmp_path, env)
    assert "s3cr3t-pa55" not in status.stdout + status.stderr
    assert "unreachable" in status.stdout
