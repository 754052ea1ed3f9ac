"""Typed ingest errors. Each names a ledger `cause` and whether a retry can help; messages
never carry credentials (URLs are redacted before they reach an error)."""

from __future__ import annotations


class StreamError(Exception):
    """A camera stream failed. `cause` is the outage-ledger cause."""

    cause = "stream-error"
    retryable = True


class CameraUnreachable(StreamError):
    """Nothing answers at the camera's address (refused, no route, DNS)."""

    cause = "unreachable"


class ConnectTimeout(StreamError):
    """The camera accepted a connection but did not answer the RTSP handshake in time."""

    cause = "connect-timeout"


class StreamStalled(StreamError):
    """The camera stopped sending media while the connection stayed open."""

    cause = "stalled"


class StreamEnded(StreamError):
    """The camera closed the stream."""

    cause = "stream-ended"


class AuthRejected(StreamError):
    """The camera refused our credentials. Retried: the password may be fixed on the camera."""

    cause = "auth-rejected"


class UnsupportedStream(StreamError):
    """The stream has no H.264/H.265 video, or never sends a keyframe."""

    cause = "unsupported-stream"


class CameraConfigFault(StreamError):
    """The camera cannot start as configured on this machine (its password's environment
    variable is unset, its password file unreadable). Only this camera is down; retried, so
    a secret put in place later is picked up."""

    cause = "config"
