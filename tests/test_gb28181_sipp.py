"""The GB/T 28181 device's SIP checked by code we did not write: SIPp (Debian `sip-tester`)
plays the platform from tests/sipp/gb_register_keepalive.xml on 127.0.0.1 over UDP. It
challenges REGISTER with Digest MD5 and checks the answer with its own `verifyauth`, then
takes keepalive MESSAGEs and checks their MANSCDP body; SIPp's exit status says whether
every call went as the scenario demands. A wrong password must fail the registration."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest

from nvr.config.models import Gb28181Config
from nvr.gb28181.device import ChannelConfig, GbDevice
from nvr.storage import Segment

SIPP = shutil.which("sipp")
SCENARIO = Path(__file__).parent / "sipp" / "gb_register_keepalive.xml"
pytestmark = pytest.mark.skipif(SIPP is None, reason="SIPp (Debian sip-tester) not installed")

DEVICE = "50010000001110000001"  # as in the scenario
PASSWORD = "gb-s3cret"


class NoFootage:
    def segments(
        self, camera: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Segment]:
        return []


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def error_logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("*_errors.log"))


async def run_with_sipp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str, calls: int
) -> tuple[int, GbDevice, str]:
    assert SIPP is not None
    port = free_udp_port()
    proc = await asyncio.create_subprocess_exec(
        SIPP,
        "-sf",
        str(SCENARIO),
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        "u1",
        "-m",
        str(calls),
        "-timeout",
        "60",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    monkeypatch.setenv("GB_SIPP_PASSWORD", password)
    config = Gb28181Config(
        device_id=DEVICE,
        domain="5001000000",
        server_id="50010000002000000001",
        server_host="127.0.0.1",
        server_port=port,
        password_env="GB_SIPP_PASSWORD",
        local_port=0,
        keepalive_seconds=1,
    )
    device = GbDevice(
        config,
        [ChannelConfig("gate", "50010000001310000001", "gate")],
        NoFootage(),
        lambda cam: True,
        bind_host="127.0.0.1",
    )
    # no wait for SIPp to bind: a REGISTER sent before is retransmitted (T1 doubling)
    await device.start()
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await device.stop()
    errors = await asyncio.to_thread(error_logs, tmp_path)
    return proc.returncode or 0, device, err.decode(errors="replace") + errors


async def test_sipp_challenges_register_and_takes_three_keepalives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one REGISTER call (401, then the checked answer, 200) and three keepalive calls
    code, device, log = await run_with_sipp(tmp_path, monkeypatch, PASSWORD, calls=4)
    assert code == 0, log
    assert device.status.registrations == 1
    assert device.status.keepalives_answered >= 3
    # SIPp's 200 carried a fixed Date: the offset is reported, our clock untouched
    assert device.status.clock_offset_s is not None


async def test_sipp_refuses_a_wrong_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, device, _ = await run_with_sipp(tmp_path, monkeypatch, "not-the-password", calls=1)
    assert code != 0, "SIPp's verifyauth accepted a wrong password"
    assert device.status.registrations == 0
    assert not device.status.registered
    assert "403" in device.status.last_error, device.status.last_error
