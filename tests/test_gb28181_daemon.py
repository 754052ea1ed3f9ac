"""The GB/T 28181 device inside a real daemon (`nvr.daemon`), recording the built-in test
camera in real time, against the in-repo platform (tests/gbsim.py) on 127.0.0.1: it
registers, its catalog shows the camera ON, a live INVITE gets the recorder's own frames
(decoded by PyAV from the reassembled PS) and is audited; the platform restarts and the
device registers again while recording goes on without a single outage; on stop the device
unregisters. A daemon whose platform never answers records just the same."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from nvr.cli import gb28181_lines
from nvr.config import load_config
from nvr.daemon import run_daemon
from nvr.storage import SegmentStore
from tests.api_rig import free_port
from tests.gbsim import Platform, hdr

pytestmark = pytest.mark.slow

DEVICE = "50010000001110000001"
SERVER = "50010000002000000001"
DOMAIN = "5001000000"
PASSWORD = "daemon-gb-pw"
CHANNEL = "50010000001310000001"  # derived: the first camera


async def wait_for(
    cond: Callable[[], bool], what: str, daemon: asyncio.Task[None], within: float = 60
) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert not daemon.done(), daemon
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def write_config(tmp_path: Path, port: int) -> Path:
    root = tmp_path / "rec"
    (tmp_path / "gb.pw").write_text(PASSWORD + "\n")
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        f'log_level = "warning"\n[storage]\nroot = "{root}"\nreserve_bytes = 0\n'
        f'[gb28181]\ndevice_id = "{DEVICE}"\ndomain = "{DOMAIN}"\n'
        f'server_id = "{SERVER}"\nserver_host = "127.0.0.1"\nserver_port = {port}\n'
        f'password_file = "{tmp_path / "gb.pw"}"\ntransport = "udp"\nlocal_port = 0\n'
        'keepalive_seconds = 1\ncameras = ["demo"]\n'
        '[[cameras]]\nname = "demo"\nurl = "builtin:testpattern"\nsegment_seconds = 10\n'
        'location = "解放碑 东门"\n'
    )
    return cfg


def gb_lines(root: Path) -> list[str]:
    try:
        doc = json.loads((root / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return gb28181_lines(doc)


def outages_and_segments(root: Path) -> tuple[list[str], int]:
    """The demo camera's outages (cause, start, end: what an assertion shows) and how many
    segments it has."""
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        outages = [f"{o.cause} {o.start_ms}-{o.end_ms}" for o in store.ledger.outages("demo")]
        return outages, len(store.segments("demo"))
    finally:
        store.close()


def audit_of(root: Path) -> list[tuple[str, str, str]]:
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        return [(e.actor, e.action, e.target) for e in store.audit.entries(action="live")]
    finally:
        store.close()


async def test_daemon_registers_streams_live_and_survives_a_platform_restart(
    tmp_path: Path,
) -> None:
    platform = Platform(SERVER, DOMAIN, PASSWORD)
    await platform.start()
    cfg = write_config(tmp_path, platform.port)
    root = tmp_path / "rec"
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(load_config(cfg), stop=stop), name="daemon")
    try:
        await wait_for(platform.registered.is_set, "registration", daemon)
        # status.json (and so `nvr status`) shows the registration
        await wait_for(lambda: gb_lines(root)[:1] != [], "status.json's gb28181", daemon)
        await wait_for(
            lambda: gb_lines(root)[0].startswith(f"gb28181: registered with {SERVER}"),
            "the registration in nvr status",
            daemon,
        )

        # the camera is ON once its recorder records
        async def catalog_status() -> str:
            [answer] = await platform.query("Catalog", DEVICE, int(time.time()))
            item = answer.find("DeviceList/Item")
            assert item is not None
            assert item.findtext("DeviceID") == CHANNEL
            assert item.findtext("Name") == "解放碑 东门"
            return item.findtext("Status") or ""

        deadline = time.monotonic() + 60
        while await catalog_status() != "ON":
            assert time.monotonic() < deadline, "the camera never showed ON"
            await asyncio.sleep(0.5)

        call = await platform.invite(CHANNEL, "Play")
        assert call.answer is not None and call.answer.status_code == 200
        await wait_for(lambda: sum(p.marker for p in call.packets) >= 50, "50 live frames", daemon)
        await call.bye()
        path = tmp_path / "live.ps"
        await asyncio.to_thread(path.write_bytes, call.ps())
        with av.open(str(path), format="mpeg") as container:
            assert container.streams.video[0].codec_context.name == "h264"
            decoded = sum(1 for _ in container.decode(video=0))
        assert decoded >= 50

        # the network to the platform is lost: 3 keepalives unanswered, the device tries to
        # register again; then the platform restarts (forgetting the device) and is back
        before = platform.registrations
        platform.silent = True
        await wait_for(lambda: "REGISTER" in platform.ignored, "a new REGISTER", daemon, 60)
        await platform.stop()
        platform.silent = False
        await platform.start()
        await wait_for(lambda: platform.registrations > before, "registration again", daemon, 90)
        segments_then = (await asyncio.to_thread(outages_and_segments, root))[1]
        await wait_for(
            lambda: outages_and_segments(root)[1] > segments_then, "a further segment", daemon, 30
        )
    finally:
        stop.set()
        await daemon
        await platform.close()
    outages, segments = await asyncio.to_thread(outages_and_segments, root)
    # recording never noticed: the only outage is the daemon's own stop at the end, if any
    assert segments >= 2
    assert len(outages) <= 1, outages
    assert platform.unregistrations == 1
    assert await asyncio.to_thread(audit_of, root) == [(f"gb28181:{SERVER}", "live", "demo")]


async def test_an_absent_platform_never_disturbs_recording(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port())  # nobody listens there
    root = tmp_path / "rec"
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(load_config(cfg), stop=stop), name="daemon")
    try:
        await wait_for(
            lambda: (root / "index.db").exists() and outages_and_segments(root)[1] >= 2,
            "two segments",
            daemon,
            60,
        )
    finally:
        stop.set()
        await daemon
    outages, _ = await asyncio.to_thread(outages_and_segments, root)
    assert len(outages) <= 1, outages


async def test_reload_applies_gb28181_changes(tmp_path: Path) -> None:
    """SIGHUP with a changed `[gb28181]` (the camera no longer offered): the device ends the
    camera's live stream with a BYE, unregisters, registers again with the new settings,
    and the platform then sees no channel (Catalog empty, INVITE 404); recording goes on."""
    platform = Platform(SERVER, DOMAIN, PASSWORD)
    await platform.start()
    cfg = write_config(tmp_path, platform.port)
    stop = asyncio.Event()
    daemon = asyncio.create_task(
        run_daemon(load_config(cfg), stop=stop, config_path=cfg), name="daemon"
    )
    try:
        await wait_for(platform.registered.is_set, "registration", daemon)
        call = await platform.invite(CHANNEL, "Play")
        assert call.answer is not None and call.answer.status_code == 200
        await wait_for(lambda: sum(p.marker for p in call.packets) >= 5, "live frames", daemon)
        before = platform.registrations
        text = cfg.read_text(encoding="utf-8")
        assert 'cameras = ["demo"]' in text
        cfg.write_text(text.replace('cameras = ["demo"]', "cameras = []"), encoding="utf-8")
        os.kill(os.getpid(), signal.SIGHUP)
        bye = await asyncio.wait_for(platform.requests.get(), 60)
        assert bye.method == "BYE" and call.invite is not None
        assert hdr(bye, "Call-ID") == hdr(call.invite, "Call-ID")
        await wait_for(lambda: platform.unregistrations == 1, "unregistration", daemon, 30)
        await wait_for(lambda: platform.registrations > before, "a new registration", daemon, 30)
        [answer] = await platform.query("Catalog", DEVICE, int(time.time()))
        assert answer.findtext("SumNum") == "0"
        again = await platform.invite(CHANNEL, "Play")
        assert again.answer is not None and again.answer.status_code == 404
    finally:
        stop.set()
        await daemon
        await platform.close()
    assert platform.unregistrations == 2  # the reload's and the stop's
