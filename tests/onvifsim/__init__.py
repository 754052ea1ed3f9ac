"""An ONVIF camera for tests that we did not write: `OnvifSim` runs `ipycam`'s ONVIF services
in a child process (`tests.onvifsim.device`, which documents what it serves and the few things
the tests change on it) and drives it over a line protocol on stdin/stdout.

A separate process because ipycam imports OpenCV, and OpenCV's bundled FFmpeg has no business
in the process that records with PyAV's. `OnvifSim` runs on the caller's thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent.parent
PASSWORD_ENV = "ONVIFSIM_PASSWORD"

__all__ = ["OnvifSim", "OnvifSimError"]


class OnvifSimError(RuntimeError):
    """The device process failed to start or refused a command."""


class OnvifSim:
    """A device process on 127.0.0.1 (or in a network namespace, via `prefix`)."""

    def __init__(
        self,
        rtsp_port: int,
        password: str,
        *,
        discovery: bool = False,
        prefix: Sequence[str] = (),
    ) -> None:
        """`prefix` runs the process under another command (`ip netns exec NAME`)."""
        cmd = [*prefix, sys.executable, "-m", "tests.onvifsim.device"]
        cmd += ["--rtsp-port", str(rtsp_port), "--password-env", PASSWORD_ENV]
        if discovery:
            cmd.append("--discovery")
        env = dict(os.environ, PYTHONPATH=str(REPO), **{PASSWORD_ENV: password})
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()  # ipycam imports take about a second
        if not line.startswith("READY "):
            self.stop()
            raise OnvifSimError(f"device process did not start (said {line!r})")
        self.port = int(line.split()[1])
        self.address = f"http://127.0.0.1:{self.port}"

    def _ask(self, line: str) -> str:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise OnvifSimError(f"{line!r}: {answer or 'no answer'}")
        return answer

    def set(self, key: str, value: object) -> None:
        """skew_s (seconds), password, no_profiles (0/1), rtsp_port, sub_size (WxH)."""
        self._ask(f"set {key} {value}")

    def rejected(self) -> int:
        """Requests that carried a login the device refused so far."""
        return int(self._ask("get rejected"))

    def stop(self) -> None:
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> OnvifSim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
