"""The wire contract of API v1, defined once: requests, replies and statuses.

Its ground (bounds, scalar types, the Request and Reply bases) is protocol.base, task params
are protocol.params and source profiles protocol.sources; this module re-exports the first two,
so the whole contract reads as `v1.<name>`. Imports only the standard library and pydantic.

Why one module of this size: it is the wire — every request and reply of the gate's OpenAPI,
in the order of the API's sections — and a change to the wire should be one reviewable diff.
"""

# ruff: noqa: F403, F405 - the re-export of protocol.base and protocol.params is the point

from __future__ import annotations

import ipaddress
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from protocol.base import *
from protocol.errors import ErrorCode
from protocol.failures import FailureCode
from protocol.params import *
from protocol.sources import SourceProfile


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
    UNCHANGED = "unchanged"  # a revisit found the recorded version still served (304, or the same bytes)
    CHECKED = "checked"  # a check of another client's document: what the origin serves, what the store holds


class ClientStatus(StrEnum):
    ACTIVE = "active"
    STALE = "stale"
    REVOKED = "revoked"
    QUARANTINED = "quarantined"  # its documents disagreed with other clients' fetches (server/db/verify.py)


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

    _check_run_after = field_validator("run_after")(aware)

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
    window_id: int | None = Field(default=None, description="the harvest window this task searches")


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
    last_error_code: FailureCode | None = None
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
    last_error: str | None = Field(default=None, description="why the task's last attempt failed, if one did")
    last_error_code: FailureCode | None = Field(
        default=None, description="the same as a code: what a source weighs (protocol/failures.py)"
    )
    last_error_page: int | None = Field(default=None, description="the listing page it stopped on")
    profile: SourceProfile | None = Field(
        default=None, description="the stored source profile the task's source names (protocol.sources)"
    )
    user_agent: str | None = Field(
        default=None, description="the User-Agent to send origins (the gate's USER_AGENT / OPERATOR_CONTACT)"
    )


