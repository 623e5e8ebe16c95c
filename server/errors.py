"""Gate errors. One base; each docstring is its default message; one table gives each its
status and wire code (``protocol.errors.ErrorCode``).

    DocgateError                500 internal_error
    ├── SettingError            a setting is missing or wrong (start-up stops)
    ├── DatabaseUnavailable     503 database_unavailable
    ├── Unauthorized            401 unauthorized
    ├── Forbidden               403 forbidden
    ├── NotFound                404 route_not_found
    │   ├── NotYourTask         404 not_your_task
    │   ├── JobNotFound         404 job_not_found
    │   ├── ClientNotFound      404 client_not_found
    │   ├── DocumentNotFound    404 document_not_found
    │   └── SourceNotFound      404 source_not_found
    ├── Conflict                409 invalid_state
    │   ├── LeaseLost           409 lease_lost
    │   ├── IdempotencyConflict 409 idempotency_conflict
    │   ├── LeaseCapReached     409 lease_cap
    │   ├── SessionEnded        409 session_ended
    │   └── KeyInUse            409 key_in_use
    ├── PayloadTooLarge         413 too_large
    ├── Unprocessable           422 invalid_field
    │   ├── WrongStorageKey     422 wrong_storage_key
    │   ├── NotInTask           422 not_in_task
    │   ├── LeaseRequired       422 lease_required
    │   ├── UnsupportedEncoding 422 unsupported_encoding
    │   ├── JobTooLarge         422 job_too_large
    │   ├── InvalidHarvest      422 invalid_harvest
    │   └── InvalidProfile      422 invalid_field (a selector that does not compile)
    └── BadRequest              400 invalid_body
        ├── InvalidCursor       400 invalid_cursor
        └── UploadInterrupted   400 upload_interrupted

Storage errors raised while the gate serves a request have rows of their own
in the same table (``already_stored``, ``checksum_mismatch``, …).
"""

from __future__ import annotations

from protocol.errors import ErrorCode
from storage import errors as storage


class DocgateError(Exception):
    """docgate error."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class SettingError(DocgateError):
    """A setting is missing or invalid."""


class DatabaseUnavailable(DocgateError):
    """The database is unavailable; try again shortly."""


class Unauthorized(DocgateError):
    """Missing or unknown API key: send it in the X-API-Key header."""


class Forbidden(DocgateError):
    """This endpoint needs the admin API key."""


class NotFound(DocgateError):
    """Not found."""


class NotYourTask(NotFound):
    """No such task among those this API key may touch."""


class JobNotFound(NotFound):
    """No such job."""


class ClientNotFound(NotFound):
    """No such client."""


class DocumentNotFound(NotFound):
    """No such document is recorded."""


class Conflict(DocgateError):
    """The request conflicts with the current state."""


class LeaseLost(Conflict):
    """The lease is not the task's current lease: it expired or the task moved on."""


class IdempotencyConflict(Conflict):
    """The idempotency_key was first used for different work."""


class LeaseCapReached(Conflict):
    """The client already holds as many leases as it may (MAX_LEASES_PER_CLIENT, or its key's)."""


class SessionEnded(Conflict):
    """This process said goodbye (DELETE /api/v1/session) and is leased nothing more; a new
    process sends a new X-Session-Id."""


class KeyInUse(Conflict):
    """api_key is already in use; omit it to get a generated one."""


class SourceNotFound(NotFound):
    """No source profile of that name."""


class PayloadTooLarge(DocgateError):
    """Request body too large."""


class Unprocessable(DocgateError):
    """The request is well-formed but its content is not acceptable."""


class InvalidProfile(Unprocessable):
    """The source profile would fail on every attempt."""


class WrongStorageKey(Unprocessable):
    """A reported storage_key or storage_url is not the document's."""


class NotInTask(Unprocessable):
    """A reported or uploaded document is not one of the task's."""


class LeaseRequired(Unprocessable):
    """A client upload needs ?task_id= and the X-Lease-Token header."""


class UnsupportedEncoding(Unprocessable):
    """Content-Encoding must be gzip or identity."""


class JobTooLarge(Unprocessable):
    """The job would create more tasks than MAX_JOB_TASKS allows."""


class InvalidHarvest(Unprocessable):
    """The harvest cannot run on its profile as it stands."""


class BadRequest(DocgateError):
    """Bad request."""


class InvalidCursor(BadRequest):
    """cursor must be a value returned as next_cursor."""


class UploadInterrupted(BadRequest):
    """Upload interrupted before the body was complete; nothing was stored."""


C = ErrorCode
# The one table from exception to (status, code). A subclass without a row
# answers as its nearest listed base.
ERRORS: dict[type[Exception], tuple[int, ErrorCode]] = {
    DocgateError: (500, C.INTERNAL_ERROR),
    DatabaseUnavailable: (503, C.DATABASE_UNAVAILABLE),
    Unauthorized: (401, C.UNAUTHORIZED),
    Forbidden: (403, C.FORBIDDEN),
    NotFound: (404, C.ROUTE_NOT_FOUND),
    NotYourTask: (404, C.NOT_YOUR_TASK),
    JobNotFound: (404, C.JOB_NOT_FOUND),
    ClientNotFound: (404, C.CLIENT_NOT_FOUND),
    DocumentNotFound: (404, C.DOCUMENT_NOT_FOUND),
    SourceNotFound: (404, C.SOURCE_NOT_FOUND),
    Conflict: (409, C.INVALID_STATE),
    LeaseLost: (409, C.LEASE_LOST),
    KeyInUse: (409, C.KEY_IN_USE),
    LeaseCapReached: (409, C.LEASE_CAP),
    SessionEnded: (409, C.SESSION_ENDED),
    IdempotencyConflict: (409, C.IDEMPOTENCY_CONFLICT),
    PayloadTooLarge: (413, C.TOO_LARGE),
    Unprocessable: (422, C.INVALID_FIELD),
    WrongStorageKey: (422, C.WRONG_STORAGE_KEY),
    NotInTask: (422, C.NOT_IN_TASK),
    LeaseRequired: (422, C.LEASE_REQUIRED),
    UnsupportedEncoding: (422, C.UNSUPPORTED_ENCODING),
    JobTooLarge: (422, C.JOB_TOO_LARGE),
    InvalidHarvest: (422, C.INVALID_HARVEST),
    BadRequest: (400, C.INVALID_BODY),
    InvalidCursor: (400, C.INVALID_CURSOR),
    UploadInterrupted: (400, C.UPLOAD_INTERRUPTED),
    storage.StorageError: (503, C.STORAGE_UNAVAILABLE),
    storage.KeyRefused: (422, C.INVALID_KEY),
    storage.ObjectMissing: (404, C.OBJECT_MISSING),
    storage.AlreadyStored: (409, C.ALREADY_STORED),
    storage.ChecksumMismatch: (400, C.CHECKSUM_MISMATCH),
    storage.CorruptGzip: (400, C.CORRUPT_GZIP),
    storage.TooLarge: (413, C.TOO_LARGE),
    storage.StorageTimeout: (504, C.STORAGE_TIMEOUT),
    storage.StorageUnavailable: (503, C.STORAGE_UNAVAILABLE),
}


def status_and_code(exc: BaseException) -> tuple[int, ErrorCode]:
    """The status and code an exception answers with (500 internal_error if none is listed)."""
    for kind in type(exc).__mro__:
        row = ERRORS.get(kind)
        if row is not None:
            return row
    return 500, C.INTERNAL_ERROR
