"""Removing credentials from URLs and error text before anything is logged or stored."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """`rtsp://user:pw@host/x` -> `rtsp://****:****@host/x`; other URLs unchanged."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"****:****@{host}", parts.path, parts.query, ""))


def redact_text(text: str, *secrets: str | None) -> str:
    """Strip userinfo from any URL in `text` and blank out the given secret strings."""
    out = _USERINFO.sub(r"\g<scheme>****:****@", text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "****")
    return out
