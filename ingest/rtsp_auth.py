"""Authentication of RTSP requests: HTTP Basic and Digest (RFC 2617, MD5, `qop=auth`) as
cameras ask for them in `WWW-Authenticate`. Pure: no I/O; a `DigestAuth` is made from a
401's challenges and signs each later request of its session.

Threads: runs on the recorder thread of the camera whose session holds it. Imports go down
to `ingest.errors` only; `ingest.rtsp_session` uses it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

from nvr.ingest.errors import AuthRejected


class DigestAuth:
    """HTTP Basic/Digest authentication (RFC 2617) for RTSP requests."""

    def __init__(self, username: str, password: str, challenges: list[str]) -> None:
        self._user = username
        self._password = password
        self._digest: dict[str, str] | None = None
        self._nc = 0
        for challenge in challenges:
            scheme, _, rest = challenge.strip().partition(" ")
            if scheme.lower() == "digest":
                self._digest = {
                    k.lower(): v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]*)', rest)
                }
                break
        if self._digest is None and not any(
            c.strip().lower().startswith("basic") for c in challenges
        ):
            raise AuthRejected("camera asks for an authentication scheme other than Basic/Digest")

    def header(self, method: str, uri: str) -> str:
        d = self._digest
        if d is None:
            token = base64.b64encode(f"{self._user}:{self._password}".encode()).decode()
            return f"Basic {token}"
        realm, nonce = d.get("realm", ""), d.get("nonce", "")
        algorithm = d.get("algorithm", "MD5")
        if algorithm.upper() not in ("MD5", ""):
            raise AuthRejected(f"camera asks for digest algorithm {algorithm}")

        def md5(text: str) -> str:
            return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

        ha1 = md5(f"{self._user}:{realm}:{self._password}")
        ha2 = md5(f"{method}:{uri}")
        fields = [
            f'username="{self._user}"',
            f'realm="{realm}"',
            f'nonce="{nonce}"',
            f'uri="{uri}"',
        ]
        qop = d.get("qop", "")
        if "auth" in [q.strip() for q in qop.split(",")]:
            self._nc += 1
            nc = f"{self._nc:08x}"
            cnonce = os.urandom(8).hex()
            response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            fields += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
        else:
            response = md5(f"{ha1}:{nonce}:{ha2}")
        fields.append(f'response="{response}"')
        if "opaque" in d:
            fields.append(f'opaque="{d["opaque"]}"')
        return "Digest " + ", ".join(fields)
