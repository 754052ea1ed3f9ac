"""Running the recorder day to day (issue 16): one camera's bad config never stops the others,
`check-config` reports every problem at once, a reload changes cameras without a gap in the
unchanged ones. Real daemons (`nvr run`), the GStreamer camera
simulator, the API over HTTP, the index reopened afterwards."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import time
from contextlib import closing
from pathlib import Path

import av
import pytest

from tests.api_rig import (
    NVR,
    add_admin,
    free_port,
    login,
    nvr,
    nvr_here,
    open_index,
    running_daemon,
)
from tests.camsim import CameraSim
from tests.recording_rig import wait_for

UNSET = "NVR_TEST_SURELY_UNSET_PASSWORD"


def test_check_config_reports_every_machine_problem_at_once(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "nvr.toml"
        cfg.write_text(
            f'[storage]\nroot = "{not_a_folder}"\n'
            f'[api]\nlisten = "127.0.0.1:{port}"\n'
            f'tls_certificate = "{tmp_path / "cert.pem"}"\ntls_key = "{tmp_path / "key.pem"}"\n'
            '[[cameras]]\nname = "ok"\nurl = "rtsp://127.0.0.1:9/a"\n'
            '[[cameras]]\nname = "envless"\nurl = "rtsp://127.0.0.1:9/b"\n'
            f'username = "u"\npassword_env = "{UNSET}"\n'
            '[[cameras]]\nname = "fileless"\nurl = "rtsp://127.0.0.1:9/c"\n'
            f'username = "u"\npassword_file = "{tmp_path / "missing.secret"}"\n'
            # a disabled camera's secret is not needed now
            '[[cameras]]\nname = "off"\nurl = "rtsp://127.0.0.1:9/d"\nenabled = false\n'
            f'username = "u"\npassword_env = "{UNSET}"\n'
        )
        env = {k: v for k, v in os.environ.items() if k != UNSET}
        done = nvr_here(["check-config", str(cfg)], tmp_path, env=env)
    assert done.returncode == 2, done
    err = done.stderr
    lines = [
        f"cameras[1](envless).password_env: expected environment variable {UNSET} to be set",
        "cameras[2](fileless).password_file: cannot read",
        f"storage.root: {not_a_folder} is not a folder",
        "api.tls_certificate: cannot read",
        "api.tls_key: cannot read",
        f"api.listen: 127.0.0.1:{port} is already in use",
    ]
    for line in lines:
        assert line in err, (line, err)
    assert "(off)" not in err and "(ok)" not in err
    assert done.stdout == ""
    # Fixed on the machine, the same file passes; schema-only never looks at the machine.
    (tmp_path / "missing.secret").write_text("s3cret\n")
    fixed = cfg.read_text().replace(str(not_a_folder), str(tmp_path / "data"))
    fixed = fixed[: fixed.index("tls_certificate")] + fixed[fixed.index("[[cameras]]") :]
    cfg.write_text(fixed)
    env[UNSET] = "s3cret"
    done = nvr_here(["check-config", str(cfg)], tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "ok (4 cameras" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_camera_without_its_secret_is_its_own_outage(camsim: CameraSim, tmp_path: Path) -> None:
    root = tmp_path / "data"
    port = free_port()
    secret = tmp_path / "late.secret"
    cfg = tmp_path / "nvr.toml"
    url = camsim.url("h264")
    cfg.write_text(
        f'[storage]\nroot = "{root}"\n[api]\nlisten = "127.0.0.1:{port}"\n'
        f'[[cameras]]\nname = "good"\nurl = "{url}"\nsegment_seconds = 10\n'
        f'[[cameras]]\nname = "envless"\nurl = "{url}"\nusername = "u"\n'
        f'password_env = "{UNSET}"\n'
        f'[[cameras]]\nname = "late"\nurl = "{url}"\nusername = "u"\n'
        f'password_file = "{secret}"\nsegment_seconds = 10\n'
    )
    add_admin(cfg)
    env = {k: v for k, v in os.environ.items() if k != UNSET}
    with running_daemon(cfg, env) as proc, login(f"http://127.0.0.1:{port}") as api:

        def states() -> dict[str, str]:
            return {c["name"]: c["state"] for c in api.get("/api/cameras").json()}

        wait_for(
            lambda: states()
            == {"good": "recording", "envless": "config-error", "late": "config-error"},
            30,
            "one camera recording, two in config-error",
        )
        health = api.get("/api/health").json()
        assert health["status"] == "critical", health
        reasons = "\n".join(health["reasons"])
        assert "camera envless config-error" in reasons
        assert f"expected environment variable {UNSET} to be set" in reasons
        assert f"password_file: cannot read {secret}" in reasons
        # status.json, which `nvr status` reads, is rewritten every 2 s
        wait_for(
            lambda: "envless: config-error (" in nvr(["status", "-c", str(cfg)], tmp_path).stdout,
            10,
            "nvr status to show the config error",
        )
        status = nvr(["status", "-c", str(cfg)], tmp_path)
        assert "open gap since" in status.stdout and ": config " in status.stdout
        # The secret put in place: that camera starts without a restart.
        secret.write_text("hunter2\n")
        wait_for(lambda: states()["late"] == "recording", 30, "the late camera recording")
        assert proc.poll() is None
    store = open_index(root)
    try:
        assert store.segments("good") and store.segments("late")
        assert not store.segments("envless")
        (outage, *_) = store.ledger.outages("envless")
        assert outage.cause == "config" and UNSET in outage.detail
        late = store.ledger.outages("late")
        assert late[0].cause == "config" and late[0].end_ms is not None
        assert not [o for o in store.ledger.outages("good") if o.cause == "config"]
    finally:
        store.close()
    text = (tmp_path / "daemon.log").read_text()
    assert "hunter2" not in text
    assert "camera envless cannot start: password_env" in text


FRAME_MS = 100  # the simulator's 10 fps clips


def largest_step_ms(path: Path) -> tuple[float, float]:
    """The largest step between consecutive video DTS in a file, and its media length (ms)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        tb = v.time_base
        assert tb is not None
        dts = [p.dts for p in c.demux(v) if p.size and p.dts is not None]
    steps = [float((b - a) * tb) * 1000 for a, b in itertools.pairwise(dts)]
    return max(steps), float((dts[-1] - dts[0]) * tb) * 1000 + FRAME_MS


