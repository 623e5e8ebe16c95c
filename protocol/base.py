"""The wire contract's ground: bounds, validated scalar types and the two model bases.

Imports only the standard library and pydantic. Request models are strict (no silent coercion
of ``false`` to ``0``) and forbid unknown fields, so a create request can never set a
server-owned field such as ``status``. protocol.v1 re-exports all of it: callers write
``v1.MAX_TEXT``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# ---- bounds (documented in the README; every one shows up in its 422 message)
MAX_BODY_BYTES = 1_048_576  # default; the gate's MAX_BODY_BYTES setting overrides
MAX_JSON_DEPTH = 16
MAX_JSON_BYTES = 65_536
MAX_TEXT = 4_000
MAX_BATCH_TASKS = 1_000
MAX_LEASE_TASKS = 100
MAX_LIST_LIMIT = 1_000
MAX_WAIT_SECONDS = 30
MAX_JOB_COUNT = 10_000_000
MAX_CHUNK_SIZE = 100_000
MAX_DOCUMENTS_PER_REPORT = 1_000
MAX_ATTEMPTS_BOUND = 100
MAX_PAGE = 1_000_000
MAX_DOCUMENTS_PER_TASK = 1_000_000
MAX_PRIORITY = 1_000_000
MAX_STORAGE_KEY = 300
MAX_STORAGE_URL = 1_200
MAX_URL = 2_000
MAX_CONTENT_TYPE = 200
MAX_SIZE = 2**62
MAX_DOCS_PER_MINUTE = 1e9

DOC_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
# One rule for a source's name, wherever it is given: a task's or job's `source`, a stored
# profile's name (PUT /api/v1/sources/{name}), a plugin's entry point.
SOURCE_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
EXT_PATTERN = r"^(\.[A-Za-z0-9]{1,16}){0,2}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


# ---- validated scalar types


def no_nul(value: str) -> str:
    # PostgreSQL text and jsonb cannot hold U+0000; refuse it here as a 422
    # instead of letting the database turn it into a 500.
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


def _json_depth(value: Any, depth: int = 0) -> int:
    if isinstance(value, dict):
        return max([_json_depth(v, depth + 1) for v in value.values()] + [depth + 1])
    if isinstance(value, list):
        return max([_json_depth(v, depth + 1) for v in value] + [depth + 1])
    return depth


def _check_json(value: dict[str, Any]) -> dict[str, Any]:
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:  # NaN, Infinity and 1e999 (which parses as infinity) are not JSON: PostgreSQL's jsonb refuses them
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("must not contain NaN, Infinity or numbers beyond a double's range") from None
    if "\\u0000" in text:
        raise ValueError("must not contain NUL (\\u0000) characters")
    if len(text.encode()) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
    return value


Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(no_nul)]
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, strip_whitespace=True),
    AfterValidator(no_nul),
]
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]
SourceName = Annotated[str, StringConstraints(pattern=SOURCE_PATTERN)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(no_nul)]
StorageKeyText = Annotated[str, StringConstraints(max_length=MAX_STORAGE_KEY), AfterValidator(no_nul)]
StorageUrlText = Annotated[str, StringConstraints(max_length=MAX_STORAGE_URL), AfterValidator(no_nul)]
# An object version as S3 and B2 spell them (visible ASCII; AWS allows up to 1,024 bytes).
VersionIdText = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,1024}$")]
UrlText = Annotated[str, StringConstraints(max_length=MAX_URL), AfterValidator(no_nul)]


def printable(value: str) -> str:
    # A media type has no control characters (RFC 9110 §8.3); one that does is not metadata.
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


ContentTypeText = Annotated[str, StringConstraints(max_length=MAX_CONTENT_TYPE), AfterValidator(printable)]
Count = Annotated[int, Field(ge=0, le=MAX_DOCUMENTS_PER_TASK)]
Priority = Annotated[int, Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)]
Attempts = Annotated[int, Field(ge=1, le=MAX_ATTEMPTS_BOUND)]
Sha256Hex = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]


def _doc_id(value: int | str) -> str:
    text = str(value)
    if not re.fullmatch(DOC_ID_PATTERN, text):
        raise ValueError("doc_id must be a non-negative integer or match [A-Za-z0-9._-]{1,128}")
    if text in {".", ".."}:
        raise ValueError("doc_id must not be '.' or '..'")
    return text


DocId = Annotated[int | str, AfterValidator(_doc_id)]


def is_doc_id(value: str) -> bool:
    """Would the gate take this doc_id (as DocId checks it)?"""
    try:
        _doc_id(value)
    except ValueError:
        return False
    return True


# FastAPI validates bodies as Python objects, where strict mode would refuse
# the JSON string form of a UUID or a timestamp; these two parse from strings.
WireUUID = Annotated[UUID, Field(strict=False)]
WireTime = Annotated[datetime, Field(strict=False)]


# A collection: one registry's namespace (doc_id is unique within it; its documents are stored
# under `<collection>/`). '' is the default collection, with the keys documents always had.
COLLECTION_PATTERN = r"^([a-z0-9][a-z0-9_-]{0,62})?$"
CollectionName = Annotated[str, StringConstraints(pattern=COLLECTION_PATTERN)]


class Request(BaseModel):
    """Base of every request body: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Reply(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("must include a timezone, e.g. 2026-01-01T00:00:00Z")
    try:  # an offset can push year 1 or 9999 outside what a timestamp holds
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be between the years 2000 and 9999") from None
    if not 2000 <= utc.year <= 9998:
        raise ValueError("must be between the years 2000 and 9999")
    return value


def clip(value: str | None, limit: int) -> str | None:
    """What a sender does to free text before it goes out: NULs dropped, what is not UTF-8 (a
    header's undecodable bytes, as surrogates) replaced by "?", cut to `limit` characters."""
    if value is None:
        return None
    if value.isascii() and "\x00" not in value:  # most headers and URLs: nothing to replace
        return value[:limit]
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:limit]


def sendable(value: str, limit: int) -> bool:
    """Printable, valid UTF-8 and within the bound: a header value worth keeping as it is."""
    return value.isprintable() and clip(value, limit) == value


MAX_HEADERS = 64  # response headers kept per capture
MAX_HEADER_NAME = 100
MAX_HEADER_VALUE = 1_000
MAX_HEADER_CHARS = 4_000  # names and values of one capture's headers, together
MAX_REDIRECTS = 10
HeaderName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_HEADER_NAME), AfterValidator(printable)
]
HeaderValue = Annotated[str, StringConstraints(max_length=MAX_HEADER_VALUE), AfterValidator(no_nul)]


# Durations as the API takes them: 90s, 30m, 6h, 3d.
DURATION_PATTERN = r"^([1-9][0-9]{0,5})(s|m|h|d)$"
UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN)]


def seconds(duration: str) -> int:
    """`6h` → 21600 (s, m, h, d)."""
    found = re.fullmatch(DURATION_PATTERN, duration)
    assert found is not None, duration  # checked by Duration
    return int(found[1]) * UNITS[found[2]]
