"""The wire contract of API v1, defined once: requests, replies, statuses and bounds.

Imports only the standard library and pydantic. Request models are strict
(no silent coercion of ``false`` to ``0``) and forbid unknown fields, so a
create request can never set a server-owned field such as ``status``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from protocol.errors import ErrorCode

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
SOURCE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
EXT_PATTERN = r"^(\.[A-Za-z0-9]{1,16}){0,2}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class TaskStatus(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class DocumentStatus(StrEnum):
    STORED = "stored"
    SKIPPED = "skipped"
    FAILED = "failed"


class ClientStatus(StrEnum):
    ACTIVE = "active"
    STALE = "stale"
    REVOKED = "revoked"


# ---- validated scalar types


def _no_nul(value: str) -> str:
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


Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_no_nul)]
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, strip_whitespace=True),
    AfterValidator(_no_nul),
]
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]
SourceName = Annotated[str, StringConstraints(pattern=SOURCE_PATTERN)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_no_nul)]
StorageKeyText = Annotated[str, StringConstraints(max_length=MAX_STORAGE_KEY), AfterValidator(_no_nul)]
StorageUrlText = Annotated[str, StringConstraints(max_length=MAX_STORAGE_URL), AfterValidator(_no_nul)]
# An object version as S3 and B2 spell them (visible ASCII; AWS allows up to 1,024 bytes).
VersionIdText = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,1024}$")]
UrlText = Annotated[str, StringConstraints(max_length=MAX_URL), AfterValidator(_no_nul)]


def _printable(value: str) -> str:
    # A media type has no control characters (RFC 9110 §8.3); one that does is not metadata.
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


ContentTypeText = Annotated[str, StringConstraints(max_length=MAX_CONTENT_TYPE), AfterValidator(_printable)]
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


def _aware(value: datetime | None) -> datetime | None:
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


# ---- tasks


class TaskCreate(Request):
    """One task: the seed's shape, or any source with its params."""

    search_params: JsonObject = Field(default_factory=dict)
    start_page: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 1
    max_documents: Annotated[int, Field(ge=1, le=MAX_DOCUMENTS_PER_TASK)] = 100
    source: SourceName = "search"
    params: JsonObject = Field(default_factory=dict)
    priority: Priority = 0
    max_attempts: Attempts | None = None
    idempotency_key: IdempotencyKey | None = None
    run_after: WireTime | None = None
    collection: CollectionName | None = Field(
        default=None,
        description="the registry its documents belong to (doc_ids are unique within one); "
        "default: its source profile's, else the default collection ''",
    )

    _check_run_after = field_validator("run_after")(_aware)

    @model_validator(mode="after")
    def _params_fit_the_source(self) -> TaskCreate:
        model = SOURCE_PARAMS.get(self.source)
        if model is not None:
            try:
                model.model_validate(self.params, strict=False)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                message = str(first["msg"]).removeprefix("Value error, ")
                raise ValueError(
                    f"params of a {self.source} task: {where + ': ' if where else ''}{message}"
                ) from None
        return self


class TaskBatchCreate(Request):
    tasks: Annotated[list[TaskCreate], Field(min_length=1, max_length=MAX_BATCH_TASKS)]


class TaskWork(Reply):
    """What a task asks for, as every view of a task shows it."""

    task_id: UUID
    job_id: UUID | None = None
    source: str
    search_params: dict[str, Any]
    start_page: int
    max_documents: int
    params: dict[str, Any]
    status: TaskStatus
    attempts: int
    max_attempts: int
    collection: str = ""


class Task(TaskWork):
    """A task as the admin (or its client) sees it."""

    priority: int
    run_after: datetime
    idempotency_key: str | None
    assigned_to: UUID | None = None
    lease_expires_at: datetime | None
    documents_downloaded: int
    documents_failed: int
    documents_skipped: int
    result_summary: dict[str, Any] | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    assigned_at: datetime | None
    completed_at: datetime | None


class TaskCreated(Task):
    created: bool = True


class TaskBatchCreated(Reply):
    task_ids: list[UUID]
    tasks_created: int
    tasks_existing: int


