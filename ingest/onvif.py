"""ONVIF cameras: asking a camera for its RTSP stream through ONVIF, then recording that stream
like any RTSP camera.

Owns `OnvifOpener` (the `StreamOpener` of a camera configured with `onvif = "http://..."`), the
ONVIF conversation behind it (`OnvifDevice`: GetServices/GetCapabilities, GetSystemDateAndTime,
GetDeviceInformation, GetProfiles, GetStreamUri for RTP unicast over RTSP), profile choice
(`choose_profile`), and the typed errors for what can go wrong at the ONVIF level:
`OnvifAuthRejected` (cause `auth-rejected`), `NotOnvif` (`not-onvif`), `NoRtspProfile`
(`no-rtsp-profile`), `ProfileNotFound` (`profile-not-found`) and `OnvifError`; an unreachable
or silent device raises the ordinary `CameraUnreachable` / `ConnectTimeout`.

Threads and loops: the client library (onvif-zeep-async, on aiohttp) is async, the recorder is a
plain thread. `OnvifOpener.open()` runs on the camera's recorder thread and runs each ONVIF
conversation to the end on a short-lived event loop of its own (`asyncio.run`, bounded by
`resolve_timeout_s`). That is the simplest correct choice: the recorder thread has nothing to
do until it has a stream URI anyway, the daemon's loop never waits on a camera, every aiohttp
session is created and closed on one loop, and the opener works the same without a daemon
(tests, `nvr discover`). Resolution is rare (first connect, then again after
`reresolve_after` failed opens in a row, since cameras change URIs after firmware updates or
reboots), so a new loop each time costs nothing that matters. Hourly and on-reconnect clock
checks run the same way on the `clock-check` thread (`ingest.timecheck.monitor.ClockMonitor`).

Credentials: the RTSP session gets them from `RtspOpener` at connect time; errors and logs
carry neither the password nor the username, and a URI the camera returns with credentials in
it is stripped before it is kept or logged. After a rejected login the device is not asked
again for `auth_retry_s` (cameras lock accounts after a few failed logins); until then
`open()` fails at once with the same error. The resolution timeout (10 s) keeps a connect
attempt well inside the supervisor's stuck-recorder limit (30 s).

Findings go to the index through `ingest.timecheck.notes.ClockNotes`: a `device-info` event (JSON:
maker, model, firmware, serial, hardware id, profile) when it first appears or changes, and
`clock-offset` readings (ONVIF and RTCP) with warnings audited.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from nvr.ingest.errors import AuthRejected, CameraUnreachable, ConnectTimeout, StreamError
from nvr.ingest.redact import redact_text
from nvr.ingest.rtsp_source import KEYFRAME_WAIT_SECONDS
from nvr.ingest.sources import RtspOpener, Source
from nvr.ingest.timecheck.monitor import CAMERA_CHECK_INTERVAL_S
from nvr.ingest.timecheck.notes import CameraClockReading, ClockNotes
from nvr.ingest.timecheck.rtcp import ClockedSource

log = logging.getLogger("nvr.onvif")

T = TypeVar("T")

UNSUPPORTED_ENCODINGS = frozenset({"JPEG", "MPEG4"})
"""Media profile encodings the recorder cannot store (it keeps H.264/H.265 only)."""


class OnvifError(StreamError):
    """The ONVIF device answered, but a request failed."""

    cause = "onvif-error"


class OnvifAuthRejected(AuthRejected):
    """The device refused our ONVIF login (WS-Security UsernameToken or HTTP auth)."""


class NotOnvif(StreamError):
    """Something answers at the address, but not as an ONVIF device service."""

    cause = "not-onvif"


class NoRtspProfile(StreamError):
    """The device offers no media profile with an H.264/H.265 RTSP unicast stream."""

    cause = "no-rtsp-profile"


class ProfileNotFound(NoRtspProfile):
    """The configured profile (token or name) is not among the device's profiles."""

    cause = "profile-not-found"


# --- the client library, imported on first use ----------------------------------------------

_lib_lock = threading.Lock()
_lib: dict[str, Any] = {}


