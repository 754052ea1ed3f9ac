"""The configuration schema: frozen pydantic v2 models with bounds and `extra="forbid"`.

Pure data; no I/O except `CameraConfig.password()`, which reads the secret from the
environment or a file when the recorder needs it (so it never sits in the model or a log).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from nvr.config.errors import ConfigError

MIN_RETENTION_DAYS = 30
"""The regulation's floor (Chongqing measures, 2009 art. 19(8)): never store less."""

BUILTIN_TEST_PATTERN = "builtin:testpattern"
"""Camera URL of the built-in test camera (H.264 made in-process, with a burned-in clock)."""

MAX_RETENTION_DAYS = 36_500
"""A hundred years: more is a typo (and overflows date arithmetic)."""

MAX_RESERVE_BYTES = 1 << 50
"""1 PiB: a reserve beyond any single filesystem this runs on (`config.loader` also checks the
actual filesystem of the storage root)."""

CAMERA_NAME_RULE = "[a-z0-9_-]{1,64}"
"""The one rule for a camera's name (config, API paths and bodies, account grants): it names
the camera's folder under the storage root and appears in URLs, so lower-case letters,
digits, '_' and '-' only."""
CAMERA_NAME = re.compile(f"^{CAMERA_NAME_RULE}$")

Days = Annotated[int, Field(strict=True, ge=1, le=MAX_RETENTION_DAYS)]
"""Whole days; strict, so `true` or `1e12` (a float in TOML) is refused, not taken as a number."""


def check_url_port(value: str) -> None:
    """ValueError unless the URL's port (if any) is a number in 1..65535."""
    try:
        port = urlsplit(value).port  # raises ValueError on a non-number or one above 65535
    except ValueError:
        raise ValueError("has an invalid port (expected 1-65535)") from None
    if port == 0:
        raise ValueError("has an invalid port (expected 1-65535), found 0")


