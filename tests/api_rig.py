"""Shared helpers and fixtures for the HTTP API tests: users, an `ApiServer` on a thread
(`run_api`), the session footage (`footage_template`) and a running API over a copy of it
(`footage_api`), and a real daemon (`demo_config`, `running_daemon`, `login`). The fixtures
are registered by tests/conftest.py. Runs on pytest's thread
(the API server on a thread of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher

from nvr.api import ApiContext, ApiServer
from nvr.api.cameras import LiveStatus
from nvr.api.health import CapacityProvider, GbProvider
from nvr.api.live.service import TapProvider
from nvr.cli import main as cli_main
from nvr.config import CameraConfig, NvrConfig, StorageConfig
from nvr.config.models import ApiConfig, PrivacyMask
from nvr.ingest.errors import CameraUnreachable, StreamEnded
from nvr.storage import Segment, SegmentStore, now_ms
from nvr.storage.server_clock import ServerClockState
from tests.recording_rig import wait_for
from tests.scripted import (
    BOOT_OFFSET,
    Connection,
    Refused,
    SimulatedClock,
    Step,
    run_script,
)

PASSWORD = "correct horse battery staple"
USERS = {
    "root": ("admin", ["*"]),
    "olga": ("operator", ["*"]),
    "oscar": ("operator", ["*"]),
    "vera": ("viewer", ["h264aac"]),
    "audrey": ("auditor", []),
}
CAMERAS = ["h264aac", "bframes"]
NVR = [sys.executable, "-m", "nvr.cli"]
SYNCHRONISED = ServerClockState(True, "ok", 0.001, 0.01, 0.0)
_RECORDED: dict[str, Path] = {}
"""Session footage, recorded once even when several modules use the fixture."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
"""argon2id at its smallest (8 KiB, one pass): the API tests log in hundreds of times, and
the throttle tests guess passwords from 30 threads, each check ~50 ms of CPU and 64 MiB at
the production parameters. Passed explicitly to the stores the tests open
(`SegmentStore(password_hasher=...)`): hashes made with it are cheap to check in any store.
What the daemon and the CLI use is tested in tests/test_accounts_hashing.py."""


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""Debian's chromium, for the tests that run it headless without Playwright (None: absent)."""
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
"""Chromium's flags for a quiet headless run in a test (no sandbox: CI runs as root)."""


def open_store(root: Path, clock: Callable[[], int] | None = None) -> SegmentStore:
    url = f"sqlite:///{root / 'index.db'}"
    if clock is None:
        return SegmentStore(root, url, password_hasher=TEST_HASHER)
    return SegmentStore(root, url, clock=clock, password_hasher=TEST_HASHER)


def add_users(store: SegmentStore) -> None:
    for name, (role, cams) in USERS.items():
        store.accounts.add_user(name, role, PASSWORD, cameras=cams, actor="test")


def make_config(root: Path, port: int) -> NvrConfig:
    cams = [CameraConfig(name=n, url=f"rtsp://127.0.0.1:9/{n}") for n in [*CAMERAS, "gate"]]
    return NvrConfig(
        storage=StorageConfig(root=root),
        cameras=cams,
        api=ApiConfig(listen=f"127.0.0.1:{port}"),
    )


class ServerThread:
    """An `ApiServer` on its own event loop in a thread, as the daemon runs it."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.server = ApiServer(ctx)
        self.base = self.server.url
        self._thread = threading.Thread(target=self._run, name="api-test", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def start(self) -> None:
        self._thread.start()
        wait_for(lambda: self._answers(), 20, "the API to listen")

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.server.stop()
        self._thread.join(15)
        assert not self._thread.is_alive(), "the API server did not stop"


class SteppedClock:
    """`time.monotonic` plus an offset the test moves forward: the login throttle's clock
    (`ApiContext.throttle_clock`), so a test waits out a Retry-After without sleeping."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds


@dataclass
class Api:
    """A running API over a store, and clients for it."""

    base: str
    store: SegmentStore
    root: Path
    config: NvrConfig
    server: ServerThread

    @property
    def throttle_clock(self) -> SteppedClock:
        """The login throttle's clock (`run_api` gives every API a `SteppedClock`)."""
        clock = self.server.ctx.throttle_clock
        assert isinstance(clock, SteppedClock), "this API's throttle runs on the real clock"
        return clock

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60)

    def login(self, name: str, password: str = PASSWORD) -> str:
        with self.client() as c:
            r = c.post("/api/login", json={"username": name, "password": password})
            assert r.status_code == 200, r.text
            token: str = r.json()["token"]
            return token

    def as_user(self, name: str) -> httpx.Client:
        return self.client(self.login(name))


