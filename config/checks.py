"""What a valid config needs from the machine it runs on: every camera's secret resolvable,
the storage root writable, the API's certificate and key readable (and matching), the API
port free. `machine_problems` reports every such problem at once, one line per key, for
`nvr check-config`, with `[events]` secrets (the schema itself is checked by
`config.loader`). Blocking (files, a socket bind); runs on the calling thread. Never echoes a
secret.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import tempfile
from pathlib import Path

from nvr.config.errors import ConfigError
from nvr.config.models import NvrConfig


def camera_key(config: NvrConfig, name: str) -> str:
    """`cameras[1](gate)`: the key path of a camera, as schema errors name it."""
    for i, cam in enumerate(config.cameras):
        if cam.name == name:
            return f"cameras[{i}]({name})"
    return f"cameras({name})"


def secret_problems(config: NvrConfig) -> list[str]:
    """One line per enabled camera whose password cannot be read now."""
    out: list[str] = []
    for i, cam in enumerate(config.cameras):
        if not cam.enabled:
            continue
        try:
            cam.password()
        except ConfigError as err:
            out.extend(f"cameras[{i}]({cam.name}).{p}" for p in err.problems)
    return out


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def storage_problems(config: NvrConfig) -> list[str]:
    """The storage root must be a writable folder, or creatable in a writable one."""
    root = config.storage.root
    if root.exists():
        if not root.is_dir():
            return [f"storage.root: {root} is not a folder"]
        try:
            with tempfile.TemporaryFile(dir=root, prefix=".nvr-check-"):
                pass
        except OSError as err:
            return [f"storage.root: cannot write in {root}: {err.strerror or err}"]
        return []
    parent = _nearest_existing(root.parent)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"storage.root: {root} does not exist and cannot be created in {parent}"]
    return []


def _readable(key: str, path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as err:
        return f"{key}: cannot read {path}: {err.strerror or err}"
    return None


def api_problems(config: NvrConfig, port_in_use_ok: bool = False) -> list[str]:
    """The API's TLS files readable and matching, its metrics token file readable, and its
    listen address free (unless `port_in_use_ok`: the running daemon holds it)."""
    api = config.api
    if api is None:
        return []
    out = []
    if api.tls_certificate is not None and api.tls_key is not None:
        unreadable = [
            p
            for p in (
                _readable("api.tls_certificate", api.tls_certificate),
                _readable("api.tls_key", api.tls_key),
            )
            if p is not None
        ]
        out.extend(unreadable)
        if not unreadable:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                    api.tls_certificate, api.tls_key
                )
            except (ssl.SSLError, OSError) as err:
                out.append(
                    f"api.tls_certificate: {api.tls_certificate} with api.tls_key "
                    f"{api.tls_key} is not a usable PEM certificate and key ({err})"
                )
    if api.metrics_token_file is not None:
        problem = _readable("api.metrics_token_file", api.metrics_token_file)
        if problem is not None:
            out.append(problem)
    if not port_in_use_ok:
        problem = port_problem(api.listen, *api.host_port())
        if problem is not None:
            out.append(problem)
    return out


def port_problem(listen: str, host: str, port: int) -> str | None:
    """Whether uvicorn could bind `host:port` now (with SO_REUSEADDR, as it does)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return f"api.listen: cannot resolve {host!r}: {err.strerror}"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"api.listen: {listen} is already in use by another program"
            return f"api.listen: cannot listen on {listen}: {err.strerror or err}"
    return None


def events_problems(config: NvrConfig) -> list[str]:
    """The broker password and each webhook's HMAC secret readable now."""
    events = config.events
    if events is None:
        return []
    out: list[str] = []
    try:
        events.password()
    except ConfigError as err:
        out.extend(f"events.{p}" for p in err.problems)
    for i, hook in enumerate(events.webhooks):
        try:
            hook.secret(f"events.webhooks[{i}]")
        except ConfigError as err:
            out.extend(f"events.webhooks[{i}].{p}" for p in err.problems)
    return out


def gb28181_problems(config: NvrConfig) -> list[str]:
    """The GB/T 28181 registration password readable now."""
    if config.gb28181 is None:
        return []
    try:
        config.gb28181.password()
    except ConfigError as err:
        return [f"gb28181.{p}" for p in err.problems]
    return []


def machine_problems(config: NvrConfig, port_in_use_ok: bool = False) -> list[str]:
    """Every problem of `config` on this machine, each line naming its key."""
    return (
        secret_problems(config)
        + storage_problems(config)
        + api_problems(config, port_in_use_ok)
        + events_problems(config)
        + gb28181_problems(config)
    )