def check_database_url(value: str) -> None:
    """ValueError unless SQLAlchemy can parse `value` and load its dialect and driver."""
    from sqlalchemy.engine import make_url  # only when a database_url is configured
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(value)
    except ArgumentError:
        # Never echo the URL: it may hold a password.
        raise ValueError(
            "is not a database URL (expected e.g. postgresql+psycopg://host/db or sqlite:///path)"
        ) from None
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"has an invalid port (expected 1-65535), found {url.port}")
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(f"names an unknown database dialect {url.drivername!r}") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise ValueError(
            f"needs the Python driver of {url.drivername!r}, which is not installed "
            f"({err.name or err})"
        ) from None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StorageConfig(_Frozen):
    """Where recordings and, by default, the SQLite index live."""

    root: Path
    database_url: str | None = None
    """SQLAlchemy URL of the index; default `sqlite:///<root>/index.db` (WAL mode)."""
    reserve_bytes: Annotated[int, Field(strict=True, ge=0, le=MAX_RESERVE_BYTES)] = (
        512 * 1024 * 1024
    )
    """Free space kept on the recordings filesystem; below it recorders pause (nothing deleted).
    Must be below the filesystem's size (checked by `config.loader` when the root exists)."""

    @field_validator("root", mode="before")
    @classmethod
    def _root(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must name a folder, found an empty string")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_database_url(value)
        return value

    def index_url(self) -> str:
        """The index database URL actually used."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{self.root.resolve() / 'index.db'}"


class RetentionConfig(_Frozen):
    """How long footage is kept at least."""

    days: Days = MIN_RETENTION_DAYS
    clock_stable_minutes: Annotated[int, Field(strict=True, ge=0, le=10_080)] = 60
    """After a step of the server clock, purging is held back until an operator confirms the
    clock (`nvr purge --i-confirm-clock`) or it has been synchronised and stable this long
    (docs/retention-clock.md)."""
    interval_seconds: Annotated[int, Field(strict=True, ge=1, le=3600)] = 60
    """Seconds between the daemon's retention passes."""

    @field_validator("days")
    @classmethod
    def _floor(cls, value: int) -> int:
        if value < MIN_RETENTION_DAYS:
            raise ValueError(
                f"must be at least {MIN_RETENTION_DAYS} (the regulation's floor), found {value}"
            )
        return value


class SiteConfig(_Frozen):
    """The site (`[site]`): named on every evidence package's cover sheet."""

    name: Annotated[str, Field(max_length=200)] = ""
    """The site's name, e.g. `Jiefangbei pedestrian street, Yuzhong district`."""
    timezone: str | None = None
    """IANA zone (`Asia/Shanghai`) that local times on cover sheets are given in, beside UTC;
    default: the system's zone."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"expected an IANA time zone such as 'Asia/Shanghai', found {value!r}"
            ) from None
        return value


class EvidenceConfig(_Frozen):
    """Evidence rules (`[evidence]`): how long a lock may be made for, and how often the
    audit log is anchored by a signed checkpoint."""

    max_lock_years: Annotated[int, Field(ge=2, le=100)] = 10
    """Longest expiry a lock may be given (legal holds have none); at least the 2 years of R3."""
    checkpoint_entries: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    """A signed audit checkpoint at least every this many entries ..."""
    checkpoint_minutes: Annotated[int, Field(ge=1, le=1440)] = 60
    """... and at the first entry after this long without one."""


class PictureConfig(_Frozen):
    """Picture checks of one camera (`[cameras.picture]`, issue 18, R8): one keyframe every
    `check_seconds` is decoded small and grey and compared with the camera's own learned
    reference. Ratios are of the reference's value; grey levels are 0..255."""

    enabled: StrictBool = True
    check_seconds: Annotated[float, Field(strict=True, ge=0.5, le=3600)] = 10.0
    """One keyframe is checked every this many seconds."""
    persist_seconds: Annotated[float, Field(strict=True, ge=0, le=86_400)] = 30.0
    """A condition is raised only once it has lasted this long."""
    clear_seconds: Annotated[float, Field(strict=True, ge=0, le=86_400)] = 20.0
    """... and cleared once it has been gone this long (with `hysteresis` on its threshold)."""
    learn_seconds: Annotated[float, Field(strict=True, ge=0, le=86_400)] = 60.0
    """The reference picture is learned over the first this many seconds (per day/night)."""
    refresh_hours: Annotated[float, Field(strict=True, gt=0, le=8760)] = 24.0
    """The reference drifts towards normal pictures with this time constant."""
    night_brightness: Annotated[float, Field(strict=True, ge=0, le=255)] = 50.0
    """Pictures darker than this (mean grey) are judged against the night reference."""
    dark_brightness: Annotated[float, Field(strict=True, ge=0, le=255)] = 40.0
    """Covered: darker than this with a contrast (grey standard deviation) below
    `covered_contrast` ..."""
    covered_contrast: Annotated[float, Field(strict=True, ge=0, le=128)] = 8.0
    covered_entropy_ratio: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.45
    """... or histogram entropy below this share of the reference's."""
    uniform_contrast: Annotated[float, Field(strict=True, ge=0, le=128)] = 3.0
    """No signal: a uniform picture (contrast below this) that is not dark ..."""
    card_flat_fraction: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.8
    """... or a test card / "no video" picture: at least this share of it flat (a few flat
    regions: colour bars, a plain screen with text), nearly all of it in a few grey levels,
    and unchanged since the previous check."""
    defocus_ratio: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.35
    """Defocused: sharpness (Laplacian energy over contrast) below this share of the
    reference's."""
    match_min: Annotated[float, Field(strict=True, ge=-1, le=1)] = 0.5
    """Re-pointed: correlation with the reference picture below this ..."""
    shift_fraction: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.03
    """... or the scene moved (phase correlation) by more than this share of its width or
    height ..."""
    rotation_degrees: Annotated[float, Field(strict=True, gt=0, le=20)] = 4.0
    """... or it matches the reference clearly better turned by this many degrees or more."""
    frozen_difference: Annotated[float, Field(strict=True, ge=0, le=255)] = 0.1
    """Frozen: consecutive checked keyframes differ by less than this (mean grey levels)."""
    hysteresis: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.25
    """A raised condition's threshold is relaxed by this share until it clears."""


class PrivacyMask(_Frozen):
    """A privacy area of one camera (`[[cameras.privacy_masks]]`, R10): a polygon in
    normalised picture coordinates (0,0 top left, 1,1 bottom right), filled black in every
    copy shown to a user not allowed to see behind masks. Originals are never altered."""

    points: Annotated[list[tuple[float, float]], Field(min_length=3, max_length=64)]

    @field_validator("points")
    @classmethod
    def _inside(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for x, y in value:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"points must lie within 0..1, found [{x}, {y}]")
        return value


class CameraConfig(_Frozen):
    """One camera: where its stream comes from and how it is cut into segments."""

    name: str
    location: Annotated[str, Field(max_length=500)] = ""
    """Where the camera is and what it looks at (cover sheets of evidence packages)."""
    description: Annotated[str, Field(max_length=2000)] = ""
    url: str | None = None
    """rtsp:// or rtsps:// URL, or `builtin:testpattern`; give this or `onvif`."""
    onvif: str | None = None
    """ONVIF device address, `http(s)://host[:port]`: the RTSP URL is asked from the camera."""
    profile: str | None = None
    """ONVIF media profile (token or name); default: the highest-resolution H.264/H.265 one."""
    max_clock_offset_seconds: Annotated[float, Field(strict=True, gt=0, le=3600)] = 2.0
    """A camera clock further than this from the server's is a warning (status, audit log)."""
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    transport: Literal["tcp", "udp"] = "tcp"
    segment_seconds: Annotated[int, Field(strict=True, ge=10, le=600)] = 60
    stall_seconds: Annotated[float, Field(strict=True, ge=1.0, le=30.0)] = 4.0
    """A camera that sends nothing for this long is declared stalled and reconnected."""
    keyframe_wait_seconds: Annotated[float, Field(strict=True, ge=5.0, le=600.0)] = 60.0
    """How long a new connection waits for its first keyframe while media keeps arriving
    (long-GOP "smart codec" cameras send one every 12-20 s); at least three of the longest
    GOPs seen on the camera."""
    retention_days: Days | None = None
    """Per-camera window; may only be longer than `[retention] days`."""
    enabled: StrictBool = True
    picture: PictureConfig = Field(default_factory=PictureConfig)
    privacy_masks: list[PrivacyMask] = Field(default_factory=list, max_length=32)
    """Areas filled black for users without the `unmasked` permission (playback)."""
    """Picture checks: covered, defocused, re-pointed, frozen, no signal (`[cameras.picture]`)."""
    gb_channel_id: str | None = None
    """The camera's channel id on a GB/T 28181 platform (`[gb28181]`), 20 digits; default:
    derived from the device id and the camera's place in the file (`gb_channel_ids`)."""
    live_url: str | None = None
    """The camera's low-resolution substream (rtsp:// or rtsps://, same credentials): pulled
    through our RTSP client only while someone watches it live (`?stream=sub`, the camera
    grid), never recorded."""

    @field_validator("gb_channel_id")
    @classmethod
    def _gb_channel(cls, value: str | None) -> str | None:
        if value is not None and not GB_ID.match(value):
            raise ValueError(f"expected 20 digits (a GB/T 28181 code), found {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CAMERA_NAME.match(value):
            raise ValueError(f"must match {CAMERA_NAME_RULE}, found {value!r}")
        return value

    @field_validator("url", "live_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == BUILTIN_TEST_PATTERN:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("rtsp", "rtsps"):
            raise ValueError(
                f"must be an rtsp:// or rtsps:// URL or {BUILTIN_TEST_PATTERN!r}, "
                f"found scheme {parts.scheme or '(none)'!r}"
            )
        if not parts.hostname:
            raise ValueError("must name a host, found none")
        if parts.username is not None or parts.password is not None:
            # Never echo the URL back: it holds a secret.
            raise ValueError(
                "must not contain credentials; use username and password_env or password_file"
            )
        check_url_port(value)
        return value

    @field_validator("onvif")
    @classmethod
    def _onvif(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(
                f"must be an http:// or https:// device address, "
                f"found scheme {parts.scheme or '(none)'!r}"
            )
        if not parts.hostname:
            raise ValueError("must name a host, found none")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "must not contain credentials; use username and password_env or password_file"
            )
        check_url_port(value)
        if parts.path.rstrip("/") not in ("", "/onvif/device_service") or parts.query:
            raise ValueError("must be host and port only (the device service path is fixed)")
        return value

    @model_validator(mode="after")
    def _source(self) -> CameraConfig:
        if (self.url is None) == (self.onvif is None):
            raise ValueError(
                "give either url (an rtsp:// URL) or onvif (an http:// device address)"
                + (", not both" if self.url is not None else "")
            )
        if self.profile is not None and self.onvif is None:
            raise ValueError("profile applies to onvif cameras only")
        return self

    @model_validator(mode="after")
    def _secrets(self) -> CameraConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if self.username is None and (self.password_env or self.password_file):
            raise ValueError("a password needs a username")
        return self

    def password(self) -> str | None:
        """Read the camera's password from its environment variable or file, if any."""
        where = f"cameras.{self.name}"
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    where,
                    [f"password_env: expected environment variable {self.password_env} to be set"],
                )
            return value
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as err:
                raise ConfigError(
                    where, [f"password_file: cannot read {self.password_file}: {err.strerror}"]
                ) from err
        return None


SITE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A site's id in MQTT topics and Home Assistant ids: no `/`, `+`, `#` or spaces."""


def default_site_id() -> str:
    """The host's name, made fit for a topic level (`nvr/<site>/...`)."""
    import socket

    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
    return name or "nvr"


def _secret(where: str, env: str | None, file: Path | None, what: str) -> str | None:
    """Read a secret from an environment variable or a file (ConfigError if it cannot be)."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(where, [f"{what}_env: expected environment variable {env} to be set"])
        return value
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise ConfigError(
                where, [f"{what}_file: cannot read {file}: {err.strerror}"]
            ) from err
    return None


GB_ID = re.compile(r"^[0-9]{20}$")
"""A GB/T 28181 code (device, channel, platform): 20 decimal digits."""
GB_DOMAIN = re.compile(r"^[0-9]{10}$")
"""A GB/T 28181 SIP domain: the first 10 digits of a code (centre and industry)."""
GB_CHANNEL_TYPE = "131"
"""Type code of a derived channel id: 131, a camera (GB/T 28181-2016 appendix D)."""


class Gb28181Config(_Frozen):
    """The recorder as a device on a GB/T 28181 platform (`[gb28181]`; docs/gb28181.md).
    The key names are a public interface: platforms' manuals and WVP use them."""

    device_id: str
    """This recorder's 20-digit device code (type 111 or 118: DVR/NVR)."""
    domain: str
    """The platform's SIP domain (realm), 10 digits."""
    server_id: str
    """The platform's 20-digit SIP id."""
    server_host: str
    """The platform's address (IP or host name)."""
    server_port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 5060
    password_env: str | None = None
    """Environment variable holding the registration password."""
    password_file: Path | None = None
    """... or a file holding it."""
    transport: Literal["udp", "tcp"] = "udp"
    local_port: Annotated[int, Field(strict=True, ge=0, le=65535)] = 5060
    """Local SIP port (0: any free port)."""
    register_expires: Annotated[int, Field(strict=True, ge=60, le=86_400)] = 3600
    """Seconds a registration lasts; it is renewed before it runs out."""
    keepalive_seconds: Annotated[int, Field(strict=True, ge=1, le=3600)] = 60
    """Seconds between keepalive MESSAGEs; three unanswered ones mean the platform is gone."""
    unmasked: bool = False
    """The platform may see behind privacy masks (R10), like a user's `unmasked`. Default:
    masked, and as its streams are the camera's own bitstream, live and recorded video of a
    camera with privacy masks is refused to it (403)."""
    cameras: tuple[str, ...] = ()
    """The cameras (by name) the platform may see: its catalog, queries and streams. Opt-in:
    none by default, so a camera reaches the police platform only when listed here."""

    @field_validator("device_id", "server_id")
    @classmethod
    def _code(cls, value: str) -> str:
        if not GB_ID.match(value):
            raise ValueError(f"expected 20 digits (a GB/T 28181 code), found {value!r}")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not GB_DOMAIN.match(value):
            raise ValueError(f"expected 10 digits (a GB/T 28181 SIP domain), found {value!r}")
        return value

    @field_validator("server_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or (any(c in value for c in " /@:") and not _is_ipv6(value)):
            raise ValueError(f"expected an IP address or host name, found {value!r}")
        return value

    @model_validator(mode="after")
    def _secret(self) -> Gb28181Config:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("give password_env or password_file (one of them)")
        if self.device_id == self.server_id:
            raise ValueError("device_id and server_id must differ")
        return self

    def password(self) -> str:
        """The registration password, read now from its variable or file (never kept)."""
        value = _secret("gb28181", self.password_env, self.password_file, "password")
        assert value is not None  # one of the two is set (checked above)
        return value


def _is_ipv6(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).version == 6
    except ValueError:
        return False


class WebhookConfig(_Frozen):
    """One webhook (`[[events.webhooks]]`): every event is POSTed to `url` as JSON, signed
    with HMAC-SHA256 when a secret is given, retried with back-off until it is taken."""

    url: str
    """http:// or https:// URL that receives the events."""
    secret_env: str | None = None
    """Environment variable holding the HMAC secret (`X-NVR-Signature` header)."""
    secret_file: Path | None = None
    """... or a file holding it."""
    timeout_seconds: Annotated[float, Field(strict=True, gt=0, le=120)] = 10.0
    """How long one delivery may take before it counts as failed (and is retried)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(
                f"must be an http:// or https:// URL, found scheme {parts.scheme or '(none)'!r}"
            )
        if not parts.hostname:
            raise ValueError("must name a host, found none")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain credentials; use secret_env or secret_file")
        check_url_port(value)
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        if self.secret_env is not None and self.secret_file is not None:
            raise ValueError("give secret_env or secret_file, not both")
        return self

    def secret(self, where: str) -> bytes | None:
        """The HMAC secret, read now (never kept in the model)."""
        value = _secret(where, self.secret_env, self.secret_file, "secret")
        return value.encode("utf-8") if value is not None else None


class EventsConfig(_Frozen):
    """Alerts out (`[events]`): camera states and outages, the storage forecast, clock
    warnings and export requests, published to an MQTT broker and/or webhooks."""

    mqtt: str | None = None
    """Broker URL, `mqtt://host[:port]` (or `mqtts://` for TLS)."""
    username: str | None = None
    """MQTT user name, if the broker wants one."""
    password_env: str | None = None
    password_file: Path | None = None
    site: str = Field(default_factory=default_site_id)
    """This recorder's id in topics (`nvr/<site>/...`) and Home Assistant; default: the host
    name."""
    discovery: StrictBool = True
    """Publish Home Assistant MQTT discovery (each camera a binary sensor)."""
    discovery_prefix: str = "homeassistant"
    queue_size: Annotated[int, Field(strict=True, ge=10, le=100_000)] = 1000
    """Events kept per destination while it is unreachable; beyond it the oldest are dropped
    (and counted)."""
    webhooks: list[WebhookConfig] = Field(default_factory=list)

    @field_validator("mqtt")
    @classmethod
    def _mqtt(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(
                f"must be an mqtt:// or mqtts:// URL, found scheme {parts.scheme or '(none)'!r}"
            )
        if not parts.hostname:
            raise ValueError("must name a host, found none")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "must not contain credentials; use username and password_env or password_file"
            )
        if parts.path.strip("/") or parts.query:
            raise ValueError("must be host and port only, found a path or query")
        check_url_port(value)
        return value

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        if not SITE_ID.match(value):
            raise ValueError(f"must match [A-Za-z0-9_-]{{1,64}} (a topic level), found {value!r}")
        return value

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "+# ") or value.strip("/") != value:
            raise ValueError(f"expected a topic prefix such as 'homeassistant', found {value!r}")
        return value

    @model_validator(mode="after")
    def _secrets(self) -> EventsConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if self.username is None and (self.password_env or self.password_file):
            raise ValueError("a password needs a username")
        if (self.username or self.password_env or self.password_file) and self.mqtt is None:
            raise ValueError("username and password apply to mqtt, which is not set")
        return self

    def password(self) -> str | None:
        """The broker password, read now from its variable or file (never kept)."""
        return _secret("events", self.password_env, self.password_file, "password")

    def mqtt_host_port(self) -> tuple[str, int, bool]:
        """(host, port, tls) of the broker; ValueError when there is none."""
        if self.mqtt is None:
            raise ValueError("no broker configured")
        parts = urlsplit(self.mqtt)
        tls = parts.scheme == "mqtts"
        return parts.hostname or "", parts.port or (8883 if tls else 1883), tls


class ApiConfig(_Frozen):
    """The HTTP API served inside the daemon (`[api]`); absent means no API."""

    listen: str = "127.0.0.1:8080"
    """`host:port` (IPv6 as `[::1]:8080`)."""
    tls_certificate: Path | None = None
    """PEM certificate chain; with `tls_key`, the API speaks HTTPS only."""
    tls_key: Path | None = None
    token_hours: Annotated[float, Field(strict=True, gt=0, le=720)] = 12.0
    """How long a login's bearer token is valid."""
    max_range_hours: Annotated[int, Field(strict=True, ge=1, le=168)] = 24
    """Longest time range one playback, timeline or export request may cover."""
    degraded_after_seconds: Annotated[float, Field(strict=True, ge=1, le=86_400)] = 30.0
    """Health is `degraded` once a camera has been down this long."""
    critical_after_seconds: Annotated[float, Field(strict=True, ge=1, le=86_400)] = 300.0
    """Health is `critical` once a camera has been down this long."""
    signing_key: Path | None = None
    """Ed25519 private key signing export manifests; default `<root>/.nvr-export-key`,
    created at first start (mode 0600)."""
    exports_dir: Path | None = None
    """Where export packages are built; default `<root>/exports`."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 << 20)] = 64 * 1024
    """Largest request body accepted; larger ones get 413 before they are read."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses (or CIDR networks) of reverse proxies whose `X-Forwarded-For` and
    `X-Forwarded-Proto` are believed. Empty: the peer address is the client, always."""
    metrics_token_file: Path | None = None
    """A file holding the sha256 (hex) of a static bearer token that may read `/metrics`
    only, for Prometheus; it does not expire. Create it with `nvr metrics-token`."""
    max_plan_builds: Annotated[int, Field(ge=1, le=64)] = 2
    """Playback plans built at once (all users); a request finding them all busy waits up to
    a second for one to end (most take milliseconds), then gets 429 with Retry-After."""
    max_plan_builds_per_user: Annotated[int, Field(ge=1, le=64)] = 1
    """Playback plans one user may have building at once; more get 429."""
    webrtc_addresses: tuple[str, ...] = ()
    """The addresses offered as ICE host candidates for WebRTC live view (the browser sends
    media requests to these). Empty: every address of this machine except loopback (aioice's
    choice); give `["127.0.0.1"]` to keep WebRTC on loopback, or the LAN address viewers
    reach. No STUN or TURN server is ever contacted."""
    max_live_viewers: Annotated[int, Field(strict=True, ge=1, le=256)] = 16
    """Live viewers at once (WebRTC sessions and MSE WebSockets together); past it 503."""
    max_transcodes: Annotated[int, Field(strict=True, ge=0, le=16)] = 1
    """H.265 cameras: live H.264 transcodes at once (one per camera and resolution, shared
    by its viewers); past it viewers get keyframe snapshots."""

    @field_validator("webrtc_addresses")
    @classmethod
    def _webrtc_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"expected IP addresses, found {item[:64]!r}") from None
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, port = split_listen(value)
        if not host or not 0 < port < 65536:
            raise ValueError(f"expected host:port, found {value!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"expected IP addresses or networks, found {item[:64]!r}"
                ) from None
        return value

    @model_validator(mode="after")
    def _tls(self) -> ApiConfig:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("give both tls_certificate and tls_key, or neither")
        if self.critical_after_seconds < self.degraded_after_seconds:
            raise ValueError("critical_after_seconds must not be below degraded_after_seconds")
        return self

    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:8080` -> ("127.0.0.1", 8080); `[::1]:8080` -> ("::1", 8080)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, found {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class NvrConfig(_Frozen):
    """The whole daemon configuration."""

    storage: StorageConfig
    retention: RetentionConfig = RetentionConfig()
    cameras: list[CameraConfig] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api: ApiConfig | None = None
    """The HTTP API; served only when an `[api]` table is present."""
    site: SiteConfig = SiteConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    events: EventsConfig | None = None
    """Alerts out to MQTT and webhooks; none when absent."""
    gb28181: Gb28181Config | None = None
    """The GB/T 28181 device interface to a police platform; none when absent."""

    def signing_key_path(self) -> Path:
        """The Ed25519 key signing export manifests and audit checkpoints."""
        if self.api is not None and self.api.signing_key is not None:
            return self.api.signing_key
        return self.storage.root / ".nvr-export-key"

    @model_validator(mode="after")
    def _cameras(self) -> NvrConfig:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"camera name {cam.name!r} is used twice; names must be unique")
            seen.add(cam.name)
            if cam.gb_channel_id is not None and self.gb28181 is None:
                raise ValueError(
                    f"camera {cam.name!r}: gb_channel_id needs a [gb28181] table, found none"
                )
            if cam.retention_days is not None and cam.retention_days < self.retention.days:
                raise ValueError(
                    f"camera {cam.name!r}: retention_days may only lengthen the window "
                    f"({self.retention.days}), found {cam.retention_days}"
                )
        if self.gb28181 is not None:
            ids = self.gb_channel_ids()
            owners: dict[str, str] = {}
            for name, code in ids.items():
                if code in owners:
                    raise ValueError(
                        f"camera {name!r}: gb_channel_id {code} is also camera "
                        f"{owners[code]!r}'s; channel ids must be unique"
                    )
                if code in (self.gb28181.device_id, self.gb28181.server_id):
                    raise ValueError(
                        f"camera {name!r}: gb_channel_id {code} is the device_id or server_id"
                    )
                owners[code] = name
            names = {cam.name for cam in self.cameras}
            listed: set[str] = set()
            for name in self.gb28181.cameras:
                if name not in names:
                    raise ValueError(f"[gb28181] cameras: no camera is called {name!r}")
                if name in listed:
                    raise ValueError(f"[gb28181] cameras: {name!r} is listed twice")
                listed.add(name)
        return self

    def gb_channel_ids(self) -> dict[str, str]:
        """Camera name -> GB/T 28181 channel id, in file order: `gb_channel_id`, or the
        device id's first 10 digits, type 131 (camera) and the camera's 1-based place in
        the file as 7 digits (`50010000001310000003` for the third camera)."""
        if self.gb28181 is None:
            return {}
        prefix = self.gb28181.device_id[:10] + GB_CHANNEL_TYPE
        return {
            cam.name: cam.gb_channel_id or f"{prefix}{i + 1:07d}"
            for i, cam in enumerate(self.cameras)
        }

    def camera(self, name: str) -> CameraConfig:
        """The camera called `name`; KeyError if there is none."""
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(name)

    def retention_days(self, camera: str) -> int:
        """The effective retention window of a camera, in days."""
        for cam in self.cameras:
            if cam.name == camera and cam.retention_days is not None:
                return cam.retention_days
        return self.retention.days
