"""The device process: `ipycam`'s ONVIF services (PyPI; a pure-Python virtual IP camera we did
not write) with their own SOAP templates, HTTP handler and WS-Security UsernameToken check,
served by a `ThreadingHTTPServer`, with stream URIs that point at the loopback RTSP simulator
(`tests.camsim`), which serves the media; ipycam's own encoders are never started.

Run as `python -m tests.onvifsim.device` by `tests.onvifsim.OnvifSim`, never imported by the
test process: ipycam imports OpenCV, whose bundled FFmpeg must not share a process with PyAV's.
Protocol: `READY <port>` on stdout once listening, then one answer line per command line on
stdin (`set <key> <value>` -> `ok`, `get <counter>` -> the number, else `error <why>`); EOF on
stdin stops the device. With `--discovery` it also answers WS-Discovery probes (ipycam's
`WSDiscoveryServer`, bound to port 3702 on every address): only ever started inside a network
namespace a test created.

What the tests change on the device, in `TestOnvifService`, and why:
- `skew_s`: ipycam answers GetSystemDateAndTime from `time.gmtime()` and has no clock hook, so
  the subclass adds the skew to that one answer (a camera whose clock is off).
- GetStreamUri: ipycam picks its sub stream when "Sub" or "Profile_2" occurs anywhere in the
  request, which includes a random base64 WS-Security nonce and digest (about one request in
  3,000 contains "Sub"); the subclass hands ipycam's method only the requested ProfileToken.
- `no_profiles`: GetProfiles answers with no profile (a device without an RTSP profile).
- `rejected` counts requests that carried a login ipycam refused.
Everything else (auth, faults, capabilities, device information) is ipycam's unchanged.

Threads: the main thread reads commands; the HTTP server and discovery run on their own.
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

from ipycam.config import CameraConfig as IpycamConfig
from ipycam.discovery import WSDiscoveryServer
from ipycam.http import IPCameraHTTPHandler
from ipycam.onvif import ONVIFService

_TOKEN = re.compile(r"<(?:\w+:)?ProfileToken>([^<]*)</(?:\w+:)?ProfileToken>")


class TestOnvifService(ONVIFService):  # type: ignore[misc]  # ipycam is untyped
    """ipycam's ONVIF service with the test changes described in the module docstring."""

    __test__ = False

    def __init__(self, config: Any) -> None:
        super().__init__(config, None)
        self.skew_s = 0.0
        self.no_profiles = False
        self.rejected = 0
        self.requests = 0

    def verify_usernametoken(self, soap_body: str) -> bool:
        self.requests += 1
        ok = bool(super().verify_usernametoken(soap_body))
        self.rejected += not ok and "UsernameToken" in soap_body
        return ok

    def get_system_date_time(self) -> str:
        now = time.gmtime(time.time() + self.skew_s)
        body = self._render(
            "get_system_date_time",
            hour=now.tm_hour,
            minute=now.tm_min,
            second=now.tm_sec,
            year=now.tm_year,
            month=now.tm_mon,
            day=now.tm_mday,
        )
        return str(self._wrap_envelope(body))

    def get_stream_uri(self, body: str) -> str:
        match = _TOKEN.search(body)
        return str(super().get_stream_uri(match.group(1) if match else ""))

    def get_profiles(self) -> str:
        if self.no_profiles:
            return str(self._wrap_envelope("<trt:GetProfilesResponse/>"))
        return str(super().get_profiles())


def serve(rtsp_port: int, password: str, host: str = "127.0.0.1") -> tuple[Any, Any, Any]:
    """Start the device: its main profile (1920x1080) streams `rtsp://host:port/h264`, its sub
    profile (640x360) `.../h265`. Returns (config, service, server)."""
    config = IpycamConfig(
        name="LobbyCam",
        manufacturer="PythonCam",
        model="VirtualCam-1",
        serial_number="PY-000042",
        local_ip=host,
        onvif_port=0,
        rtsp_port=rtsp_port,
        username="admin",
        password=password,
        main_stream_name="h264",
        sub_stream_name="h265",
    )
    service = TestOnvifService(config)

    class Handler(IPCameraHTTPHandler):  # type: ignore[misc]  # ipycam is untyped
        camera = SimpleNamespace(onvif=service, config=config)

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    config.onvif_port = server.server_address[1]
    threading.Thread(target=server.serve_forever, name="onvif-http", daemon=True).start()
    return config, service, server


def command(line: str, config: Any, service: Any) -> str:
    """Apply one command line; the answer line."""
    words = line.split()
    if len(words) == 2 and words[0] == "get" and words[1] in ("rejected", "requests"):
        return str(getattr(service, words[1]))
    if len(words) != 3 or words[0] != "set":
        return f"error unknown command {line.strip()!r}"
    key, value = words[1], words[2]
    if key == "skew_s":
        service.skew_s = float(value)
    elif key == "no_profiles":
        service.no_profiles = value == "1"
    elif key == "password":
        config.password = value
    elif key == "rtsp_port":
        config.rtsp_port = int(value)
    elif key == "sub_size":
        width, height = value.split("x")
        config.sub_width, config.sub_height = int(width), int(height)
    else:
        return f"error unknown key {key!r}"
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.onvifsim.device")
    parser.add_argument("--rtsp-port", type=int, default=8554)
    parser.add_argument("--password-env", required=True, help="variable with the password")
    parser.add_argument("--discovery", action="store_true", help="answer WS-Discovery probes")
    args = parser.parse_args(argv)
    config, service, server = serve(args.rtsp_port, os.environ[args.password_env])
    discovery = None
    if args.discovery:
        discovery = WSDiscoveryServer(service)
        discovery.start()
    print(f"READY {config.onvif_port}", flush=True)
    try:
        for line in sys.stdin:
            try:
                answer = command(line, config, service)
            except ValueError as err:
                answer = f"error {err}"
            print(answer, flush=True)
    finally:
        if discovery is not None:
            discovery.stop()
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