def run_api(
    root: Path,
    clock: Callable[[], int] | None = None,
    live: LiveStatus | None = None,
    capacity: CapacityProvider | None = None,
    server_clock: Callable[[], ServerClockState] = lambda: SYNCHRONISED,
    privacy_masks: dict[str, list[PrivacyMask]] | None = None,
    gb28181: GbProvider | None = None,
    mask_hold: threading.Event | None = None,
    taps: TapProvider | None = None,
) -> Iterator[Api]:
    """A running API over the store at `root`. The server clock is synchronised unless the
    test says otherwise (this machine's may not be; tests/test_clock_health.py reads it).
    `privacy_masks`: cameras' masks (issue 18); `mask_hold`: `ApiContext.mask_hold`;
    `taps`: the cameras' packet taps (live view)."""
    store = open_store(root, clock)
    config = make_config(root, free_port())
    if privacy_masks:
        cams = [
            c.model_copy(update={"privacy_masks": privacy_masks.get(c.name, [])})
            for c in config.cameras
        ]
        config = config.model_copy(update={"cameras": cams})
    ctx = ApiContext(
        config=config,
        store=store,
        capacity=capacity,
        server_clock=server_clock,
        throttle_clock=SteppedClock(),
        gb28181=gb28181,
        mask_hold=mask_hold,
        taps=taps,
    )
    if live is not None:
        ctx.live = live
    server = ServerThread(ctx)
    try:
        server.start()
        yield Api(server.base, store, root, config, server)
    finally:
        server.stop()
        store.close()


@pytest.fixture(scope="session")
def users_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store with the test users (hashing passwords once per session)."""
    root = tmp_path_factory.mktemp("users") / "store"
    store = open_store(root)
    try:
        add_users(store)
    finally:
        store.close()
    return root


@pytest.fixture
def api(users_template: Path, tmp_path: Path) -> Iterator[Api]:
    """A running API over a store without footage."""
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    yield from run_api(root)


@pytest.fixture(scope="session")
def footage_template(scripted_clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Footage recorded once per session (per test process) by real recorder threads from
    a scripted camera on a simulated clock (tests/scripted.py), in milliseconds: `h264aac`
    (with audio) and `bframes`, 10 s segments, 36 s, then the camera goes away (refused thrice,
    3.5 s) and comes back for 4 s more (a gap in the ledger), as a camera restart would."""
    if "footage" in _RECORDED:
        return _RECORDED["footage"]
    root = tmp_path_factory.mktemp("footage") / "store"
    start = now_ms() - 3_600_000  # an hour ago: footage_api's clock stands after its end
    current = [SimulatedClock(start)]
    store = SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        clock=lambda: current[0].wall_ms(),
        uptime=lambda: current[0].wall_ms() - BOOT_OFFSET,
        password_hasher=TEST_HASHER,
    )
    try:
        for cam in CAMERAS:
            current[0] = SimulatedClock(start)  # both cameras over the same hour
            script: list[Step] = [
                Connection(cam, seconds=36, end=StreamEnded),
                *[Refused(CameraUnreachable)] * 3,  # 3.5 s of back-off
                Connection(cam, seconds=4),
            ]
            run_script(store, scripted_clips, current[0], script, camera=cam)
        add_users(store)
    finally:
        store.close()
    _RECORDED["footage"] = root
    return root


def footage_end(root: Path) -> int:
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        return max(s.end_ms for c in CAMERAS for s in store.segments(c))
    finally:
        store.close()


def store_at(root: Path) -> Iterator[SegmentStore]:
    """A store at `root` (a new one where there is none), closed after: a fixture's body
    (`yield from store_at(tmp_path / "store")`)."""
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        yield store
    finally:
        store.close()


def footage_copy(footage_template: Path, tmp_path: Path) -> Iterator[SegmentStore]:
    """A store over a copy of the recorded footage (at `tmp_path/store`), closed after: a
    fixture's body (`yield from footage_copy(footage_template, tmp_path)`)."""
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    yield from store_at(root)