class LeasedTask(TaskWork):
    """What a client receives for one leased task."""

    lease_token: UUID
    lease_expires_at: datetime
    last_error: str | None = Field(
        default=None, description="why the task's last attempt failed, if one did (a source may weigh it)"
    )
    profile: dict[str, Any] | None = Field(
        default=None, description="the stored source profile the task's source names (protocol.sources)"
    )
    user_agent: str | None = Field(
        default=None, description="the User-Agent to send origins (the gate's USER_AGENT / OPERATOR_CONTACT)"
    )


class LeaseBatch(Reply):
    tasks: list[LeasedTask]


def clip(value: str | None, limit: int) -> str | None:
    """What a sender does to free text before it goes out: NULs dropped, what is not UTF-8 (a
    header's undecodable bytes, as surrogates) replaced by "?", cut to `limit` characters."""
    if value is None:
        return None
    return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:limit]


def _sendable(value: str, limit: int) -> bool:
    """Printable, valid UTF-8 and within the bound: a header value worth keeping as it is."""
    return value.isprintable() and clip(value, limit) == value


MAX_HEADERS = 64  # response headers kept per capture
MAX_HEADER_NAME = 100
MAX_HEADER_VALUE = 1_000
MAX_HEADER_CHARS = 4_000  # names and values of one capture's headers, together
MAX_REDIRECTS = 10
HeaderName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_HEADER_NAME), AfterValidator(_printable)
]
HeaderValue = Annotated[str, StringConstraints(max_length=MAX_HEADER_VALUE), AfterValidator(_no_nul)]


class Redirect(Request):
    url: UrlText
    status: Annotated[int, Field(ge=300, le=399)]