def camera_block(name: str, url: str, extra: str = "") -> str:
    return f'[[cameras]]\nname = "{name}"\nurl = "{url}"\nsegment_seconds = 10\n{extra}'


@pytest.mark.slow
def test_reload_3_into_4_cameras_keeps_the_unchanged_one_contiguous(
    camsim: CameraSim, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    port = free_port()
    head = f'[storage]\nroot = "{root}"\n[api]\nlisten = "127.0.0.1:{port}"\n'
    keep = camera_block("keep", camsim.url("h264"))
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        head
        + keep
        + camera_block("change", camsim.url("h265"))
        + camera_block("gone", camsim.url("bframes"))
    )
    add_admin(cfg)
    with running_daemon(cfg) as proc, login(f"http://127.0.0.1:{port}") as api:

        def states() -> dict[str, str]:
            return {c["name"]: c["state"] for c in api.get("/api/cameras").json()}

        wait_for(
            lambda: states() == dict.fromkeys(("keep", "change", "gone"), "recording"),
            30,
            "three cameras recording",
        )
        new = (
            head
            + keep
            + camera_block("change", camsim.url("h265"), 'location = "moved to the gate"\n')
            + camera_block("new", camsim.url("h264aac"))
        )
        cfg.write_text(new)
        reload_ms = time.time_ns() // 1_000_000
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: states()
            == {"keep": "recording", "change": "recording", "new": "recording", "gone": "removed"},
            30,
            "the reload applied",
        )
        # Refused: a setting that needs a restart, then a file that is not valid; the
        # running config is kept and the unchanged camera still records.
        cfg.write_text(new.replace(str(root), str(tmp_path / "elsewhere")))
        r = api.post("/api/reload")
        assert r.status_code == 409, r.text
        assert "storage.root: changed" in r.json()["detail"]
        assert "restart the daemon" in r.json()["detail"]
        cfg.write_text(new + "[[cameras]]\nname = 'bad name'\n")
        r = api.post("/api/reload")
        assert r.status_code == 409 and "cameras[3]" in r.json()["detail"], r.text
        # Applied through the API: the diff comes back.
        cfg.write_text(new.replace("[api]", '[site]\nname = "Depot"\n[api]'))
        r = api.post("/api/reload")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "applied": True,
            "added": [],
            "removed": [],
            "changed": {},
            "unchanged": ["keep", "change", "new"],
            "settings": ["site.name"],
        }
        assert states()["keep"] == "recording"

        def keep_cut_after_reload() -> bool:
            with closing(open_index(root)) as store:
                return any(s.start_ms > reload_ms for s in store.segments("keep"))

        wait_for(keep_cut_after_reload, 20, "a segment of 'keep' begun after the reload")
        audit = api.get("/api/audit", params={"action": "config-reload"}).json()
    assert proc.returncode == 0
    with closing(open_index(root)) as store:
        segs = store.segments("keep")
        assert segs[0].start_ms < reload_ms < segs[-1].start_ms
        prev_end: float | None = None
        for seg in segs:
            step, media_ms = largest_step_ms(seg.path)
            assert step <= FRAME_MS + 1, (seg.path, step)  # no frame missing inside a file
            if prev_end is not None:
                assert abs(seg.start_ms - prev_end) <= FRAME_MS, (seg, prev_end)
            prev_end = seg.start_ms + media_ms
        # Only the stop at the end of the test is in the unchanged camera's ledger.
        assert [o.cause for o in store.ledger.outages("keep")] == ["daemon-stopped"]
        (restarted, stopped) = store.ledger.outages("change")
        assert stopped.cause == "daemon-stopped"
        assert restarted.cause == "config-reload" and "changed" in restarted.detail
        assert restarted.end_ms is not None and restarted.end_ms - restarted.start_ms < 10_000
        assert any(s.start_ms > reload_ms for s in store.segments("change"))
        (gone,) = store.ledger.outages("gone")
        assert gone.cause == "config-reload" and gone.end_ms is None
        assert "removed" in gone.detail
        assert store.segments("gone")[-1].end_ms <= gone.start_ms + FRAME_MS
        assert store.segments("new")
    assert not list(root.rglob("*.part"))
    outcomes = [(e["actor"], e["outcome"]) for e in audit]
    assert ("signal:SIGHUP", "ok") in outcomes, audit
    assert outcomes.count(("admin", "refused")) == 2 and ("admin", "ok") in outcomes
    sighup = next(e for e in audit if e["actor"] == "signal:SIGHUP")
    assert sighup["detail"]["added"] == ["new"] and sighup["detail"]["removed"] == ["gone"]
    assert sighup["detail"]["changed"] == {"change": ["location"]}
    log = (tmp_path / "daemon.log").read_text()
    assert "configuration reload by admin refused" in log
    assert "storage.root: changed" in log


