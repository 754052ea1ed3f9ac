"""Camera simulator for tests and benchmarks: a real RTSP server on 127.0.0.1.

This package owns starting, driving and stopping the simulator. `CameraSim` runs in the test
process on the caller's thread; it spawns ``rtsp_server.py`` under Debian's ``/usr/bin/python3``
(GStreamer's RTSP server through GObject introspection, which the venv does not have) and talks
to it over pipes: one command line on stdin, one ``ok`` / ``error <why>`` line back on stdout. A
daemon thread reads the server's stdout into a queue so replies can be awaited with a timeout;
the server's stderr goes to a temporary file whose tail is quoted when something fails.

Clips come from `tests.camsim.clips.make_clips`; pytest fixtures are in `tests.camsim.fixtures`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
MOUNTS = ("h264aac", "h264", "h265", "bframes", "hd4m")
DEBIAN_PACKAGES = (
    "python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
)

__all__ = ["MOUNTS", "CameraSim", "CameraSimError", "gst_rtsp_unavailable"]


class CameraSimError(RuntimeError):
    """The simulator failed to start, refused a command or stopped answering."""


def gst_rtsp_unavailable() -> str | None:
    """Why the system Python cannot run the server, or None when it can."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} not found; install python3 and {DEBIAN_PACKAGES}"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstApp', '1.0'); "
        "gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "missing = [e for e in ('appsrc', 'clocksync', 'rtph264pay', 'rtph265pay', "
        "'rtpmp4gpay') if Gst.ElementFactory.find(e) is None]; "
        "print(' '.join(missing))"
    )
    try:
        done = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            env=_server_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"cannot run {SYSTEM_PYTHON}: {err}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"{SYSTEM_PYTHON} cannot load GstRtspServer ({last}); install {DEBIAN_PACKAGES}"
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()}; install {DEBIAN_PACKAGES}"
    return None