class Capture(Request):
    """How a document was fetched, as the client saw it: the request, the redirects followed, the
    answer's status and headers, the server's address and when. Bounded: at most MAX_HEADERS
    headers (names ≤ 100, values ≤ 1,000 characters) and MAX_REDIRECTS redirects."""

    final_url: UrlText | None = Field(
        default=None, description="the URL the document came from, after redirects"
    )
    redirects: Annotated[list[Redirect], Field(max_length=MAX_REDIRECTS)] = Field(default_factory=list)
    http_status: Annotated[int, Field(ge=100, le=599)] | None = None
    response_headers: Annotated[dict[HeaderName, HeaderValue], Field(max_length=MAX_HEADERS)] = Field(
        default_factory=dict, description="the answer's headers, names lower-cased"
    )
    fetched_at: WireTime | None = Field(
        default=None, description="when the answer came, by the client's clock"
    )
    server_ip: Annotated[str, StringConstraints(max_length=45)] | None = None
    server_port: Annotated[int, Field(ge=0, le=65_535)] | None = None
    client_version: Annotated[str, StringConstraints(max_length=100), AfterValidator(_printable)] | None = (
        None
    )

    @field_validator("server_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)  # its ValueError says what is wrong
        return value

    _check_fetched_at = field_validator("fetched_at")(_aware)

    @field_validator("response_headers")
    @classmethod
    def _bounded(cls, value: dict[str, str]) -> dict[str, str]:
        if sum(len(k) + len(v) for k, v in value.items()) > MAX_HEADER_CHARS:
            raise ValueError(f"the headers' names and values come to more than {MAX_HEADER_CHARS} characters")
        return value

    @property
    def weight(self) -> int:
        """About how many bytes it takes in a report (the client splits reports by it)."""
        urls = len(self.final_url or "") + sum(len(r.url) + 30 for r in self.redirects)
        return 300 + urls + sum(len(k) + len(v) + 8 for k, v in self.response_headers.items())

    @classmethod
    def of_headers(cls, headers: Any, **fields: Any) -> Capture:
        """A capture from an answer's headers (a multidict: repeated names joined by ", "), cut to
        the bounds, the rest of it as given."""
        kept: dict[str, str] = {}
        room = MAX_HEADER_CHARS
        for name, value in headers.items():
            key = (clip(str(name), MAX_HEADER_NAME) or "").lower()
            if not key or not _sendable(key, MAX_HEADER_NAME):
                continue
            text = clip(str(value), MAX_HEADER_VALUE) or ""
            joined = kept[key] + ", " + text if key in kept else text
            joined = clip(joined, MAX_HEADER_VALUE) or ""
            grows = len(joined) - len(kept.get(key, "")) + (0 if key in kept else len(key))
            if grows > room or (key not in kept and len(kept) >= MAX_HEADERS):
                continue  # past the bounds: the first headers are kept, the rest dropped
            kept[key] = joined
            room -= grows
        return cls.model_validate({**fields, "response_headers": kept})


class DocumentReport(Request):
    """One document of a progress or completion report."""

    doc_id: DocId
    storage_key: StorageKeyText | None = None
    storage_url: StorageUrlText | None = None
    url: UrlText | None = None
    sha256: Sha256Hex | None = None
    size: Annotated[int, Field(ge=0, le=MAX_SIZE)] | None = None
    content_type: ContentTypeText | None = None
    compressed: bool = False
    version_id: VersionIdText | None = None
    status: Annotated[DocumentStatus, Field(strict=False)] = DocumentStatus.STORED
    error: Text | None = None
    capture: Capture | None = Field(default=None, description="how it was fetched (stored documents)")

    @model_validator(mode="after")
    def _stored_has_proof(self) -> DocumentReport:
        if self.status is DocumentStatus.STORED and (
            self.storage_key is None or self.sha256 is None or self.size is None
        ):
            raise ValueError("a stored document needs storage_key, sha256 and size")
        return self

    @classmethod
    def of_stored(
        cls,
        doc_id: str,
        stored: StoredDocument,
        *,
        url: str | None,
        status: DocumentStatus,
        capture: Capture | None = None,
    ) -> DocumentReport:
        """The report of a document in storage; the free text clipped, the rest as the gate checks it.
        A content type the gate would refuse is dropped (it is metadata, not proof)."""
        content_type = stored.content_type
        if content_type is not None and not _sendable(content_type, MAX_CONTENT_TYPE):
            content_type = None
        return cls.model_validate(
            {
                **stored.model_dump(),
                "doc_id": doc_id,
                "url": clip(url, MAX_URL),
                "content_type": content_type,
                "status": status,
                "capture": capture,
            }
        )

    @classmethod
    def of_failure(cls, doc_id: str, *, url: str | None, error: str) -> DocumentReport:
        return cls.model_validate(
            {
                "doc_id": doc_id,
                "status": DocumentStatus.FAILED,
                "url": clip(url, MAX_URL),
                "error": clip(error, MAX_TEXT),
            }
        )


Documents = Annotated[list[DocumentReport], Field(max_length=MAX_DOCUMENTS_PER_REPORT)]


class Counts(Request):
    """Documents of a task so far: the seed's three counters."""

    documents_downloaded: Count = 0
    documents_failed: Count = 0
    documents_skipped: Count = 0


# A report without lease_token is fenced by the caller's live lease on the task (and
# X-Session-Id when sent); with it, by the token: the strong form, which also fences a
# restarted process of the same client.
LeaseToken = WireUUID | None


WARC_KEY_PATTERN = r"^warc/[A-Za-z0-9-]{1,64}/[A-Za-z0-9._-]{1,200}\.warc\.gz$"


class WarcReport(Request):
    """A WARC file the client stored (`--warc`) holding the records of a report's documents."""

    storage_key: Annotated[str, StringConstraints(pattern=WARC_KEY_PATTERN)]
    sha256: Sha256Hex
    size: Annotated[int, Field(ge=1, le=MAX_SIZE)]
    records: Annotated[int, Field(ge=1, le=1 + 2 * MAX_DOCUMENTS_PER_REPORT)]
    doc_ids: Annotated[list[DocId], Field(min_length=1, max_length=MAX_DOCUMENTS_PER_REPORT)]


class TaskProgress(Request):
    lease_token: LeaseToken = None
    documents_downloaded: Count | None = None
    documents_failed: Count | None = None
    documents_skipped: Count | None = None
    documents: Documents = Field(default_factory=list)
    warc: WarcReport | None = Field(default=None, description="the WARC holding these documents' records")


class TaskComplete(Counts):
    """The seed's completion, with the lease token that fences it (optional, see LeaseToken)."""

    task_id: WireUUID
    lease_token: LeaseToken = None
    result_summary: JsonObject | None = None
    documents: Documents = Field(default_factory=list)
    warc: WarcReport | None = Field(default=None, description="the WARC holding these documents' records")


class TaskCompleteBatch(Request):
    """Several completions in one call (as SQS deletes a batch): each fenced on its own."""

    completions: Annotated[list[TaskComplete], Field(min_length=1, max_length=MAX_LEASE_TASKS)]

    @field_validator("completions")
    @classmethod
    def _distinct(cls, completions: list[TaskComplete]) -> list[TaskComplete]:
        seen: set[UUID] = set()
        for c in completions:
            if c.task_id in seen:
                raise ValueError(f"task {c.task_id} appears more than once")
            seen.add(c.task_id)
        return completions


class CompletionResult(Reply):
    """One completion of a batch: 200 (completed now, or a repeat), or the 404/409 it would
    have had alone, with its code and reason."""

    task_id: UUID
    status_code: int
    code: ErrorCode | None = None
    error: str | None = None


class TaskCompleteBatchResult(Reply):
    results: list[CompletionResult]
    completed: int


class TaskFail(Request):
    lease_token: LeaseToken = None
    error: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT), AfterValidator(_no_nul)]
    retryable: bool = True
    attempt_spent: bool = Field(
        True,
        description="false: hand the task back without spending the attempt — the failure was the "
        "client's (its store), not the work's",
    )
    blocked: int = Field(
        default=0,
        ge=0,
        le=MAX_DOCUMENTS_PER_TASK,
        description="How many of the attempt's documents (or listing pages) were block pages: "
        "the job's dead-man switch counts them against its recent answers.",
    )