class LeaseBatch(Reply):
    tasks: list[LeasedTask]


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
    client_version: Annotated[str, StringConstraints(max_length=100), AfterValidator(printable)] | None = None
    transfer_sha256: Sha256Hex | None = Field(
        default=None,
        description="the sha256 of the body as transferred, when it came content-encoded (gzip): "
        "the WARC response record's payload digest; the document's sha256 is of the decoded bytes",
    )
    transfer_size: Annotated[int, Field(ge=0, le=MAX_SIZE)] | None = Field(
        default=None, description="the size of the body as transferred, when it came content-encoded"
    )

    @field_validator("server_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)  # its ValueError says what is wrong
        return value

    _check_fetched_at = field_validator("fetched_at")(aware)

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
            if not key or not sendable(key, MAX_HEADER_NAME):
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
    code: Annotated[FailureCode, Field(strict=False)] | None = Field(
        default=None,
        description="why it failed, from one table (protocol/failures.py); `error` says it in words",
    )
    capture: Capture | None = Field(default=None, description="how it was fetched (stored documents)")
    version: Annotated[int, Field(ge=2, le=1_000_000)] | None = Field(
        default=None, description="a revisit's new version of a recorded document (its versioned key)"
    )
    stored_sha256: Sha256Hex | None = Field(
        default=None,
        description="a check's: the sha256 of the object the store holds at storage_key (none: no object)",
    )
    normalized_sha256: Sha256Hex | None = Field(
        default=None,
        description="a check's, for a job whose documents vary (params.varies lists the parts): the "
        "sha256 of what the origin served with those parts blanked",
    )
    stored_normalized_sha256: Sha256Hex | None = Field(
        default=None, description="the same of the object the store holds (a check's)"
    )

    @model_validator(mode="after")
    def _stored_has_proof(self) -> DocumentReport:
        if self.status in (DocumentStatus.STORED, DocumentStatus.UNCHANGED) and (
            self.storage_key is None or self.sha256 is None or self.size is None
        ):
            raise ValueError(f"a {self.status} document needs storage_key, sha256 and size")
        if self.version is not None and self.status is not DocumentStatus.STORED:
            raise ValueError("only a stored document has a new version")
        if self.status is DocumentStatus.CHECKED and self.sha256 is None:
            raise ValueError("a checked document needs the sha256 the origin served")
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
        if content_type is not None and not sendable(content_type, MAX_CONTENT_TYPE):
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
    def of_failure(cls, doc_id: str, *, url: str | None, code: FailureCode, error: str) -> DocumentReport:
        return cls.model_validate(
            {
                "doc_id": doc_id,
                "status": DocumentStatus.FAILED,
                "url": clip(url, MAX_URL),
                "code": code,
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
    records: Annotated[int, Field(ge=1, le=1 + 2 * (1 + MAX_REDIRECTS) * MAX_DOCUMENTS_PER_REPORT)] = Field(
        description="a warcinfo, then per document a request and a response (or revisit), and the same "
        "for each redirect followed to it"
    )
    doc_ids: Annotated[list[DocId], Field(min_length=1, max_length=MAX_DOCUMENTS_PER_REPORT)]


class TaskProgress(Request):
    lease_token: LeaseToken = None
    documents_downloaded: Count | None = None
    documents_failed: Count | None = None
    documents_skipped: Count | None = None
    documents: Documents = Field(default_factory=list)
    warc: WarcReport | None = Field(default=None, description="the WARC holding these documents' records")


class ListingReport(Request):
    """What a search's results said: the total the registry stated, the documents found, and
    whether the listing was cut by the registry's cap (results.max_results)."""

    stated_total: Annotated[int, Field(ge=0, le=2**53)] | None = None
    found: Count = 0
    capped: bool = False


class TaskComplete(Counts):
    """The seed's completion, with the lease token that fences it (optional, see LeaseToken)."""

    task_id: WireUUID
    lease_token: LeaseToken = None
    result_summary: JsonObject | None = None
    documents: Documents = Field(default_factory=list)
    warc: WarcReport | None = Field(default=None, description="the WARC holding these documents' records")
    listing: ListingReport | None = Field(default=None, description="a search's: what its listing said")


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
    error: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT), AfterValidator(no_nul)]
    code: Annotated[FailureCode, Field(strict=False)] = Field(
        default=FailureCode.OTHER, description="why, from one table (protocol/failures.py)"
    )
    page: Annotated[int, Field(ge=1, le=MAX_PAGE)] | None = Field(
        default=None, description="the listing page the attempt stopped on (code empty_page)"
    )
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


MaxLeases = Annotated[int, Field(ge=0, le=1_000_000)]


class ClientRegister(Request):
    client_name: Name
    client_host: Annotated[str, StringConstraints(max_length=255), AfterValidator(no_nul)] | None = None
    api_key: Annotated[str, StringConstraints(min_length=32, max_length=256)] | None = None
    max_leases: MaxLeases | None = Field(
        default=None, description="The most leases this key may hold at once (default MAX_LEASES_PER_CLIENT)."
    )

    _check_key = field_validator("api_key")(lambda v: v if v is None else no_nul(v))


class ClientUpdate(Request):
    """`PATCH /api/v1/clients/{client_id}`: the key's own lease cap (null: the gate's setting)."""

    max_leases: MaxLeases | None


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
    max_leases: int | None = None
    checks_passed: int = Field(default=0, description="its documents other clients' fetches agreed with")
    checks_failed: int = Field(default=0, description="disputes over its documents it lost")
    last_good_check_at: datetime | None = None
    quarantined_at: datetime | None = Field(
        default=None, description="its key suspended and its documents since its last good check stored anew"
    )


class ClientDetail(ClientInfo):
    """`GET /api/v1/clients/{client_id}`: the client, and what other clients' checks made of it."""

    checks: dict[str, int] = Field(
        description="checks of its documents by state: agreed, lied (it lost), mistaken (a checker "
        "did), changed (the origin's new edition), unsettled, superseded, pending, queued"
    )
    documents_recorded: int = Field(description="documents whose current record it wrote")
    documents_being_restored: int = Field(
        description="of its documents, those other clients are storing anew now (after a lost "
        "dispute, or its quarantine)"
    )


class Goodbye(Reply):
    """`DELETE /api/v1/session`: the process's leases handed back; nothing more is leased to it."""

    tasks_handed_back: int


class ClientRevoked(Reply):
    client_id: UUID
    revoked_at: datetime
    tasks_handed_back: int = Field(description="Leases the client held, back to pending (attempt not spent).")


class ClientList(Reply):
    clients: list[ClientInfo]


# ---- jobs


class TaskDiscovered(Request):
    """Documents a search task found, to be downloaded by the fleet (its profile spreads them)."""

    lease_token: LeaseToken = None
    documents: Annotated[list[UrlItem], Field(min_length=1, max_length=MAX_DOCUMENTS_PER_REPORT)]


class DiscoveredReply(Reply):
    documents: int = Field(description="documents in the request")
    queued: int = Field(description="of them, not recorded nor found before: queued for download")
    tasks_created: int


class JobCreate(JobSettings):
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


class FailedDocument(Reply):
    doc_id: str
    url: str | None
    error: str | None


class FailureReason(Reply):
    code: FailureCode = Field(
        description="`not_found`, `too_large`, `blocked`, `timeout`, … (protocol/failures.py)"
    )
    documents: int
    examples: list[FailedDocument] = Field(default_factory=list)


class FailureSummary(Reply):
    """A job's failed documents (those still not recorded), grouped by code."""

    job_id: UUID
    documents: int
    reasons: list[FailureReason]


class JobPause(Request):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(no_nul)] = (
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
    harvest: dict[str, Any] | None = Field(
        default=None, description="a harvest's partition, split and repeat (GET …/coverage shows its windows)"
    )
    runs: int = Field(default=0, description="a harvest's runs so far")
    next_run_at: datetime | None = Field(default=None, description="a repeating harvest's next run")
    revisit: dict[str, Any] | None = Field(default=None, description="how often its documents are revisited")
    next_revisit_at: datetime | None = Field(default=None, description="its next revisit")


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
    transfer_sha256: str | None = Field(
        default=None, description="content-encoded: the sha256 of the body as transferred (sha256 is decoded)"
    )
    transfer_size: int | None = Field(default=None, description="content-encoded: its size as transferred")
    fetched_at: datetime | None = Field(default=None, description="by the client's clock")
    recorded_at: datetime | None = Field(default=None, description="by the gate's clock (= stored_at)")
    server_ip: str | None = None
    server_port: int | None = None
    client_id: UUID | None = None
    client_version: str | None = None
    attempt: int | None = Field(default=None, description="the task's attempt that fetched it")
    warc_key: str | None = Field(default=None, description="the WARC file holding its request and response")
    version: int = Field(default=1, description="its current version (GET …/versions lists them all)")
    revisited_at: datetime | None = Field(default=None, description="when a revisit last found it served")
    withdrawn_at: datetime | None = Field(
        default=None, description="when a revisit found it gone (404/410): its bytes are kept"
    )


class DocumentVersion(Reply):
    """One version of a document: what was stored, when it was fetched and recorded."""

    version: int
    current: bool
    storage_key: str
    sha256: str
    size: int
    content_type: str | None = None
    compressed: bool = False
    version_id: str | None = Field(default=None, description="the object's version in a versioned store")
    fetched_at: datetime | None = None
    recorded_at: datetime
    superseded_at: datetime | None = Field(default=None, description="when a later version replaced it")
    etag: str | None = None
    last_modified: str | None = None
    transfer_sha256: str | None = None
    warc_key: str | None = None


class DocumentVersions(Reply):
    doc_id: str
    collection: str = ""
    withdrawn_at: datetime | None = None
    versions: list[DocumentVersion] = Field(description="oldest first; the last is the current one")


class RevisitStarted(Reply):
    job_id: UUID
    documents: int = Field(description="documents queued to be fetched again")
    tasks_created: int


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
    transfer_sha256: str | None = None


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