def _onvif_lib() -> dict[str, Any]:
    """onvif-zeep-async and the error types we classify. Imported lazily: `onvif.client`
    calls `logging.basicConfig()` at import, which would install a root handler in a process
    that has none yet; a temporary NullHandler makes that call a no-op."""
    with _lib_lock:
        if not _lib:
            root = logging.getLogger()
            guard = logging.NullHandler() if not root.handlers else None
            if guard is not None:
                root.addHandler(guard)
            try:
                import aiohttp
                import onvif
                import onvif.exceptions
                import onvif.util
                import zeep.exceptions
            finally:
                if guard is not None:
                    root.removeHandler(guard)
            _lib.update(
                ONVIFCamera=onvif.ONVIFCamera,
                is_auth_error=onvif.util.is_auth_error,
                ONVIFError=onvif.exceptions.ONVIFError,
                ONVIFAuthError=onvif.exceptions.ONVIFAuthError,
                ONVIFTimeoutError=onvif.exceptions.ONVIFTimeoutError,
                Fault=zeep.exceptions.Fault,
                TransportError=zeep.exceptions.TransportError,
                XMLSyntaxError=zeep.exceptions.XMLSyntaxError,
                ZeepError=zeep.exceptions.Error,
                ClientConnectorError=aiohttp.ClientConnectorError,
                ClientError=aiohttp.ClientError,
                ServerTimeoutError=aiohttp.ServerTimeoutError,
            )
        return _lib


# --- what a device tells us -----------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """GetDeviceInformation."""

    manufacturer: str
    model: str
    firmware: str
    serial: str
    hardware_id: str

    def describe(self) -> str:
        return f"{self.manufacturer} {self.model}, firmware {self.firmware}, serial {self.serial}"


@dataclass(frozen=True)
class MediaProfile:
    """One media profile (GetProfiles, media service ver10)."""

    token: str
    name: str
    encoding: str
    width: int
    height: int
    fps: float | None = None

    def describe(self) -> str:
        rate = f" {self.fps:g} fps" if self.fps else ""
        return f"{self.token} ({self.name}, {self.width}x{self.height} {self.encoding}{rate})"


@dataclass(frozen=True)
class StreamUri:
    """An RTSP URI from GetStreamUri, split from any credentials the camera put in it."""

    uri: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Resolved:
    """Everything one resolution learnt."""

    device: DeviceInfo
    profiles: tuple[MediaProfile, ...]
    profile: MediaProfile
    stream: StreamUri
    clock: CameraClockReading | None


def choose_profile(profiles: Sequence[MediaProfile], wanted: str | None) -> MediaProfile:
    """The profile to record: `wanted` by token, else by name (case-insensitive); with no
    `wanted`, the highest resolution (then frame rate) among H.264/H.265 profiles."""
    listing = ", ".join(p.describe() for p in profiles) or "none"
    if wanted is not None:
        match = [p for p in profiles if p.token == wanted] or [
            p for p in profiles if p.name.casefold() == wanted.casefold()
        ]
        if not match:
            raise ProfileNotFound(
                f"no media profile with token or name {wanted!r} (profiles: {listing})"
            )
        if match[0].encoding.upper() in UNSUPPORTED_ENCODINGS:
            raise NoRtspProfile(
                f"profile {match[0].describe()} is {match[0].encoding}; only H.264/H.265 "
                "can be recorded"
            )
        return match[0]
    usable = [p for p in profiles if p.encoding.upper() not in UNSUPPORTED_ENCODINGS]
    if not usable:
        raise NoRtspProfile(f"no H.264/H.265 media profile (profiles: {listing})")
    # max() keeps the first of equals: the device's own order breaks ties.
    return max(usable, key=lambda p: (p.width * p.height, p.fps or 0.0))


def split_stream_uri(uri: str, fallback_host: str) -> StreamUri:
    """Validate a GetStreamUri answer; move credentials out of it; replace an unusable host
    (0.0.0.0, empty) by the ONVIF address's host."""
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() not in ("rtsp", "rtsps"):
        raise NoRtspProfile(
            f"the camera's stream URI is not rtsp:// (scheme {parts.scheme or '(none)'!r})"
        )
    host = parts.hostname or ""
    if host in ("", "0.0.0.0", "::"):
        host = fallback_host
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    clean = urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, ""))
    return StreamUri(clean, username, password)


