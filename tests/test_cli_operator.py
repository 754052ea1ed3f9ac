"""The CLI for an operator (issue 16, items 6 and 7): `nvr verify` shows progress with a rate
and ETA on a terminal (and only there) and refuses an unknown camera; times are local with
their offset, or UTC with `--utc`; counts have the right plural; `user add/set --cameras`
refuse unknown cameras; and storage per camera (bytes, oldest footage, locked bytes, days
held) agrees between `nvr status`, `/api/cameras` and `/metrics`."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from nvr import show
from nvr.storage import SegmentStore
from tests.api_rig import CAMERAS, NVR, PASSWORD, footage_end, nvr_here, run_api

LOCAL_TZ = "Asia/Kolkata"
"""+05:30: an offset no test machine's UTC clock could print by accident."""


def config_for(root: Path, path: Path) -> Path:
    cams = "".join(f'[[cameras]]\nname = "{c}"\nurl = "rtsp://127.0.0.1:9/{c}"\n' for c in CAMERAS)
    path.write_text(f'[storage]\nroot = "{root}"\n{cams}')
    return path


def test_verify_shows_progress_on_a_terminal_only(footage_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    cfg = config_for(root, tmp_path / "nvr.toml")
    main, tty = pty.openpty()
    try:
        done = subprocess.run(
            [*NVR, "verify", "-c", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=tty,
            text=True,
            timeout=120,
            check=False,
        )
        os.close(tty)
        tty = -1
        shown = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child's side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if tty >= 0:
            os.close(tty)
        os.close(main)
    assert done.returncode == 0, done.stdout
    text = shown.decode()
    assert re.search(
        r"verifying: [\d.]+ [kMG]?B of [\d.]+ [kMG]?B \(\d+%\), [\d.]+ [kMG]?B/s, "
        r"ETA \d+:\d\d:\d\d",
        text,
    ), text
    summary = done.stdout.strip().splitlines()[-1]
    assert re.match(
        r"\d+ segments checked, \d+ files hashed \([\d.]+ [kMG]?B in [\d.]+ s, ", summary
    )
    assert summary.endswith("0 recording problems, 0 audit problems"), summary
    # Not a terminal: no progress line (logs and pipes get the summary only).
    piped = nvr_here(["verify", "-c", str(cfg)], tmp_path)
    assert piped.returncode == 0 and "verifying:" not in piped.stderr, piped.stderr
    # An unknown camera is an error, not an empty success.
    unknown = nvr_here(["verify", "-c", str(cfg), "--camera", "h264acc"], tmp_path)
    assert unknown.returncode != 0
    assert "unknown camera 'h264acc'" in unknown.stderr and "h264aac" in unknown.stderr
    assert "checked" not in unknown.stdout


def test_times_are_local_with_their_offset_or_utc(footage_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    cfg = config_for(root, tmp_path / "nvr.toml")
    # The command runs in this process (nvr_here): its local time follows TZ once tzset.
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = LOCAL_TZ
    time.tzset()
    try:
        local = nvr_here(["status", "-c", str(cfg)], tmp_path)
        utc = nvr_here(["--utc", "status", "-c", str(cfg)], tmp_path)
    finally:
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    pick = re.compile(r"last segment end: (\S+)")
    local_times = pick.findall(local.stdout)
    utc_times = pick.findall(utc.stdout)
    assert local_times and len(local_times) == len(utc_times), local.stdout
    for a, b in zip(local_times, utc_times, strict=True):
        assert a.endswith("+05:30") and b.endswith("Z"), (a, b)
        assert datetime.fromisoformat(a) == datetime.fromisoformat(b.replace("Z", "+00:00"))


def test_counts_have_the_right_plural(tmp_path: Path) -> None:
    assert [show.count(n, "segment") for n in (0, 1, 2)] == [
        "0 segments",
        "1 segment",
        "2 segments",
    ]
    assert show.count(1, "entry", "entries") == "1 entry" and show.size(1_234_567) == "1.23 MB"
    one = tmp_path / "one.toml"
    one.write_text(
        f'[storage]\nroot = "{tmp_path / "rec"}"\n[retention]\ndays = 31\n'
        '[[cameras]]\nname = "gate"\nurl = "rtsp://127.0.0.1:9/gate"\n'
    )
    done = nvr_here(["check-config", "--schema-only", str(one)], tmp_path)
    assert done.returncode == 0 and "(1 camera, retention 31 days)" in done.stdout, done.stdout


def test_user_cameras_must_exist(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        f'[storage]\nroot = "{root}"\n[[cameras]]\nname = "gate"\nurl = "rtsp://127.0.0.1:9/g"\n'
    )
    add = ["user", "add", "-c", str(cfg), "li", "--role", "viewer", "--password-stdin"]
    typo = nvr_here([*add, "--cameras", "gate,lobyy"], tmp_path, stdin=PASSWORD + "\n")
    assert typo.returncode != 0 and "unknown camera 'lobyy'" in typo.stderr, typo.stderr
    assert "known: gate" in typo.stderr
    listed = nvr_here(["user", "list", "-c", str(cfg)], tmp_path)
    assert "li\t" not in listed.stdout, "refused, yet the user was added"
    ok = nvr_here([*add, "--cameras", "gate"], tmp_path, stdin=PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    bad_set = nvr_here(["user", "set", "-c", str(cfg), "li", "--cameras", "*,nope"], tmp_path)
    assert bad_set.returncode != 0 and "unknown camera 'nope'" in bad_set.stderr
    star = nvr_here(["user", "set", "-c", str(cfg), "li", "--cameras", "*"], tmp_path)
    assert star.returncode == 0 and "cameras *" in star.stdout, star.stderr


def test_storage_per_camera_agrees_everywhere(footage_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        segs = store.segments("h264aac")
        # Lock the second and third segments, twice over (overlapping locks count once).
        store.locks.add("h264aac", segs[1].start_ms, segs[2].end_ms, actor="test", reason="a")
        store.locks.add(
            "h264aac", segs[1].start_ms + 1, segs[1].end_ms - 1, actor="test", reason="b"
        )
    finally:
        store.close()
    expected = {
        "stored": sum(s.bytes for s in segs),
        "locked": segs[1].bytes + segs[2].bytes,
        "oldest": segs[0].start_ms,
    }
    end = footage_end(root)
    for api in run_api(root, clock=lambda: end + 86_400_000):
        with api.as_user("root") as c:
            cams = {cam["name"]: cam for cam in c.get("/api/cameras").json()}
            metrics = c.get("/metrics").text
    cam = cams["h264aac"]
    assert cam["stored_bytes"] == expected["stored"]
    assert cam["locked_bytes"] == expected["locked"]
    assert cam["oldest_footage_ms"] == expected["oldest"]
    assert abs(cam["held_days"] - (end + 86_400_000 - expected["oldest"]) / 86_400_000) < 1e-6
    assert cams["bframes"]["locked_bytes"] == 0 and cams["bframes"]["stored_bytes"] > 0
    values = {
        (s.name, s.labels.get("camera")): s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
    }
    assert values[("nvr_camera_stored_bytes", "h264aac")] == expected["stored"]
    assert values[("nvr_camera_locked_bytes", "h264aac")] == expected["locked"]
    assert values[("nvr_camera_oldest_footage_timestamp_seconds", "h264aac")] == (
        expected["oldest"] / 1000
    )
    assert abs(values[("nvr_camera_held_seconds", "h264aac")] - cam["held_days"] * 86_400) < 1e-3
    cfg = config_for(root, tmp_path / "nvr.toml")
    status = nvr_here(["--utc", "status", "-c", str(cfg)], tmp_path).stdout
    block = status.split("h264aac:", 1)[1].split("bframes:", 1)[0]
    line = next(x for x in block.splitlines() if "stored:" in x)
    assert f"in {len(segs)} segments since " in line, line
    show.use_utc(True)
    try:
        assert f"since {show.when(expected['oldest'])}" in line
    finally:
        show.use_utc(False)
    assert f"{show.size(expected['locked'])} locked" in line and "window 30 days" in line
