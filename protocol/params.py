"""Task params per source, and the content rules every source's params may carry: one model each.

The gate parses them where a task or job is created (`parse` names the source's model); the
client parses them once when it leases the task, and the sources read the typed model from
there. A new source's params are one model here and one row of SOURCE_PARAMS.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from protocol.base import (
    EXT_PATTERN,
    MAX_CONTENT_TYPE,
    MAX_DOCUMENTS_PER_TASK,
    MAX_JOB_COUNT,
    MAX_SIZE,
    MAX_URL,
    SHA256_PATTERN,
    DocId,
    Duration,
    Request,
    WireUUID,
    no_nul,
)


def _url_with(field: str, placeholder: str | None) -> Callable[[str], str]:
    """A validator of an http(s) URL (a template when `placeholder` is given)."""

    def check(value: str) -> str:
        no_nul(value)
        if placeholder is not None and placeholder not in value:
            raise ValueError(f"{field} must contain {placeholder}")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{field} must be an http:// or https:// URL".lstrip())
        return value

    return check


_template = _url_with("url_template", "{id}")
_listing = _url_with("listing_url", "{page}")
_http_url = _url_with("", None)


def _regex(value: str) -> str:
    no_nul(value)
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"link_pattern is not a regular expression: {exc}") from None
    if not {"url", "id"} <= set(compiled.groupindex):
        raise ValueError("link_pattern needs the named groups url and id (ext is optional)")
    return value


def _varying(value: str) -> str:
    """A part of a document that differs from fetch to fetch, as a regular expression over its
    bytes (read as UTF-8 text: `Generated [0-9:T-]+`, `name="token" value="[^"]*"`)."""
    no_nul(value)
    try:
        re.compile(value.encode())
    except re.error as exc:
        raise ValueError(f"varies: {value!r} is not a regular expression: {exc}") from None
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
BlockSelector = Annotated[str, StringConstraints(min_length=1, max_length=500)]
VaryingPart = Annotated[str, StringConstraints(min_length=1, max_length=300), AfterValidator(_varying)]


class Politeness(Request):
    """A job's own budget for the hosts its tasks fetch from, summed over the fleet; the
    strictest of a host's working jobs, the host's budget and HOST_RATE_LIMIT applies."""

    requests_per_second: Annotated[float, Field(gt=0, le=100_000, strict=False)] | None = None
    max_connections: Annotated[int, Field(ge=1, le=100_000)] | None = None


class ContentRules(Request):
    """What the params of every built-in source may also say: what a 200 must look like to be
    stored as the document (otherwise it is a block: not stored, counted against the host, the
    document tried again later), the job's politeness, and whether it keeps WARC."""

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
        "case-insensitively, anywhere in the first 256 KiB of an HTML page (in the first KiB of "
        "any other body).",
    )
    block_selectors: Annotated[list[BlockSelector], Field(max_length=MAX_PATTERNS)] | None = Field(
        default=None,
        description="CSS selectors that mark an HTML page as a block page when one matches "
        "(`#modalcaptcha[style*=block]`); checked on results pages too.",
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
    warc: bool | None = Field(
        default=None,
        description="Write a WARC of every document's request and response as transferred "
        "(client.warc), in whatever store the client writes to; a client's --warc writes them for "
        "every task.",
    )
    verify_sample: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None,
        description="The share of each client's documents the gate has fetched again by another "
        "client to check them (0.01: 1 %; server/db/verify.py); a client that loses disputes is "
        "quarantined.",
    )
    verify_disputes: Annotated[int, Field(ge=1, le=1_000)] | None = Field(
        default=None,
        description="Disputes a client may lose (a check's majority finding its document wrong) "
        "before it is quarantined; 3 by default.",
    )
    varies: bool | Annotated[list[VaryingPart], Field(min_length=1, max_length=MAX_PATTERNS)] | None = Field(
        default=None,
        description="The documents differ from fetch to fetch, so a check compares them by this "
        "rule and not byte for byte: regular expressions naming the parts that vary (a timestamp, "
        "a session token), blanked on both sides before comparing; or `true`: only that the store "
        "holds the bytes recorded (what the origin serves is not compared).",
    )

    @model_validator(mode="after")
    def _sizes(self) -> ContentRules:
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError("min_size is larger than max_size")
        if self.block_statuses and any(200 <= s < 300 for s in self.block_statuses):
            raise ValueError("block_statuses cannot hold a 2xx status (use the content rules)")
        return self

    @property
    def rules(self) -> ContentRules:
        """Only the content rules and politeness (what a job hands down to every task)."""
        return ContentRules.model_validate(
            self.model_dump(include=set(ContentRules.model_fields), exclude_none=True), strict=False
        )


def handed_down(job: Any) -> Any:
    """A job's settings given beside its params (`politeness`, `warc`) go into its params, which
    every task of the job carries; given in both, they must agree."""
    for name in ("politeness", "warc", "verify_sample", "verify_disputes"):
        value = getattr(job, name)
        if value is None:
            continue
        if getattr(job.params, name) is not None and getattr(job.params, name) != value:
            raise ValueError(f"{name} and params.{name} disagree: give one")
        setattr(job.params, name, value)
        setattr(job, name, None)
    return job


