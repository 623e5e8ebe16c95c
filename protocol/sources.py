"""Source profiles on the wire: a registry's search described as data, stored on the gate by name
(`PUT /api/v1/sources/{name}`), named by tasks and jobs in `source`, and sent with each lease so
clients need no per-registry flags or code.

A profile says how to run one search of a registry, the way an operator would in a browser:

1. open `start` (cookies are kept for the whole search: registries bind paging to the session)
   and read the hidden fields of its search form (CSRF or view-state tokens);
2. send `search`: GET or POST, form-encoded in the registry's `charset`, the task's
   `search_params` mapped onto the form's fields (a list is a multi-valued field: one pair per
   value), plus the profile's fixed fields and the hidden ones;
3. read each results page: document links by CSS selector, the doc_id from each link by a
   regular expression with a group named `id`;
4. go to the next page: a URL with `{page}` (inside the same session), or the search form sent
   again with the page number in a field and the page's fresh hidden fields;
5. optionally open each result's detail page and take the document link from it (an RTF
   original), or keep the detail page itself as the document.

Structure, patterns and URLs are checked here; the gate also compiles every CSS selector
before it stores a profile (`server.sources`), so a broken profile is a 422 naming its field,
never a failure on every attempt.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from protocol.base import EXT_PATTERN, MAX_URL, SOURCE_PATTERN, CollectionName, Reply, Request
from protocol.params import MAX_HOSTS, ContentRules, HostPattern

NAME_PATTERN = SOURCE_PATTERN  # a profile is usable by any task that can name it
BUILT_IN = frozenset({"search", "id_range", "urls"})
MAX_FIELDS = 100
MAX_VALUES = 200
MAX_SELECTOR = 500


def _http(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if value.startswith("/") and not value.startswith("//"):
        return value  # relative to base_url
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL, or a path starting with /")
    return value


def _pattern_with(group: str, example: str) -> Callable[[str], str]:
    """A validator of a regular expression that must have the named `group`."""

    def check(value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        if group not in compiled.groupindex:
            raise ValueError(f"needs a group named {group}, e.g. {example}")
        return value

    return check


_id_pattern = _pattern_with("id", "/Review/(?P<id>\\d+)")
_total_pattern = _pattern_with("total", "знайдено документів: (?P<total>[\\d\\s]+)")


def _charset(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"{value!r} is not a known charset (utf-8, windows-1251, …)") from None
    return value


Url = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL), AfterValidator(_http)]
Selector = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SELECTOR)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
FieldValue = Annotated[str, StringConstraints(max_length=2_000, pattern=r"^[^\x00]*$")]
Values = FieldValue | Annotated[list[FieldValue], Field(max_length=MAX_VALUES)]
IdPattern = Annotated[str, StringConstraints(min_length=1, max_length=1_000), AfterValidator(_id_pattern)]
Charset = Annotated[str, StringConstraints(min_length=1, max_length=40), AfterValidator(_charset)]


class StartPage(Request):
    """The page a search starts from: opened first, for the session's cookies and the hidden
    fields of its search form."""

    url: Url
    hidden_fields: Selector = Field(
        default="form input[type=hidden]",
        description="the inputs whose name and value are sent back with the search",
    )


class DateFields(Request):
    """The search form's date range: the fields a harvest's windows fill, and how a day is
    written in them (strftime: `%d.%m.%Y` for 31.12.2024)."""

    begin: FieldName
    end: FieldName
    format: Annotated[str, StringConstraints(min_length=2, max_length=40)] = "%Y-%m-%d"

    @model_validator(mode="after")
    def _writes_days(self) -> DateFields:
        if not all(f"%{c}" in self.format for c in "dmY"):
            raise ValueError("format must write the day, month and year (%d, %m, %Y)")
        return self


class Search(Request):
    url: Url
    method: Literal["GET", "POST"] = "POST"
    fields: Annotated[dict[FieldName, Values], Field(max_length=MAX_FIELDS)] = Field(
        default_factory=dict,
        description="sent with every search: the form's required fields (a page size, a sort order)",
    )
    params_map: Annotated[dict[FieldName, FieldName], Field(max_length=MAX_FIELDS)] = Field(
        default_factory=dict,
        description="a search_params key → the form field it fills (a key not named here fills the "
        "field of its own name)",
    )
    dates: DateFields | None = Field(
        default=None, description="the form's date range fields, which a harvest's windows fill"
    )


class Total(Request):
    """Where a results page states how many results the search has: the text of the first
    element `selector` matches, searched with `pattern` (its group `total`; spaces and other
    separators between digits are dropped)."""

    selector: Selector = "body"
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=1_000), AfterValidator(_total_pattern)]


class Results(Request):
    links: Selector = Field(description="the document links on a results page (their href)")
    attribute: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "href"
    id_pattern: IdPattern = Field(description="applied to each link: the group `id` is the doc_id")
    page_size: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None, description="links on a full page: an empty page after a full one is a block"
    )
    ext: Annotated[str, StringConstraints(pattern=EXT_PATTERN)] = ".html"
    total: Total | None = Field(default=None, description="how a results page states the search's total")
    max_results: Annotated[int, Field(ge=1, le=100_000_000)] | None = Field(
        default=None,
        description="the most results one search shows (the registry's cap): a harvest's window "
        "over it is split, never truncated",
    )


class NextPage(Request):
    """How to get page n+1: a URL with {page}, or the search form sent again with the page
    number in `field` (and the results page's own hidden fields, when it has them)."""

    url: Url | None = None
    field: FieldName | None = None

    @model_validator(mode="after")
    def _one(self) -> NextPage:
        if (self.url is None) == (self.field is None):
            raise ValueError("give either url (with {page}) or field")
        if self.url is not None and "{page}" not in self.url:
            raise ValueError("url must contain {page}")
        return self


class Detail(Request):
    """Each result link is a detail page; the document is the link `document` selects on it (an
    RTF original), or, without `document`, the detail page itself (its embedded text)."""

    document: Selector | None = None
    attribute: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "href"
    ext: Annotated[str, StringConstraints(pattern=EXT_PATTERN)] = ".html"


class SourceProfile(ContentRules):
    """A registry's search as data (see the module's description), with the content rules and
    politeness every one of its tasks carries (ContentRules: declared once, for both)."""

    description: Annotated[str, StringConstraints(max_length=2_000)] = ""
    base_url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL), AfterValidator(_http)]
    charset: Charset = "utf-8"
    start: StartPage | None = None
    search: Search
    results: Results
    next_page: NextPage | None = None
    detail: Detail | None = None
    max_pages: Annotated[int, Field(ge=1, le=100_000)] = 1_000
    collection: CollectionName | None = Field(
        default=None, description="the collection its tasks' documents go to when they name none"
    )
    document_hosts: Annotated[list[HostPattern], Field(max_length=MAX_HOSTS)] | None = Field(
        default=None,
        description="hosts its documents may be on besides base_url's and its pages' (`*.cdn.example` "
        "for any subdomain); a report of a document elsewhere is refused as not_in_task",
    )
    spread_chunk_size: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        default=None,
        description="the search downloads nothing itself: what it finds goes, once per doc_id, "
        "into `urls` tasks of this many documents, spread over the fleet",
    )

    @model_validator(mode="after")
    def _absolute_base(self) -> SourceProfile:
        if not re.match(r"^https?://[^/\s]+", self.base_url):
            raise ValueError("base_url must be an http:// or https:// URL")
        return self


class StoredSource(Reply):
    name: str
    profile: dict[str, Any]
    updated_at: datetime | None = None


class SourceList(Reply):
    sources: list[StoredSource]