# --- one conversation -----------------------------------------------------------------------


def device_endpoint(address: str) -> tuple[str, int]:
    """`http://10.0.0.7:8080` -> (`http://10.0.0.7`, 8080): the host and port onvif-zeep-async
    takes (it adds the fixed `/onvif/device_service` path)."""
    parts = urlsplit(address)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}", port


class OnvifDevice:
    """One ONVIF conversation (`async with`), on the event loop that runs it. Every failure
    leaves as a typed `StreamError` whose message names neither the password nor the user."""

    def __init__(self, address: str, username: str | None, password: str | None) -> None:
        self.address = address.rstrip("/")
        self._username = username
        self._password = password
        self._cam: Any = None
        self._media: Any = None

    async def __aenter__(self) -> OnvifDevice:
        lib = _onvif_lib()
        host, port = device_endpoint(self.address)
        self._cam = lib["ONVIFCamera"](
            host,
            port,
            self._username,
            self._password,
            no_cache=True,  # WSDLs are local files; the cache would write to ~/.cache
            adjust_time=True,  # sign WS-Security timestamps on the camera's clock
        )
        try:
            await self._call("the device service handshake", self._cam.update_xaddrs(), True)
        except BaseException:
            await self._cam.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cam.close()

    async def _call(self, what: str, request: Awaitable[T], handshake: bool = False) -> T:
        lib = _onvif_lib()
        errors = (
            lib["ZeepError"],
            lib["ClientError"],
            lib["ONVIFError"],
            OSError,
            ValueError,
            AttributeError,
        )
        try:
            return await request
        except errors as err:
            raise self._classify(err, what, handshake) from err

    def _classify(self, err: BaseException, what: str, handshake: bool) -> StreamError:
        lib = _onvif_lib()
        # onvif-zeep-async wraps some failures in ONVIFError; the cause says what happened.
        while isinstance(err, lib["ONVIFError"]) and isinstance(err.__cause__, Exception):
            if isinstance(err, lib["ONVIFAuthError"]):
                break
            err = err.__cause__
        reason = self._reason(err)
        where = self.address
        if isinstance(err, lib["ClientConnectorError"]) or (
            isinstance(err, OSError)
            and err.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
        ):
            return CameraUnreachable(f"ONVIF device {where} unreachable ({reason})")
        if isinstance(err, TimeoutError | lib["ONVIFTimeoutError"] | lib["ServerTimeoutError"]):
            return ConnectTimeout(f"ONVIF device {where} did not answer {what} ({reason})")
        auth = isinstance(err, lib["ONVIFAuthError"])
        auth = auth or (isinstance(err, lib["Fault"]) and bool(lib["is_auth_error"](err)))
        auth = auth or (isinstance(err, lib["TransportError"]) and err.status_code in (401, 403))
        if auth:
            return OnvifAuthRejected(
                f"ONVIF login rejected by {where} during {what} ({reason}); "
                "check username and password_env/password_file"
            )
        if handshake:
            return NotOnvif(f"{where} does not answer as an ONVIF device service ({reason})")
        return OnvifError(f"ONVIF {what} failed at {where} ({reason})")

    def _reason(self, err: BaseException) -> str:
        lib = _onvif_lib()
        if isinstance(err, lib["TransportError"]):
            text = f"HTTP status {err.status_code}"
        elif isinstance(err, lib["XMLSyntaxError"]):
            text = "the answer is not a SOAP envelope"
        elif isinstance(err, lib["Fault"]):
            message = str(err.message or "")
            if message == "Unknown fault occured" and err.code is None:
                text = "an error answer that is not a SOAP fault"
            else:
                text = f"SOAP fault: {message}"
        elif isinstance(err, lib["ClientConnectorError"]):
            text = str(err.os_error.strerror or err.os_error)
        else:
            text = f"{type(err).__name__}: {err}"
        return redact_text(text, self._password, self._username)[:300]

    async def clock(self) -> CameraClockReading | None:
        """GetSystemDateAndTime, timed: the camera's UTC clock minus the server's (None if the
        device gives no UTC time). The answer has whole seconds, so half a second is added
        (the mean truncation) and the uncertainty is 0.5 s plus half the round trip."""
        lib = _onvif_lib()
        dev = await self._call("GetSystemDateAndTime", self._cam.create_devicemgmt_service())
        answer: Any = None
        for request in ("authless_GetSystemDateAndTime", "GetSystemDateAndTime"):
            sent = time.time()
            try:
                answer = await self._call("GetSystemDateAndTime", getattr(dev, request)())
            except StreamError as err:
                if request == "GetSystemDateAndTime" or not isinstance(err.__cause__, lib["Fault"]):
                    raise
                continue  # the standard says no login is needed; some devices want one
            received = time.time()
            break
        utc = getattr(answer, "UTCDateTime", None)
        if utc is None:
            return None
        camera = datetime(
            int(utc.Date.Year),
            int(utc.Date.Month),
            int(utc.Date.Day),
            int(utc.Time.Hour),
            int(utc.Time.Minute),
            int(utc.Time.Second),
            tzinfo=UTC,
        ).timestamp()
        middle = (sent + received) / 2
        return CameraClockReading(
            offset_s=camera + 0.5 - middle,
            uncertainty_s=0.5 + (received - sent) / 2,
            source="onvif",
            at_ms=int(received * 1000),
        )

    async def device_info(self) -> DeviceInfo:
        dev = await self._call("GetDeviceInformation", self._cam.create_devicemgmt_service())
        info = await self._call("GetDeviceInformation", dev.GetDeviceInformation())
        return DeviceInfo(
            manufacturer=str(getattr(info, "Manufacturer", "") or ""),
            model=str(getattr(info, "Model", "") or ""),
            firmware=str(getattr(info, "FirmwareVersion", "") or ""),
            serial=str(getattr(info, "SerialNumber", "") or ""),
            hardware_id=str(getattr(info, "HardwareId", "") or ""),
        )

    async def _media_service(self) -> Any:
        if self._media is None:
            self._media = await self._call("the media service", self._cam.create_media_service())
        return self._media

    async def profiles(self) -> list[MediaProfile]:
        media = await self._media_service()
        answer = await self._call("GetProfiles", media.GetProfiles())
        out = []
        for p in answer or []:
            vec = getattr(p, "VideoEncoderConfiguration", None)
            if vec is None:
                continue  # audio-only or metadata profile
            res = getattr(vec, "Resolution", None)
            rate = getattr(vec, "RateControl", None)
            fps = getattr(rate, "FrameRateLimit", None) if rate is not None else None
            out.append(
                MediaProfile(
                    token=str(p.token),
                    name=str(getattr(p, "Name", "") or ""),
                    encoding=str(getattr(vec, "Encoding", "") or "?"),
                    width=int(getattr(res, "Width", 0) or 0),
                    height=int(getattr(res, "Height", 0) or 0),
                    fps=float(fps) if fps else None,
                )
            )
        return out

    async def stream_uri(self, profile: MediaProfile) -> StreamUri:
        media = await self._media_service()
        setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
        try:
            answer = await self._call(
                "GetStreamUri",
                media.GetStreamUri({"StreamSetup": setup, "ProfileToken": profile.token}),
            )
        except OnvifError as err:
            raise NoRtspProfile(
                f"no RTSP unicast stream for profile {profile.describe()}: {err}"
            ) from err
        uri = getattr(answer, "Uri", None)
        if not uri:
            raise NoRtspProfile(f"no RTSP unicast stream for profile {profile.describe()}")
        return split_stream_uri(str(uri), urlsplit(self.address).hostname or "")


