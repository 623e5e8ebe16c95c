"""Gate errors. One base; each docstring is its default message.

DocgateError
├── SettingError            a setting is missing or wrong (start-up stops)
├── DatabaseUnavailable     503
├── Unauthorized            401
├── Forbidden               403
├── NotFound                404
├── Conflict                409
│   └── LeaseLost           409
├── PayloadTooLarge         413
├── Unprocessable           422
└── BadRequest              400
"""

from __future__ import annotations


class DocgateError(Exception):
    """docgate error."""

    status_code = 500

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class SettingError(DocgateError):
    """A setting is missing or invalid."""


class DatabaseUnavailable(DocgateError):
    """The database is unavailable; try again shortly."""

    status_code = 503


class Unauthorized(DocgateError):
    """Missing or unknown API key: send it in the X-API-Key header."""

    status_code = 401


class Forbidden(DocgateError):
    """This endpoint needs the admin API key."""

    status_code = 403


class NotFound(DocgateError):
    """Not found."""

    status_code = 404


class Conflict(DocgateError):
    """The request conflicts with the current state."""

    status_code = 409


class LeaseLost(Conflict):
    """The lease_token is not the task's current lease: the lease expired or the task moved on."""


class PayloadTooLarge(DocgateError):
    """Request body too large."""

    status_code = 413


class Unprocessable(DocgateError):
    """The request is well-formed but its content is not acceptable."""

    status_code = 422


class BadRequest(DocgateError):
    """Bad request."""

    status_code = 400
