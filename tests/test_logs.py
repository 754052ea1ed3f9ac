"""Logs an operator can use (issue 16, item 5): syslog priorities when stderr is the journal;
a dead camera's first failure, then summaries with back-off; failed logins and export
decisions in the log; access lines with client and user; uvicorn's lines in our format; a
taken API port said plainly and retried until it is free."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nvr.ingest.failures import FailureLog
from tests.api_rig import (
    Api,
    answers,
    contiguous_trio,
    demo_config,
    export_body,
    free_port,
    running_daemon,
)
from tests.recording_rig import Rig, wait_for

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import logging, os, sys
from nvr.cli import setup_logging
for case in sys.argv[1:]:  # STDERR_FILE:JOURNAL_STREAM (empty: unset)
    path, _, journal = case.partition(":")
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)  # stderr is now that file, as systemd or a shell would have opened it
    os.close(fd)
    os.environ.pop("JOURNAL_STREAM", None)
    if journal:
        os.environ["JOURNAL_STREAM"] = journal
    setup_logging("info")
    log = logging.getLogger("nvr.test")
    log.info("an info line")
    log.warning("a warning line")
    log.error("an error line")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("a traceback")
    logging.getLogger("uvicorn.error").info("uvicorn says hello")
    sys.stderr.flush()
"""


def _run_children(*cases: tuple[Path, Path | None]) -> list[str]:
    """CHILD's lines for each (stderr file, the file JOURNAL_STREAM names or None), in one
    Python process (importing nvr.cli costs seconds on a loaded machine)."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(REPO)
    args = []
    for stderr_path, journal_of in cases:
        stderr_path.touch()
        stream = ""
        if journal_of is not None:
            journal_of.touch()
            st = os.stat(journal_of)
            stream = f"{st.st_dev}:{st.st_ino}"
        args.append(f"{stderr_path}:{stream}")
    subprocess.run([sys.executable, "-c", CHILD, *args], env=env, check=True)
    return [stderr_path.read_text() for stderr_path, _ in cases]


def test_syslog_priorities_only_when_stderr_is_the_journal(tmp_path: Path) -> None:
    journal, other, unset = _run_children(
        (tmp_path / "journal.txt", tmp_path / "journal.txt"),
        (tmp_path / "file.txt", tmp_path / "journal.txt"),
        (tmp_path / "plain.txt", None),
    )
    lines = journal.splitlines()
    assert lines[0].startswith("<6>") and "an info line" in lines[0], lines
    assert lines[1].startswith("<4>") and "WARNING nvr.test: a warning line" in lines[1]
    assert lines[2].startswith("<3>") and "an error line" in lines[2]
    traceback = [x for x in lines if "boom" in x or "Traceback" in x]
    assert traceback and all(x.startswith("<3>") for x in traceback), traceback
    assert re.match(
        r"<6>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO uvicorn\.error: uvicorn", lines[-1]
    )
    # Redirected elsewhere (JOURNAL_STREAM names another file, or is unset): plain lines.
    assert "<" not in other.split(" ", 1)[0] and "a warning line" in other
    assert not any(x.startswith("<") for x in unset.splitlines()), unset


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_dead_camera_is_summarised_with_back_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = logging.getLogger("nvr.camera.gate")
    failures = FailureLog(log, "gate", clock)
    caplog.set_level(logging.INFO, logger="nvr.camera.gate")
    for _ in range(400):  # a dead camera for 4000 s, an attempt every 10 s
        failures.failed("refused", "connection refused")
        clock.now += 10
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # The first failure at once, then summaries after 1, 5, 15 minutes and then hourly.
    assert warnings[0].getMessage() == "camera gate: refused (connection refused)"
    summaries = [r.getMessage() for r in warnings[1:]]
    assert len(summaries) == 3, summaries  # t = 60, 360, 1260 (the next: 4860 > 4000)
    assert "still down after 60 s, 7 failed attempts (6 since the last report)" in summaries[0]
    assert "next report in 5 min" in summaries[0] and "next report in 15 min" in summaries[1]
    assert "next report in 60 min" in summaries[2]
    # A new cause is news: logged at once.
    caplog.clear()
    failures.failed("auth-rejected", "401")
    assert [r.getMessage() for r in caplog.records] == ["camera gate: auth-rejected (401)"]
    failures.recovered()
    assert (
        "recording again after 66 min down, 401 failed attempts" in caplog.records[-1].getMessage()
    )
    assert caplog.records[-1].levelno == logging.INFO


def test_a_real_dead_camera_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nvr.camera.dead")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        rig = Rig(tmp_path / "store")
        try:
            rig.add("dead", f"rtsp://127.0.0.1:{port}/x")
            wait_for(lambda: rig.recorders["dead"].status().reconnects >= 4, 30, "4 attempts")
        finally:
            rig.stop()
            rig.store.close()
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "nvr.camera.dead" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, warnings


@pytest.mark.slow
def test_logins_exports_and_access_lines_are_logged(
    footage_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nvr.api")
    with footage_api.client() as anon:
        r = anon.post("/api/login", json={"username": "olga", "password": "wrong"})
        assert r.status_code == 401
    trio = contiguous_trio(footage_api.store, "h264aac")
    with footage_api.as_user("olga") as olga, footage_api.as_user("oscar") as oscar:
        r = olga.post("/api/exports", json=export_body(trio[0].start_ms, trio[1].end_ms))
        assert r.status_code == 201, r.text
        eid = r.json()["id"]
        assert (
            olga.post(f"/api/exports/{eid}/approve", json={"approver_work_id": "OP-1"}).status_code
            == 403
        )
        assert (
            oscar.post(f"/api/exports/{eid}/approve", json={"approver_work_id": "OP-2"}).status_code
            == 200
        )
        assert oscar.get("/api/cameras").status_code == 200

    def lines(logger: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger]

    wait_for(lambda: any('/api/cameras"' in x for x in lines("nvr.api.access")), 10, "access")
    assert "login failed for olga from 127.0.0.1" in lines("nvr.api.auth")
    exports = lines("nvr.api.exports")
    assert any(x.startswith(f"export {eid} requested by olga: camera h264aac") for x in exports)
    assert any(x.startswith(f"export {eid} approval by olga refused:") for x in exports), exports
    assert any(x.startswith(f"export {eid} approved by oscar") for x in exports), exports
    access = lines("nvr.api.access")
    assert any(re.match(r'127\.0\.0\.1 oscar "GET /api/cameras" 200 \(\d+ ms\)', x) for x in access)
    assert any(re.match(r'127\.0\.0\.1 - "POST /api/login" 401', x) for x in access), access


@pytest.mark.slow
def test_a_taken_api_port_is_said_plainly_and_retried(tmp_path: Path) -> None:
    port = free_port()
    cfg = demo_config(tmp_path / "nvr.toml", port)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    logfile = tmp_path / "daemon.log"
    try:
        with running_daemon(cfg):
            wait_for(lambda: "cannot listen" in logfile.read_text(), 30, "the port complaint")
            text = logfile.read_text()
            assert f"port {port} is already in use by another program" in text, text
            assert "trying again in 2 s (recording goes on)" in text
            squatter.close()
            wait_for(lambda: answers(f"http://127.0.0.1:{port}"), 30, "the API once it is free")
    finally:
        squatter.close()
    text = logfile.read_text()
    # uvicorn's own lines come in our format.
    assert re.search(
        r"^\d{4}-\d\d-\d\dT[\d:.]+Z INFO uvicorn\.error: Uvicorn running on", text, re.M
    ), text
    assert "Traceback" not in text