def test_reload_diff_names_what_needs_a_restart() -> None:
    from nvr.config import parse_config
    from nvr.config.diff import diff_configs

    base = {
        "storage": {"root": "/srv/a"},
        "api": {"listen": "127.0.0.1:8080"},
        "cameras": [
            {"name": "a", "url": "rtsp://127.0.0.1/a"},
            {"name": "b", "url": "rtsp://127.0.0.1/b", "enabled": False},
        ],
    }
    old = parse_config(base, "old")
    new = parse_config(
        {
            "storage": {"root": "/srv/b", "database_url": "sqlite:////srv/x.db"},
            "api": {"listen": "127.0.0.1:9090"},
            "log_level": "debug",
            "cameras": [
                {"name": "a", "url": "rtsp://127.0.0.1/a", "segment_seconds": 30},
                {"name": "b", "url": "rtsp://127.0.0.1/b"},
            ],
        },
        "new",
    )
    diff = diff_configs(old, new)
    assert diff.restart_needed == ("storage.root", "storage.database_url", "api.listen")
    assert diff.changed == {"a": ("segment_seconds",)} and diff.added == ("b",)
    assert diff.live == ("log_level",)
    assert diff_configs(old, old).empty


# --- the CLI as an operator meets it (issue 16, item 6) ---------------------------------------


def test_version_and_config_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nvr import configpath

    done = nvr_here(["--version"], tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("nvr 0."), done
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        f'[storage]\nroot = "{tmp_path / "data"}"\n'
        '[[cameras]]\nname = "yard"\nurl = "rtsp://127.0.0.1:9/a"\n'
    )
    env = {**os.environ, "NVR_CONFIG": str(cfg)}
    done = nvr_here(["status"], tmp_path, env=env)
    # Not the embedded demo: the file NVR_CONFIG names; and not running is a failure status.
    assert "yard: not running" in done.stdout and "demo" not in done.stdout, done
    assert done.returncode == 3
    assert not (tmp_path / "nvr-data").exists()
    # Without -c and NVR_CONFIG, the installed file is used when it exists.
    monkeypatch.delenv("NVR_CONFIG", raising=False)
    monkeypatch.setattr(configpath, "DEFAULT_PATH", cfg)
    assert configpath.config_path(None) == cfg
    assert configpath.load(None).cameras[0].name == "yard"
    monkeypatch.setattr(configpath, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert configpath.config_path(None) is None
    assert configpath.config_path(tmp_path / "given.toml") == tmp_path / "given.toml"


def test_status_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(f'[storage]\nroot = "{tmp_path / "data"}"\n')
    read, write = os.pipe()
    os.close(read)  # `nvr status | head -1` once head has gone
    try:
        done = subprocess.run(
            [*NVR, "status", "-c", str(cfg)], stdout=write, stderr=subprocess.PIPE, check=False
        )
    finally:
        os.close(write)
    assert done.stderr == b"", done.stderr.decode()
    assert done.returncode == 141


def test_unknown_keys_get_a_did_you_mean(tmp_path: Path) -> None:
    from nvr.config import ConfigError, load_config

    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        'log_levle = "info"\n[storage]\nroot = "r"\n[api]\nlisen = "127.0.0.1:8080"\n'
        '[[cameras]]\nname = "a"\nurl = "rtsp://127.0.0.1/a"\nsegment_second = 10\nzzz = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert sorted(info.value.problems) == [
        "api.lisen: unknown key (not part of the schema); did you mean 'listen'?",
        "cameras[0](a).segment_second: unknown key (not part of the schema); "
        "did you mean 'segment_seconds'?",
        "cameras[0](a).zzz: unknown key (not part of the schema)",
        "log_levle: unknown key (not part of the schema); did you mean 'log_level'?",
    ]