class Cancelled(Reply):
    tasks: int


class Retried(Reply):
    tasks: int


class TaskList(Reply):
    tasks: list[Task]
    next_cursor: str | None


class Throughput(Reply):
    window_minutes: int
    tasks_completed: int
    tasks_per_minute: float
    documents_downloaded: int
    documents_per_minute: float


class StatusReport(Reply):
    counts: dict[TaskStatus, int]
    total: int
    throughput: list[Throughput]


# ---- clients


class ClientRegister(Request):
    client_name: Name
    client_host: Annotated[str, StringConstraints(max_length=255), AfterValidator(_no_nul)] | None = None
    api_key: Annotated[str, StringConstraints(min_length=32, max_length=256)] | None = None

    _check_key = field_validator("api_key")(lambda v: v if v is None else _no_nul(v))


class ClientRegistered(Reply):
    client_id: UUID
    client_name: str
    client_host: str | None
    api_key: str = Field(description="Shown once; only its hash is stored.")


class Heartbeat(Request):
    session_id: Name | None = None
    docs_per_minute: Annotated[float, Field(ge=0, le=MAX_DOCS_PER_MINUTE)] | None = None
    # The tasks the caller is working on. When given, only these leases are
    # extended: a lease whose answer never reached the client (the gate died
    # mid-reply) then runs out instead of being kept alive by the heartbeat.
    task_ids: Annotated[list[WireUUID], Field(max_length=MAX_BATCH_TASKS)] | None = None


class HeartbeatReply(Reply):
    status: Literal["ok"] = "ok"
    leases_extended: int
    lease_expires_at: datetime | None
    cancelled_task_ids: list[UUID]


class ClientInfo(Reply):
    client_id: UUID
    client_name: str
    client_host: str | None
    created_at: datetime
    last_heartbeat_at: datetime | None
    status: ClientStatus
    tasks_held: int
    docs_per_minute: float | None
    revoked_at: datetime | None = None


class ClientRevoked(Reply):
    client_id: UUID
    revoked_at: datetime
    tasks_handed_back: int = Field(description="Leases the client held, back to pending (attempt not spent).")


class ClientList(Reply):
    clients: list[ClientInfo]


# ---- jobs


def _template(value: str) -> str:
    _no_nul(value)
    if "{id}" not in value:
        raise ValueError("url_template must contain {id}")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("url_template must be an http:// or https:// URL")
    return value


def _http_url(value: str) -> str:
    _no_nul(value)
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _listing(value: str) -> str:
    _no_nul(value)
    if "{page}" not in value:
        raise ValueError("listing_url must contain {page}")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("listing_url must be an http:// or https:// URL")
    return value


def _regex(value: str) -> str:
    _no_nul(value)
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"link_pattern is not a regular expression: {exc}") from None
    if not {"url", "id"} <= set(compiled.groupindex):
        raise ValueError("link_pattern needs the named groups url and id (ext is optional)")
    return value