def _server_env() -> dict[str, str]:
    """The environment for the system Python: the venv's Python settings removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("VIRTUAL_ENV", None)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CameraSim:
    """One simulator process serving `mounts` (clip names, or ``name=clip``) on one port."""

    def __init__(
        self,
        clips_dir: Path,
        port: int | None = None,
        mounts: Sequence[str] | None = None,
        auth: str | None = None,
    ) -> None:
        self.clips_dir = clips_dir
        self.port = free_port() if port is None else port
        self.mounts = tuple(MOUNTS if mounts is None else mounts)
        self.auth = auth
        """`digest:USER:PASSWORD` or `basic:USER:PASSWORD`: the login every mount needs."""
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_path: Path | None = None
        self._stderr_saved = ""  # tail of a stopped server's stderr
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()  # one command and its reply at a time

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._running().pid

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def url(self, mount: str) -> str:
        """The RTSP URL of `mount`."""
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    def start(self, timeout: float = 15.0) -> None:
        """Spawn the server and wait until it listens; raise CameraSimError if it does not."""
        if self.running:
            raise CameraSimError("camera simulator already running")
        self._discard_stderr()
        fd, name = tempfile.mkstemp(prefix="camsim-", suffix=".stderr")
        os.close(fd)
        self._stderr_path = Path(name)
        self._lines = queue.Queue()
        cmd = [
            str(SYSTEM_PYTHON),
            str(SERVER_SCRIPT),
            "--port",
            str(self.port),
            "--clips",
            str(self.clips_dir),
            "--mounts",
            ",".join(self.mounts),
        ]
        if self.auth:
            cmd += ["--auth", self.auth]
        try:
            with self._stderr_path.open("ab") as stderr:  # append: no offset shared with us
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    bufsize=1,
                    env=_server_env(),
                    start_new_session=True,  # a ^C in the test run reaches us, not the server
                )
        except OSError as err:
            raise CameraSimError(f"cannot run {SYSTEM_PYTHON}: {err}") from err
        self._proc = proc
        self._reader = threading.Thread(
            target=self._read_stdout, args=(proc, self._lines), name="camsim-stdout", daemon=True
        )
        self._reader.start()
        line = self._next_line(timeout)
        if line != f"READY {self.port}":
            self._kill()
            if line is None and proc.returncode not in (None, -signal.SIGKILL):
                what = f"exited with status {proc.returncode}"
            else:
                what = f"did not start within {timeout:.0f}s (stdout: {line!r})"
            tail = self.stderr_tail()
            self._discard_stderr()
            raise CameraSimError(f"camera simulator on port {self.port} {what}; stderr:\n{tail}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server: SIGTERM, wait, SIGKILL if it does not exit. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a SIGSTOPped server must run to exit
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        self._close_pipes(proc)
        self._proc = None
        self._discard_stderr()

    def restart(self, timeout: float = 15.0) -> None:
        """Stop and start again on the same port; every client connection is dropped."""
        self.stop()
        self.start(timeout)

    def freeze(self, mount: str) -> None:
        """Stop sending media on `mount`; RTSP sessions and TCP connections stay open."""
        self._command(f"freeze {mount}")

    def thaw(self, mount: str) -> None:
        """Resume `mount`; the gap in media timestamps equals the time spent frozen."""
        self._command(f"thaw {mount}")

    def scene(self, mount: str, k: int) -> None:
        """Switch a `NAME=CLIP1+CLIP2+...` mount's video to its k-th clip (from 0) at the next
        keyframe (`clips.scene_mount`)."""
        self._command(f"scene {mount} {k}")

    def jump(self, mount: str, seconds: float) -> None:
        """Add a forward jump of `seconds` to the timestamps of media sent from now on."""
        self._command(f"jump {mount} {seconds!r}")

    def sigstop(self) -> None:
        """Freeze the whole server process (every mount, RTSP and RTCP included)."""
        os.kill(self.pid, signal.SIGSTOP)

    def sigcont(self) -> None:
        """Let a SIGSTOPped server run again."""
        os.kill(self.pid, signal.SIGCONT)

    def stderr_tail(self, max_chars: int = 4000) -> str:
        """The last `max_chars` characters the server (running or last stopped) wrote to stderr."""
        if self._stderr_path is None:
            return self._stderr_saved[-max_chars:]
        try:
            with self._stderr_path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - max_chars))
                return f.read().decode(errors="replace")
        except OSError as err:
            return f"(stderr unreadable: {err})"

    def _discard_stderr(self) -> None:
        """Keep the tail of the stderr file in memory and remove the file."""
        if self._stderr_path is not None:
            self._stderr_saved = self.stderr_tail()
            self._stderr_path.unlink(missing_ok=True)
            self._stderr_path = None

    def __enter__(self) -> CameraSim:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self, line: str, timeout: float = 5.0) -> None:
        proc = self._running()
        assert proc.stdin is not None
        with self._lock:
            try:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
            except OSError as err:
                raise CameraSimError(
                    f"camera simulator gone ({err}); stderr:\n{self.stderr_tail()}"
                ) from err
            reply = self._next_line(timeout)
        if reply is None:
            raise CameraSimError(
                f"no reply to {line!r} within {timeout:.0f}s; stderr:\n{self.stderr_tail()}"
            )
        if reply != "ok":
            raise CameraSimError(f"{line!r}: {reply}")

    def _running(self) -> subprocess.Popen[str]:
        if self._proc is None:
            raise CameraSimError("camera simulator not started")
        return self._proc

    def _next_line(self, timeout: float) -> str | None:
        """The server's next stdout line, or None at EOF or after `timeout` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    @staticmethod
    def _read_stdout(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        """Runs on the camsim-stdout thread until the server closes stdout."""
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            self._close_pipes(proc)
        self._proc = None

    def _close_pipes(self, proc: subprocess.Popen[str]) -> None:
        """Close our pipe ends once the process is gone; the reader thread sees EOF first."""
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass  # broken pipe on flush: the server is already gone
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()


class SilentListener:
    """A hung camera: accepts TCP connections on `port` (default: a free one) and never
    answers. `accepted` counts the connections it took."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="silent", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)

    def close(self) -> None:
        """Stop listening at once (the port is free for a real server right after)."""
        # shutdown() wakes the thread blocked in accept(); close() alone would leave the
        # socket listening (and the port taken) until that accept() returned.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)
        self.sock.close()
        for conn in self._conns:
            conn.close()
