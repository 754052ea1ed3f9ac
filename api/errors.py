"""Typed HTTP errors of the API. Each carries its status code and a stable `code` (a
kebab-case word: the web pages show their own catalogue's message for it, `problem.<code>`);
the app turns them into RFC 9457 problems (`application/problem+json`, with `detail` in
English for API clients and `code`). Messages never contain a password, a token or a camera
credential."""

from __future__ import annotations

from fastapi import HTTPException


class ApiError(HTTPException):
    status = 500
    code = "error"
    """The default `code` of this kind of error; a call site may give a more precise one."""

    def __init__(
        self, detail: str, headers: dict[str, str] | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(status_code=self.status, detail=detail, headers=headers)
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    """Malformed or out-of-bounds parameters."""

    status = 400
    code = "bad-request"


class Unauthorized(ApiError):
    """No valid login."""

    status = 401
    code = "login-required"

    def __init__(self, detail: str = "login required", *, code: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, code=code)


class Forbidden(ApiError):
    """Logged in, but the role or the camera permissions do not allow it."""

    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not-found"


class Conflict(ApiError):
    """Refused by a rule (retention window, lock, two-person rule); `detail` says which."""

    status = 409
    code = "conflict"


class Unprocessable(ApiError):
    """Well-formed but impossible (e.g. one MP4 across a codec change)."""

    status = 422
    code = "unprocessable"


class TooManyAttempts(ApiError):
    """Login slowed down after repeated failures."""

    status = 429
    code = "too-many-logins"

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(
            f"too many failed logins; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


class TooBusy(ApiError):
    """Over a cost limit (e.g. playback plans being built); retry after `Retry-After`."""

    status = 429
    code = "busy"

    def __init__(self, detail: str, retry_after: float) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(detail, headers={"Retry-After": str(seconds)})


class Unavailable(ApiError):
    """Storage failing (missing footage file, index error); retrying later may help."""

    status = 503
    code = "unavailable"
