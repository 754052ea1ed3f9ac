"""Typed errors of the GB/T 28181 interface; raised on the event loop."""

from __future__ import annotations


class GbError(Exception):
    """A GB/T 28181 exchange failed; `retryable` says whether trying again can help."""

    retryable = True


class SipTimeout(GbError):
    """No answer to a request within the transaction timeout (the platform is away)."""


class SipRejected(GbError):
    """The platform answered a request with a final error status."""

    def __init__(self, method: str, code: int, phrase: str) -> None:
        super().__init__(f"{method} refused: {code} {phrase}")
        self.code = code


class AuthFailed(SipRejected):
    """The platform refused our credentials (a wrong password): retrying with the same
    password is pointless until the configuration changes, but the platform may be
    reconfigured, so the device keeps trying at its longest back-off."""

    retryable = False