# A host name as the gate compares it (lower case, IDNA's ASCII form); `*.` in front for any
# subdomain. What a search task's documents may be on besides its listing's host.
HOST_PATTERN = r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
MAX_HOSTS = 100
MAX_MEDIA_TYPES = 20
HostPattern = Annotated[str, StringConstraints(max_length=253, pattern=HOST_PATTERN)]
MediaRange = Annotated[
    str,
    StringConstraints(
        max_length=MAX_CONTENT_TYPE, pattern=r"^[A-Za-z0-9!#$&^_.+*-]+/[A-Za-z0-9!#$&^_.+*-]+$"
    ),
]
UrlTemplate = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL), AfterValidator(_template)]
ListingUrl = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL), AfterValidator(_listing)]
LinkPattern = Annotated[str, StringConstraints(min_length=1, max_length=1_000), AfterValidator(_regex)]
HttpUrl = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL), AfterValidator(_http_url)]
StartId = Annotated[int, Field(ge=0, le=2**62)]
Ext = Annotated[str, StringConstraints(pattern=EXT_PATTERN)]


MAX_PATTERNS = 20
BytePattern = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Status = Annotated[int, Field(ge=100, le=599)]


class Politeness(Request):
    """A job's own budget for the hosts its tasks fetch from, summed over the fleet; the
    strictest of a host's working jobs, the host's budget and HOST_RATE_LIMIT applies."""

    requests_per_second: Annotated[float, Field(gt=0, le=100_000, strict=False)] | None = None
    max_connections: Annotated[int, Field(ge=1, le=100_000)] | None = None


class TaskParams(Request):
    """What the params of every built-in source may also say: what a 200 must look like to be
    stored as the document (otherwise it is a block: not stored, counted against the host, the
    document tried again later), and the job's politeness."""

    expect_content_type: (
        Annotated[list[MediaRange], Field(min_length=1, max_length=MAX_MEDIA_TYPES)] | None
    ) = Field(
        default=None,
        description="Media types a 200 must declare to be stored as the document "
        "(`application/pdf`, `image/*`, `*/*` for anything); by default an HTML page where the "
        "extension says otherwise is refused.",
    )
    min_size: Annotated[int, Field(ge=0, le=2**53)] | None = Field(
        default=None, description="A body shorter than this many bytes is a block page, not the document."
    )
    max_size: Annotated[int, Field(ge=1, le=2**53)] | None = Field(
        default=None, description="A body longer than this many bytes is a block, not the document."
    )
    block_patterns: Annotated[list[BytePattern], Field(max_length=MAX_PATTERNS)] | None = Field(
        default=None,
        description='Texts that mark a block page (a captcha, "too many requests") when found, '
        "case-insensitively, in the first KiB of a body.",
    )
    require_patterns: Annotated[list[BytePattern], Field(max_length=MAX_PATTERNS)] | None = Field(
        default=None,
        description="Texts of which one must appear, case-insensitively, in the first KiB of a "
        "body for it to be the document (`%PDF-`, `<decision`).",
    )
    block_statuses: Annotated[list[Status], Field(max_length=MAX_PATTERNS)] | None = Field(
        default=None,
        description="HTTP statuses that mean the origin is blocking the fleet (403, 451, …): "
        "counted as blocks and tried again later, not failed as missing.",
    )
    politeness: Politeness | None = None

    @model_validator(mode="after")
    def _sizes(self) -> TaskParams:
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError("min_size is larger than max_size")
        if self.block_statuses and any(200 <= s < 300 for s in self.block_statuses):
            raise ValueError("block_statuses cannot hold a 2xx status (use the content rules)")
        return self


class IdRangeParams(TaskParams):
    url_template: UrlTemplate
    start_id: StartId
    count: Annotated[int, Field(ge=1, le=MAX_JOB_COUNT)]
    ext: Ext = ""


class IdRangeTaskParams(TaskParams):
    """An id_range task's params: a range (start_id, count) or a list of ids, as a job's tasks
    carry them; checked the same way when a task is created directly."""

    url_template: UrlTemplate
    start_id: StartId | None = None
    count: Annotated[int, Field(ge=1, le=MAX_DOCUMENTS_PER_TASK)] | None = None
    ids: Annotated[list[DocId], Field(min_length=1, max_length=MAX_DOCUMENTS_PER_TASK)] | None = None
    ext: Ext = ""

    @model_validator(mode="after")
    def _range_or_ids(self) -> IdRangeTaskParams:
        if (self.ids is None) == (self.start_id is None or self.count is None):
            raise ValueError("give either start_id and count, or ids")
        return self


