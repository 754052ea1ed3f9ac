"""Clock health (issue 16, item 4): `nvr status`, `/api/health` and `/metrics` give the same
verdict on the server clock's sync state and on each camera's clock offset; and the daemon
can still read the sync state (read-only `adjtimex`) under the systemd unit's seccomp filter.

The unit's filter is rebuilt here from the unit file itself (`SystemCallFilter=` lines, each
syscall group expanded by `systemd-analyze syscall-filter`, `ProtectClock=yes` as a deny of
`@clock`, as systemd does) and loaded with libseccomp in a child process, which then reads
the clock as the daemon does (tests/seccomp_child.py). PID 1 here is not systemd, so
`systemd-run -p ...` cannot be used; this is the same kernel filter without the manager.
"""

from __future__ import annotations

import ctypes.util
import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nvr.ingest.timecheck.notes import CLOCK_OFFSET
from nvr.storage.server_clock import ServerClockState, read_server_clock
from tests.api_rig import SYNCHRONISED, nvr_here, run_api
from tests.systemd_unit import UNIT, unit_settings

REPO = Path(__file__).resolve().parent.parent
UNSYNCED = ServerClockState(False, "unsynchronised", 16.0, 16.0, 0.0)


def _expand(tool: str, group: str, seen: set[str]) -> set[str]:
    if group in seen:
        return set()
    seen.add(group)
    done = subprocess.run(
        [tool, "syscall-filter", group], capture_output=True, text=True, check=True
    )
    names: set[str] = set()
    for line in done.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        names |= _expand(tool, item, seen) if item.startswith("@") else {item}
    return names


def allowed_syscalls(unit_text: str) -> set[str]:
    """The syscalls a unit's seccomp filter lets through (its allow-list minus its denials)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    settings: dict[str, list[str]] = {}
    for raw in unit_text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    allow: set[str] = set()
    deny: set[str] = set()
    for value in settings.get("SystemCallFilter", []):
        target = deny if value.startswith("~") else allow
        for item in value.removeprefix("~").split():
            target |= _expand(tool, item, set()) if item.startswith("@") else {item}
    if settings.get("ProtectClock") == ["yes"]:
        deny |= _expand(tool, "@clock", set())  # systemd denies the whole group with EPERM
    assert allow, "the unit has no SystemCallFilter allow-list"
    return allow - deny


def read_clock_under(syscalls: set[str]) -> str:
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp not installed (Debian package libseccomp2)")
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "seccomp_child.py")],
        input="\n".join(sorted(syscalls)),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if done.returncode == 3:
        pytest.skip("this kernel refused to load a seccomp filter")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_unit_lets_the_daemon_read_the_clock_sync_state() -> None:
    text = UNIT.read_text(encoding="utf-8")
    allowed = allowed_syscalls(text)
    assert read_clock_under(allowed).startswith("ok "), "adjtimex is denied under the unit"
    # Reading is all it may do: the calls that set the clock stay filtered, and without
    # CAP_SYS_TIME (empty bounding set) adjtimex/clock_adjtime cannot change anything.
    assert not allowed & {"clock_settime", "clock_settime64", "settimeofday", "stime"}
    assert unit_settings(UNIT)["CapabilityBoundingSet"] == [""]
    # The check can fail: ProtectClock=yes (systemd documents it as denying even read-only
    # adjtimex) takes the read away, with EPERM.
    protected = text.replace("[Service]\n", "[Service]\nProtectClock=yes\n", 1)
    assert read_clock_under(allowed_syscalls(protected)) == f"error {errno.EPERM}"


def _status(root: Path, tmp_path: Path) -> str:
    config = tmp_path / "nvr.toml"
    config.write_text(
        f'[storage]\nroot = "{root}"\n[[cameras]]\nname = "gate"\n'
        'url = "rtsp://127.0.0.1:9/gate"\nmax_clock_offset_seconds = 2\n'
    )
    done = nvr_here(["status", "-c", str(config)], tmp_path)
    assert done.returncode in (0, 3), done.stderr
    return done.stdout


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_status_health_and_metrics_agree_on_clocks(users_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    # The real kernel's state: `nvr status` and a health service reading it agree.
    real = read_server_clock()
    for api in run_api(root, server_clock=read_server_clock):
        with api.as_user("root") as c:
            health = c.get("/api/health").json()
            metrics = _metrics(c.get("/metrics").text)
        api.store.events.add("gate", api.store.now() - 60_000, CLOCK_OFFSET, "onvif: x", 0.4)
        api.store.events.add("gate", api.store.now(), CLOCK_OFFSET, "rtcp: camera clock", 5.25)
        with api.as_user("root") as c:
            later = c.get("/api/health").json()
            later_metrics = _metrics(c.get("/metrics").text)
    status = _status(root, tmp_path)
    assert health["clock_synchronised"] is real.synchronised
    assert metrics[("nvr_clock_synchronized", ())] == (1.0 if real.synchronised else 0.0)
    server_line = next(line for line in status.splitlines() if "server clock:" in line)
    assert server_line.startswith("WARNING") is (not real.synchronised), status
    assert any(r.startswith("server clock") for r in health["reasons"]) is (not real.synchronised)
    # A camera 5.25 s off by RTCP (limit 2 s) and 0.4 s by ONVIF: each method judged alike.
    (gate,) = [c for c in later["cameras"] if c["name"] == "gate"]
    by_source = {k["source"]: k for k in gate["clocks"]}
    assert by_source["rtcp"]["warning"] is True and by_source["rtcp"]["offset_s"] == 5.25
    assert by_source["onvif"]["warning"] is False
    assert later["status"] != "ok"
    assert any(r.startswith("camera gate clock (rtcp): +5.250 s") for r in later["reasons"])
    assert not any("camera gate clock (onvif)" in r for r in later["reasons"])
    labels = (("camera", "gate"), ("method", "rtcp"))
    assert later_metrics[("nvr_camera_clock_offset_seconds", labels)] == 5.25
    onvif = (("camera", "gate"), ("method", "onvif"))
    assert later_metrics[("nvr_camera_clock_offset_seconds", onvif)] == 0.4
    assert "WARNING camera clock (rtcp" in status and "+5.250 s" in status
    assert "WARNING camera clock (onvif" not in status


@pytest.mark.parametrize("state", [SYNCHRONISED, UNSYNCED, None])
def test_health_and_metrics_follow_the_server_clock(
    users_template: Path, tmp_path: Path, state: ServerClockState | None
) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)

    def read() -> ServerClockState:
        if state is None:
            raise OSError(errno.EPERM, "adjtimex: Operation not permitted")
        return state

    for api in run_api(root, server_clock=read):
        with api.as_user("root") as c:
            health = c.get("/api/health").json()
            metrics = _metrics(c.get("/metrics").text)
    synced = state is not None and state.synchronised
    assert metrics[("nvr_clock_synchronized", ())] == (1.0 if synced else 0.0)
    assert health["status"] == ("ok" if synced else "degraded"), health
    assert health["clock_synchronised"] is (None if state is None else state.synchronised)
    if state is None:
        assert "server clock unknown (cannot read" in "\n".join(health["reasons"])
    elif not synced:
        assert any("server clock NOT synchronised" in r for r in health["reasons"])