@pytest.fixture
def footage_api(footage_template: Path, tmp_path: Path) -> Iterator[Api]:
    """A running API over a copy of the recorded footage; its clock stands one minute after
    the end of the footage, however long ago the session recorded it."""
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    offset = time.time_ns() // 1_000_000 - (footage_end(root) + 60_000)
    yield from run_api(root, clock=lambda: time.time_ns() // 1_000_000 - offset)


def nvr(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        NVR + args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def nvr_here(
    args: list[str], cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`nvr` (above) run in this process, through `nvr.cli.main`: the same command, exit
    status and output, without starting Python and importing the program again for every
    command (seconds each on a loaded machine). For tests of what a command does; tests of
    the process itself (signals, a second process beside the daemon, its log on stderr)
    use `nvr`. While it runs it owns this process's working directory, `os.environ` (when
    `env` is given), stdin, stdout and stderr: call it from the test's own thread."""
    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_env, old_stdin = os.getcwd(), dict(os.environ), sys.stdin
    try:
        os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        sys.stdin = io.StringIO(stdin or "")
        # What logging's last resort prints in a process without handlers (the CLI sets none):
        # warnings and errors, the bare message, on stderr.
        logged = logging.StreamHandler(err)
        logged.setLevel(logging.WARNING)
        logging.getLogger().addHandler(logged)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_main(args)
            except SystemExit as exit_:  # as the interpreter ends on it
                if exit_.code is None or isinstance(exit_.code, int):
                    code = exit_.code or 0
                else:  # SystemExit("message"): the message on stderr, status 1
                    print(exit_.code, file=sys.stderr)
                    code = 1
            finally:
                logging.getLogger().removeHandler(logged)
    finally:
        sys.stdin = old_stdin
        if env is not None:
            os.environ.clear()
            os.environ.update(old_env)
        os.chdir(old_cwd)
    return subprocess.CompletedProcess(["nvr", *args], code, out.getvalue(), err.getvalue())


def write_config(root: Path, path: Path) -> Path:
    path.write_text(
        f'[storage]\nroot = "{root}"\n[[cameras]]\nname = "h264aac"\nurl = "rtsp://127.0.0.1:9/x"\n'
    )
    return path


def contiguous_trio(store: SegmentStore, camera: str) -> list[Segment]:
    segs = store.segments(camera)
    for i in range(len(segs) - 2):
        a, b, c = segs[i : i + 3]
        if b.start_ms == a.end_ms and c.start_ms == b.end_ms:
            return [a, b, c]
    raise AssertionError(f"no three contiguous segments of {camera}: {segs}")


def ready(c: httpx.Client, export_id: int) -> dict[str, object]:
    def done() -> bool:
        return str(c.get(f"/api/exports/{export_id}").json()["state"]) in ("ready", "failed")

    wait_for(done, 60, "the package to be built")
    doc: dict[str, object] = c.get(f"/api/exports/{export_id}").json()
    return doc


def approved_export(api: Api, body: dict[str, object]) -> tuple[int, bytes]:
    """An export requested by olga with `body`, approved by oscar, built and downloaded by
    olga: its id and the package."""
    with api.as_user("olga") as olga, api.as_user("oscar") as oscar:
        r = olga.post("/api/exports", json=body)
        assert r.status_code == 201, r.text
        eid = int(r.json()["id"])
        r = oscar.post(f"/api/exports/{eid}/approve", json={"approver_work_id": "OP-2002"})
        assert r.status_code == 200, r.text
        done = ready(olga, eid)
        assert done["state"] == "ready", done
        pkg = olga.get(f"/api/exports/{eid}/download")
        assert pkg.status_code == 200, pkg.text
    return eid, pkg.content


def export_body(start: int, end: int, camera: str = "h264aac") -> dict[str, object]:
    """An export request's body for [start, end) of `camera`, every required field set."""
    return {
        "camera": camera,
        "start": start,
        "end": end,
        "purpose": "traffic accident 2026-11-22, Jiefangbei",
        "recipient": "Yuzhong district police, officer Li, by hand",
        "approval_document": "YZ-2026-1122-07",
        "requester_work_id": "OP-1001",
    }


def demo_config(cfg: Path, port: int, camera_extra: str = "") -> Path:
    """A config at `cfg` for a daemon with its API on `port` and the built-in test camera
    `demo` (10 s segments; `camera_extra` is appended to its table), recording under `data`
    beside it."""
    cfg.write_text(
        f'[storage]\nroot = "{cfg.parent / "data"}"\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\n'
        '[[cameras]]\nname = "demo"\nurl = "builtin:testpattern"\nsegment_seconds = 10\n'
        + camera_extra
    )
    return cfg


@contextmanager
def running_daemon(
    cfg: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`nvr run -c cfg`, its output appended to `daemon.log` beside `cfg`; stopped with
    SIGTERM at the end. It must exit 0 then, or have been killed with SIGKILL (how a test
    ends it without a goodbye)."""
    logfile = cfg.parent / "daemon.log"
    log = logfile.open("ab")
    proc = subprocess.Popen(
        [*NVR, "run", "-c", str(cfg)], cwd=cfg.parent, stdout=log, stderr=log, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    assert code in (0, -signal.SIGKILL), logfile.read_text()


def answers(base: str) -> bool:
    """Whether the API at `base` answers `/healthz` now."""
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def login(base: str) -> httpx.Client:
    """A running daemon's API at `base`, logged in as `admin` (see `add_admin`)."""
    wait_for(lambda: answers(base), 30, "the daemon's API")
    r = httpx.post(f"{base}/api/login", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200, r.text
    return httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=30
    )


def add_admin(cfg: Path) -> None:
    """`admin` with `PASSWORD`, added through the CLI to the store of config `cfg`."""
    made = nvr(
        ["user", "add", "-c", str(cfg), "admin", "--role", "admin", "--password-stdin"],
        cfg.parent,
        stdin=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr


def open_index(root: Path) -> SegmentStore:
    """The index under `root`, opened beside the daemon that records into it."""
    return SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(tz=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