class UrlItem(Request):
    doc_id: DocId
    url: HttpUrl
    ext: Ext | None = None


class UrlsTaskParams(TaskParams):
    """A urls task's params: the documents, each with its URL."""

    urls: Annotated[list[UrlItem], Field(min_length=1, max_length=MAX_DOCUMENTS_PER_TASK)]
    ext: Ext = ""
    found_by: WireUUID | None = Field(default=None, description="the search task that found these documents")


class TaskDiscovered(Request):
    """Documents a search task found, to be downloaded by the fleet (its profile spreads them)."""

    lease_token: LeaseToken = None
    documents: Annotated[list[UrlItem], Field(min_length=1, max_length=MAX_DOCUMENTS_PER_REPORT)]


class DiscoveredReply(Reply):
    documents: int = Field(description="documents in the request")
    queued: int = Field(description="of them, not recorded nor found before: queued for download")
    tasks_created: int


class SearchTaskParams(TaskParams):
    """A search task's params; without listing_url the client's --search-url is used, and the
    gate cannot tell which host the task's documents are on."""

    listing_url: ListingUrl | None = None
    link_pattern: LinkPattern | None = None
    document_hosts: Annotated[list[HostPattern], Field(max_length=MAX_HOSTS)] | None = Field(
        default=None,
        description="Hosts the documents may be on besides the listing's (`*.example.org` for "
        "any subdomain); a report of a document elsewhere is refused as not_in_task.",
    )
    page_size: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None, description="Links on a full listing page: an empty page after a full one is a block."
    )
    empty_page: Literal["block", "end"] = Field(
        default="block",
        description="`end`: a listing page without links always ends the task; `block` (the "
        "default): after full pages it is taken for a block page and the task tried again later.",
    )


# The built-in sources whose params the gate can check (a plugin source's are its own).
SOURCE_PARAMS: dict[str, type[Request]] = {
    "id_range": IdRangeTaskParams,
    "urls": UrlsTaskParams,
    "search": SearchTaskParams,
}


class JobCreate(Request):
    """An id_range job. Its tasks carry {url_template, start_id, count, ext}; with
    only_missing, ids already recorded are left out and tasks carry {url_template, ids, ext}."""

    source: Literal["id_range"]
    params: IdRangeParams
    chunk_size: Annotated[int, Field(ge=1, le=MAX_CHUNK_SIZE)] = 100
    priority: Priority = 0
    max_attempts: Attempts | None = None
    idempotency_key: IdempotencyKey | None = None
    only_missing: bool = False
    collection: CollectionName = Field(default="", description="the registry its documents belong to")
    politeness: Politeness | None = Field(
        default=None, description="The same as params.politeness: the job's own budget per host."
    )

    @model_validator(mode="after")
    def _politeness(self) -> JobCreate:
        if self.politeness is not None:
            if self.params.politeness is not None and self.params.politeness != self.politeness:
                raise ValueError("politeness and params.politeness disagree: give one")
            self.params.politeness = self.politeness
            self.politeness = None
        return self


class FailedDocument(Reply):
    doc_id: str
    url: str | None
    error: str | None


class FailureReason(Reply):
    reason: str = Field(description="`HTTP 404`, `too large`, `blocked`, `timed out`, …")
    documents: int
    examples: list[FailedDocument] = Field(default_factory=list)


class FailureSummary(Reply):
    """A job's failed documents (those still not recorded), grouped by reason."""

    job_id: UUID
    documents: int
    reasons: list[FailureReason]


class JobPause(Request):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_no_nul)] = (
        "paused by an operator"
    )


class Refetch(Request):
    chunk_size: Annotated[int, Field(ge=1, le=MAX_CHUNK_SIZE)] = 100


class JobCreated(Reply):
    """201: the job and all its tasks exist. 202 (`creating`): the job exists and its tasks are
    being inserted in the background; GET /api/v1/jobs/{id} shows how far (`tasks_created`)."""

    job_id: UUID
    tasks_created: int
    creating: bool = Field(default=False, description="its tasks are still being created in the background")