async def resolve(
    address: str, username: str | None, password: str | None, profile: str | None
) -> Resolved:
    """Ask the device for its clock, identity, profiles and the chosen profile's RTSP URI."""
    async with OnvifDevice(address, username, password) as device:
        clock = await device.clock()
        info = await device.device_info()
        profiles = await device.profiles()
        chosen = choose_profile(profiles, profile)
        stream = await device.stream_uri(chosen)
    return Resolved(info, tuple(profiles), chosen, stream, clock)


async def read_clock(
    address: str, username: str | None, password: str | None
) -> CameraClockReading | None:
    async with OnvifDevice(address, username, password) as device:
        return await device.clock()


def run_bounded(coro: Coroutine[Any, Any, T], timeout_s: float, address: str) -> T:
    """Run one ONVIF conversation on a new event loop in this thread, within `timeout_s`."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        raise ConnectTimeout(
            f"ONVIF device {address} did not finish answering within {timeout_s:.0f} s"
        ) from None


# --- the opener -------------------------------------------------------------------------------


class OnvifOpener:
    """Resolves the camera's RTSP URI through ONVIF (cached), then opens it with `RtspOpener`.

    `open()` runs on the recorder thread; `check_clock()` on the `clock-check` thread. The few
    fields both touch are guarded by a lock; the ONVIF calls themselves run outside it."""

    def __init__(
        self,
        camera: str,
        address: str,
        *,
        username: str | None,
        password: str | None,
        profile: str | None,
        transport: str,
        timeout_s: float,
        clock_limit_s: float = 2.0,
        keyframe_wait_s: float = KEYFRAME_WAIT_SECONDS,
        resolve_timeout_s: float = 10.0,
        reresolve_after: int = 3,
        auth_retry_s: float = 60.0,
        check_interval_s: float = CAMERA_CHECK_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.camera = camera
        self.address = address.rstrip("/")
        self._username = username
        self._password = password
        self._profile = profile
        self._transport = transport
        self._timeout_s = timeout_s
        self._clock_limit = clock_limit_s
        self._keyframe_wait_s = keyframe_wait_s
        self._resolve_timeout = resolve_timeout_s
        self._reresolve_after = max(1, reresolve_after)
        self._auth_retry = auth_retry_s
        self._check_interval = check_interval_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._notes: ClockNotes | None = None
        self._wake: Callable[[], None] = lambda: None
        self._rtsp: RtspOpener | None = None
        self.resolved: Resolved | None = None
        self._failures = 0
        self._auth_block: tuple[float, str] | None = None
        self._last_check: float | None = None
        self._check_pending = False
        self.resolutions = 0
        """How many times the URI was asked from the device successfully (for tests, status)."""

    # --- wiring (ingest.timecheck.monitor.ClockMonitor) --------------------------------------

    def attach(self, notes: ClockNotes) -> None:
        self._notes = notes

    def set_waker(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    # --- StreamOpener ------------------------------------------------------------------------

    def open(self) -> Source:
        rtsp = self._rtsp_opener()
        try:
            source = rtsp.open()
        except StreamError:
            with self._lock:
                self._failures += 1
            raise
        with self._lock:
            self._failures = 0
            fresh = self._last_check is not None and (self._monotonic() - self._last_check < 1.0)
            self._check_pending = not fresh
        if not fresh:
            self._wake()  # read the camera's clock on this connect (on the clock-check thread)
        clocked = ClockedSource(source, self.camera, self._report_clock)
        profile = self.resolved.profile.token if self.resolved is not None else "?"
        clocked.description = f"onvif {profile}, {source.description}"
        return clocked

    def probe_reachable(self) -> bool:
        with self._lock:
            rtsp = self._rtsp
            resolve_next = rtsp is None or self._failures >= self._reresolve_after
        if rtsp is not None and not resolve_next:
            return rtsp.probe_reachable()
        parts = urlsplit(self.address)
        _, port = device_endpoint(self.address)
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=0.5):
                return True
        except OSError:
            return False

    # --- resolution --------------------------------------------------------------------------

    def _rtsp_opener(self) -> RtspOpener:
        with self._lock:
            rtsp = self._rtsp
            if rtsp is not None and self._failures < self._reresolve_after:
                return rtsp
            block = self._auth_block
        now = self._monotonic()
        if block is not None and now < block[0]:
            raise OnvifAuthRejected(f"{block[1]} (next ONVIF login in {block[0] - now:.0f} s)")
        if rtsp is not None:
            log.info(
                "camera %s: %d failed opens in a row; asking %s for the stream URI again",
                self.camera,
                self._failures,
                self.address,
            )
        try:
            resolved = run_bounded(
                resolve(self.address, self._username, self._password, self._profile),
                self._resolve_timeout,
                self.address,
            )
        except OnvifAuthRejected as err:
            with self._lock:
                self._auth_block = (self._monotonic() + self._auth_retry, str(err))
            raise
        except StreamError as err:
            if rtsp is None:
                raise
            log.warning(
                "camera %s: cannot resolve the stream URI again (%s: %s); "
                "trying the last known one",
                self.camera,
                err.cause,
                err,
            )
            with self._lock:
                self._failures = 0  # wait another round of failures before asking again
            return rtsp
        return self._adopt(resolved)

    def _adopt(self, resolved: Resolved) -> RtspOpener:
        stream = resolved.stream
        username = self._username if self._username is not None else stream.username
        password = self._password if self._username is not None else stream.password
        rtsp = RtspOpener(
            stream.uri,
            username=username,
            password=password,
            transport=self._transport,
            timeout_s=self._timeout_s,
            camera=self.camera,
            keyframe_wait_s=self._keyframe_wait_s,
        )
        if self._rtsp is not None:
            rtsp.longest_gop_s = self._rtsp.longest_gop_s  # same camera, same GOP
        previous = self.resolved
        with self._lock:
            self._rtsp = rtsp
            self.resolved = resolved
            self._failures = 0
            self._auth_block = None
            self._last_check = self._monotonic()
            self._check_pending = False
            self.resolutions += 1
        if previous is not None and previous.stream.uri != stream.uri:
            log.warning(
                "camera %s: stream URI changed from %s to %s",
                self.camera,
                previous.stream.uri,
                stream.uri,
            )
        log.info(
            "camera %s: ONVIF %s (%s): profile %s, stream %s",
            self.camera,
            self.address,
            resolved.device.describe(),
            resolved.profile.describe(),
            stream.uri,
        )
        notes = self._notes
        if notes is not None:
            detail = asdict(resolved.device) | {
                "profile": asdict(resolved.profile),
                "stream_uri": stream.uri,
                "onvif": self.address,
            }
            notes.device_info(self.camera, json.dumps(detail, sort_keys=True))
        if resolved.clock is not None:
            self._report_clock(resolved.clock)
        return rtsp

    def _report_clock(self, reading: CameraClockReading) -> None:
        notes = self._notes
        if notes is not None:
            notes.camera_clock(self.camera, reading, self._clock_limit)
        elif abs(reading.offset_s) > self._clock_limit:
            log.warning(
                "camera %s: clock off by %+.3f s (%s)",
                self.camera,
                reading.offset_s,
                reading.source,
            )

    # --- clock checks (ingest.timecheck.monitor.CameraClockCheck), on the clock-check thread -

    def clock_check_due(self, now: float) -> bool:
        with self._lock:
            if self._rtsp is None:
                return False  # never connected: the recorder reports why
            if self._check_pending:
                return True
            return self._last_check is None or now - self._last_check >= self._check_interval

    def check_clock(self) -> None:
        with self._lock:
            self._check_pending = False
            self._last_check = self._monotonic()
        try:
            reading = run_bounded(
                read_clock(self.address, self._username, self._password),
                self._resolve_timeout,
                self.address,
            )
        except StreamError as err:
            log.info("camera %s: ONVIF clock check failed (%s: %s)", self.camera, err.cause, err)
            return
        if reading is None:
            log.info("camera %s: the device reports no UTC time; clock not checked", self.camera)
            return
        self._report_clock(reading)


async def describe_device(
    address: str, username: str | None, password: str | None
) -> tuple[DeviceInfo, list[tuple[MediaProfile, str | None]]]:
    """Identity and every profile with its RTSP URI (None where the device gives none), for
    `nvr discover`."""
    async with OnvifDevice(address, username, password) as device:
        info = await device.device_info()
        out: list[tuple[MediaProfile, str | None]] = []
        for profile in await device.profiles():
            try:
                uri: str | None = (await device.stream_uri(profile)).uri
            except NoRtspProfile:
                uri = None
            out.append((profile, uri))
    return info, out
