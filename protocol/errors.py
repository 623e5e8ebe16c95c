"""Errors on the wire: every error body is ``{"detail": …, "code": …}``.

``detail`` is for people and may change; ``code`` is for programs and does
not. The code also travels in the ``X-Error-Code`` header, so a reply without
a body (HEAD) still says what went wrong. A client decides what went wrong
from ``code`` alone: statuses collide (409 is both ``lease_lost`` and
``already_stored``), codes never do. A reply without a code did not come from
a gate (a proxy's 502 page, say) and is judged by its status only as
"reachable or not".
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class ErrorCode(StrEnum):
    """Every code a gate can answer with; the README lists them with their statuses."""

    # 400
    INVALID_BODY = "invalid_body"  # not UTF-8, or not JSON
    INVALID_CURSOR = "invalid_cursor"
    CHECKSUM_MISMATCH = "checksum_mismatch"  # an upload is not the bytes X-Content-SHA256 names
    CORRUPT_GZIP = "corrupt_gzip"  # a gzip upload that does not inflate, or is cut short
    UPLOAD_INTERRUPTED = "upload_interrupted"
    # 401 / 403
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    # 404
    NOT_YOUR_TASK = "not_your_task"  # no such task among those this key may touch
    JOB_NOT_FOUND = "job_not_found"
    CLIENT_NOT_FOUND = "client_not_found"
    DOCUMENT_NOT_FOUND = "document_not_found"
    SOURCE_NOT_FOUND = "source_not_found"  # no source profile of that name
    OBJECT_MISSING = "object_missing"  # nothing in storage under that key
    ROUTE_NOT_FOUND = "route_not_found"
    # 405
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # 409
    LEASE_LOST = "lease_lost"
    ALREADY_STORED = "already_stored"
    INVALID_STATE = "invalid_state"  # e.g. cancel a completed task
    KEY_IN_USE = "key_in_use"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"  # the key was first used for different work
    LEASE_CAP = "lease_cap"  # the client holds MAX_LEASES_PER_CLIENT (or its key's cap) already
    SESSION_ENDED = "session_ended"  # a lease for a process (X-Session-Id) that said goodbye
    # 413
    TOO_LARGE = "too_large"
    # 422
    INVALID_FIELD = "invalid_field"  # the body, a query or a header breaks the schema
    WRONG_STORAGE_KEY = "wrong_storage_key"  # a reported key or URL is not the document's
    INVALID_KEY = "invalid_key"  # a storage key that is malformed or would leave the root
    NOT_IN_TASK = "not_in_task"  # a reported or uploaded doc_id the leased task does not contain
    LEASE_REQUIRED = "lease_required"  # a client upload without task_id and X-Lease-Token
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    JOB_TOO_LARGE = "job_too_large"  # over MAX_JOB_TASKS
    INVALID_HARVEST = "invalid_harvest"  # a harvest its profile cannot run (no date fields, …)
    # 5xx
    INTERNAL_ERROR = "internal_error"
    DATABASE_UNAVAILABLE = "database_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    STORAGE_TIMEOUT = "storage_timeout"


class FieldError(BaseModel):
    loc: list[int | str]
    msg: str
    type: str | None = None


class ErrorBody(BaseModel):
    """The body of every error reply."""

    detail: str | list[FieldError] = Field(
        description="What was wrong, for people: one message, or the fields that broke the schema."
    )
    code: ErrorCode = Field(description="What was wrong, for programs: stable across versions.")

    def message(self) -> str:
        """The detail as one line: a field list reads `header.X-Lease-Token: Input should be…`."""
        if isinstance(self.detail, str):
            return self.detail
        return "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in self.detail)


def error_body(code: ErrorCode, detail: str | list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of an error reply (plain dicts, so a reply needs no model round trip)."""
    return {"detail": detail, "code": code.value}


def parse_error(content: bytes, code_header: str | None = None) -> ErrorBody | None:
    """The error of a reply, from its body, or (a HEAD reply has none) from its X-Error-Code
    header; None when the reply is not one of ours."""
    try:
        return ErrorBody.model_validate_json(content)
    except ValueError:
        pass
    try:
        return ErrorBody(code=ErrorCode(code_header or ""), detail="(no body)")
    except ValueError:
        return None