class Job(Reply):
    job_id: UUID
    source: str
    params: dict[str, Any]
    chunk_size: int
    priority: int
    tasks_total: int
    collection: str = ""
    paused: bool = Field(False, description="no task of the job is leased until it is resumed")
    paused_reason: str | None = None
    paused_at: datetime | None = None
    creating: bool = Field(default=False, description="tasks are still being created in the background")
    tasks_created: int = Field(default=0, description="tasks created so far (tasks_total once creation ends)")
    counts: dict[TaskStatus, int]
    documents_downloaded: int
    documents_failed: int
    documents_skipped: int
    progress: float
    created_at: datetime


# ---- documents


class StoredDocument(Reply):
    """A document as it is in storage: what a store's put returns, what an upload through the
    gate answers, and (with its doc_id and provenance, as Document) what the gate records."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    storage_key: str
    storage_url: str
    sha256: str
    size: int
    content_type: str | None = None
    compressed: bool = False
    version_id: str | None = Field(
        default=None,
        description="The object version the document is (a versioned bucket's x-amz-version-id): "
        "what the gate serves and verifies, whatever was written at the key after it.",
    )


class Document(StoredDocument):
    """A recorded document."""

    doc_id: str
    collection: str = ""
    source: str
    task_id: UUID | None
    job_id: UUID | None
    client: str | None
    stored_at: datetime
    found_by: UUID | None = Field(
        default=None, description="the search task that found it: its own task, unless a search spread it"
    )
    # The capture record: how it was fetched (null for documents recorded before captures were kept,
    # and for documents found already in storage).
    url: str | None = Field(default=None, description="the URL requested")
    final_url: str | None = None
    redirects: list[dict[str, Any]] | None = None
    http_status: int | None = None
    response_headers: dict[str, str] | None = None
    etag: str | None = None
    last_modified: str | None = None
    date: str | None = Field(default=None, description="the answer's Date header")
    content_length: str | None = None
    content_encoding: str | None = None
    fetched_at: datetime | None = Field(default=None, description="by the client's clock")
    recorded_at: datetime | None = Field(default=None, description="by the gate's clock (= stored_at)")
    server_ip: str | None = None
    server_port: int | None = None
    client_id: UUID | None = None
    client_version: str | None = None
    attempt: int | None = Field(default=None, description="the task's attempt that fetched it")
    warc_key: str | None = Field(default=None, description="the WARC file holding its request and response")


class ExportedDocument(Reply):
    """One line of an export: a document's record and its capture."""

    doc_id: str
    collection: str = ""
    storage_key: str
    sha256: str
    size: int
    url: str | None = None
    final_url: str | None = None
    http_status: int | None = None
    fetched_at: datetime | None = None
    recorded_at: datetime
    client: str | None = None
    client_version: str | None = None
    server_ip: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    attempt: int | None = None
    task_id: UUID | None = None
    warc_key: str | None = None


class DocumentPage(Reply):
    documents: list[ExportedDocument]
    next_cursor: str | None = Field(default=None, description="pass back as `cursor` for the next page")


class KnownDocuments(Request):
    doc_ids: Annotated[list[DocId], Field(min_length=1, max_length=MAX_DOCUMENTS_PER_REPORT)]
    collection: CollectionName = ""


class KnownDocumentsReply(Reply):
    known: list[str]


class StorageObject(Reply):
    """An object in a store (``storage.ObjectInfo``): its key, size and, when the store kept
    it, sha256."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    key: str
    size: int
    sha256: str | None = None
    version_id: str | None = None  # a versioned bucket's version of the object (B2 keeps every one)


class StorageObjectList(Reply):
    objects: list[StorageObject]
    next_cursor: str | None


# ---- stats (what the dashboard shows, as JSON)


class JobProgress(Reply):
    job_id: UUID
    source: str
    url_template: str
    tasks_total: int
    paused: bool = False
    paused_reason: str | None = None
    counts: dict[str, int]
    documents: int
    progress: float
    eta_seconds: float | None
    created_at: datetime


class Minute(Reply):
    minutes_ago: int
    tasks_completed: int
    documents_downloaded: int


class Stats(Reply):
    counts: dict[TaskStatus, int]
    documents: int
    document_bytes: int
    oldest_pending_seconds: float
    clients: dict[str, int]
    per_minute: list[Minute]
    jobs: list[JobProgress]


# ---- health


class Health(Reply):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unavailable"]
    version: str
