"""Removing credentials from URLs and error text before anything is logged or stored."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_text(text: str, *secrets: str | None) -> str:
    """Strip userinfo from any URL in `text` and blank out the given secret strings."""
    out = _USERINFO.sub(r"\g<scheme>****:****@", text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "****")
    return out
