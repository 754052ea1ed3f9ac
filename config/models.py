"""The configuration schema: frozen pydantic v2 models with bounds and `extra="forbid"`.

Pure data; no I/O except `CameraConfig.password()`, which reads the secret from the
environment or a file when the recorder needs it (so it never sits in the model or a log).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.errors import ConfigError

MIN_RETENTION_DAYS = 30
"""The regulation's floor (Chongqing measures, 2009 art. 19(8)): never store less."""

BUILTIN_TEST_PATTERN = "builtin:testpattern"
"""Camera URL of the built-in test camera (H.264 made in-process, with a burned-in clock)."""

CAMERA_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StorageConfig(_Frozen):
    """Where recordings and, by default, the SQLite index live."""

    root: Path
    database_url: str | None = None
    """SQLAlchemy URL of the index; default `sqlite:///<root>/index.db` (WAL mode)."""
    reserve_bytes: Annotated[int, Field(ge=0)] = 512 * 1024 * 1024
    """Free space kept on the recordings filesystem; below it recorders pause (nothing deleted)."""

    def index_url(self) -> str:
        """The index database URL actually used."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{self.root.resolve() / 'index.db'}"


class RetentionConfig(_Frozen):
    """How long footage is kept at least."""

    days: int = MIN_RETENTION_DAYS

    @field_validator("days")
    @classmethod
    def _floor(cls, value: int) -> int:
        if value < MIN_RETENTION_DAYS:
            raise ValueError(
                f"must be at least {MIN_RETENTION_DAYS} (the regulation's floor), found {value}"
            )
        return value


class CameraConfig(_Frozen):
    """One camera: where its stream comes from and how it is cut into segments."""

    name: str
    url: str | None = None
    """rtsp:// or rtsps:// URL, or `builtin:testpattern`; give this or `onvif`."""
    onvif: str | None = None
    """ONVIF device address, `http(s)://host[:port]`: the RTSP URL is asked from the camera."""
    profile: str | None = None
    """ONVIF media profile (token or name); default: the highest-resolution H.264/H.265 one."""
    max_clock_offset_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """A camera clock further than this from the server's is a warning (status, audit log)."""
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    transport: Literal["tcp", "udp"] = "tcp"
    segment_seconds: Annotated[int, Field(ge=10, le=600)] = 60
    stall_seconds: Annotated[float, Field(ge=1.0, le=30.0)] = 4.0
    """A camera that sends nothing for this long is declared stalled and reconnected."""
    retention_days: int | None = None
    """Per-camera window; may only be longer than `[retention] days`."""
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CAMERA_NAME.match(value):
            raise ValueError(f"must match [a-z0-9_-]{{1,64}}, found {value!r}")
        return value

    @field_validator("url")
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
        try:
            _ = parts.port  # raises ValueError on a bad port
        except ValueError:
            raise ValueError("has an invalid port") from None
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


class ApiConfig(_Frozen):
    """The HTTP API served inside the daemon (`[api]`); absent means no API."""

    listen: str = "127.0.0.1:8080"
    """`host:port` (IPv6 as `[::1]:8080`)."""
    tls_certificate: Path | None = None
    """PEM certificate chain; with `tls_key`, the API speaks HTTPS only."""
    tls_key: Path | None = None
    token_hours: Annotated[float, Field(gt=0, le=720)] = 12.0
    """How long a login's bearer token is valid."""
    max_range_hours: Annotated[int, Field(ge=1, le=168)] = 24
    """Longest time range one playback, timeline or export request may cover."""
    degraded_after_seconds: Annotated[float, Field(ge=1, le=86_400)] = 30.0
    """Health is `degraded` once a camera has been down this long."""
    critical_after_seconds: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    """Health is `critical` once a camera has been down this long."""
    signing_key: Path | None = None
    """Ed25519 private key signing export manifests; default `<root>/.nvr-export-key`,
    created at first start (mode 0600)."""
    exports_dir: Path | None = None
    """Where export packages are built; default `<root>/exports`."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, port = split_listen(value)
        if not host or not 0 < port < 65536:
            raise ValueError(f"expected host:port, found {value!r}")
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

    @model_validator(mode="after")
    def _cameras(self) -> NvrConfig:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"camera name {cam.name!r} is used twice; names must be unique")
            seen.add(cam.name)
            if cam.retention_days is not None and cam.retention_days < self.retention.days:
                raise ValueError(
                    f"camera {cam.name!r}: retention_days may only lengthen the window "
                    f"({self.retention.days}), found {cam.retention_days}"
                )
        return self

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