class Revisit(Request):
    """Fetch a job's recorded documents again every `every` (90s, 30m, 6h, 30d): conditional
    requests, a new version where the bytes changed, `withdrawn` where the origin answers 404/410."""

    every: Duration


class JobSettings(Request):
    """What a job says beside its params: settings every one of its tasks carries in them
    (`politeness`, `warc`, `verify_sample`: see `handed_down`), and its revisits."""

    politeness: Politeness | None = Field(
        default=None, description="The same as params.politeness: the job's own budget per host."
    )
    warc: bool | None = Field(
        default=None, description="The same as params.warc: a WARC of every document's capture."
    )
    revisit: Revisit | None = Field(default=None, description="fetch its documents again every so often")
    verify_sample: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None,
        description="The same as params.verify_sample: other clients check a share of each one's.",
    )
    verify_disputes: Annotated[int, Field(ge=1, le=1_000)] | None = Field(
        default=None, description="The same as params.verify_disputes: disputes lost before quarantine."
    )

    _handed_down = model_validator(mode="after")(handed_down)


class IdRangeParams(ContentRules):
    url_template: UrlTemplate
    start_id: StartId
    count: Annotated[int, Field(ge=1, le=MAX_JOB_COUNT)]
    ext: Ext = ""


class IdRangeTaskParams(ContentRules):
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


class Seen(Request):
    """What a revisit knows of a document: its current version as recorded, for a conditional
    request (If-None-Match, If-Modified-Since) and to tell changed bytes from the same ones."""

    version: Annotated[int, Field(ge=1, le=1_000_000)]
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
    size: Annotated[int, Field(ge=0, le=MAX_SIZE)]
    storage_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    etag: Annotated[str, StringConstraints(max_length=1000)] | None = None
    last_modified: Annotated[str, StringConstraints(max_length=1000)] | None = None
    fetched_at: Annotated[str, StringConstraints(max_length=40)] | None = None


class UrlItem(Request):
    doc_id: DocId
    url: HttpUrl
    ext: Ext | None = None
    seen: Seen | None = Field(default=None, description="a revisit's: the document as last recorded")


class UrlsTaskParams(ContentRules):
    """A urls task's params: the documents, each with its URL."""

    urls: Annotated[list[UrlItem], Field(min_length=1, max_length=MAX_DOCUMENTS_PER_TASK)]
    ext: Ext = ""
    found_by: WireUUID | None = Field(default=None, description="the search task that found these documents")
    revisit: bool = Field(default=False, description="its documents are recorded: fetch them again")
    restore: bool = Field(
        default=False, description="a revisit that stores every document anew (its recorder was quarantined)"
    )
    verify: bool = Field(
        default=False, description="check other clients' documents: fetch, compare, store nothing"
    )


class ListingRules(ContentRules):
    """How to read a search's results pages: what a task of `search` or of a stored profile
    may say besides its content rules."""

    page_size: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None,
        description="Links on a full listing page: an empty page after a full one is a block, a "
        "page with fewer is the last.",
    )
    empty_page: Literal["block", "end"] = Field(
        default="block",
        description="`end`: a listing page without links always ends the task; `block` (the "
        "default): after full pages it is taken for a block page and the task tried again later.",
    )


class SearchTaskParams(ListingRules):
    """A search task's params; without listing_url the client's --search-url is used, and the
    gate cannot tell which host the task's documents are on."""

    listing_url: ListingUrl | None = None
    link_pattern: LinkPattern | None = None
    document_hosts: Annotated[list[HostPattern], Field(max_length=MAX_HOSTS)] | None = Field(
        default=None,
        description="Hosts the documents may be on besides the listing's (`*.example.org` for "
        "any subdomain); a report of a document elsewhere is refused as not_in_task.",
    )


class ProfileTaskParams(ListingRules):
    """A task of a stored source profile: its rules over the profile's, and how to read its
    results pages (as for `search`)."""

    over_cap: Literal["split", "truncate"] = Field(
        default="truncate",
        description="a search stating more results than the profile's results.max_results: "
        "`split` stops at once and reports its total (the gate splits the harvest's window); "
        "`truncate` fetches what the registry shows and reports the window over the cap",
    )


# The built-in sources whose params the gate can check (a plugin source's are its own).
SOURCE_PARAMS: dict[str, type[ContentRules]] = {
    "id_range": IdRangeTaskParams,
    "urls": UrlsTaskParams,
    "search": SearchTaskParams,
}


def merged(under: ContentRules, over: ContentRules) -> ContentRules:
    """`under`'s rules with what `over` sets on top: a task's own rules over its profile's."""
    fields = under.rules.model_dump(exclude_none=True) | over.rules.model_dump(exclude_none=True)
    return ContentRules.model_validate(fields, strict=False)


def parse(source: str, params: dict[str, Any], *, profiled: bool = False) -> ContentRules:
    """A task's params as its source's model. A stored profile's task reads ProfileTaskParams,
    a plugin's its content rules; the rest of theirs is left to them. Raises pydantic's
    ValidationError, which says which field is wrong."""
    model = ProfileTaskParams if profiled else SOURCE_PARAMS.get(source, ContentRules)
    if profiled or model is ContentRules:  # a profile's or a plugin's: only the fields that are ours
        params = {k: v for k, v in params.items() if k in model.model_fields}
    return model.model_validate(params, strict=False)
