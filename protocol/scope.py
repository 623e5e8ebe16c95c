"""Which documents a task is about, as far as anyone but the client can tell: the gate checks
every report and upload against it, and the client leaves out what the gate would refuse.

An `id_range` task names its ids (a range or a list) and a `urls` task its list; a `search`
task's documents are found by the client, so only their hosts can be checked: the listing's
host (and its subdomains; the bare domain of a `www.` listing) plus `params.document_hosts`.
A stored profile's task is checked like a search's: its documents may be on the hosts of the
profile's base_url and of its pages (start, search, next page), or on its `document_hosts`.
A search task without `listing_url` (the client's --search-url) and a plugin source's task
leave both unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from protocol.params import (
    SOURCE_PARAMS,
    ContentRules,
    IdRangeTaskParams,
    SearchTaskParams,
    UrlsTaskParams,
    parse,
)
from protocol.sources import SourceProfile


@dataclass(frozen=True)
class TaskScope:
    """What the gate knows of a task's documents: their ids (None: a search or a plugin source,
    whose documents the client finds) and the hosts their URLs may be on (None: unknown, as
    for a search task whose listing comes from the client's --search-url)."""

    doc_ids: frozenset[str] | range | None
    hosts: frozenset[str] | None

    @classmethod
    def of(cls, params: ContentRules, profile: SourceProfile | None = None) -> TaskScope:
        if profile is not None:
            pages = [profile.base_url, profile.search.url]
            pages += [p.url for p in (profile.start, profile.next_page) if p is not None and p.url]
            absolute = [u for u in pages if u.startswith(("http://", "https://"))]
            return cls(None, (_hosts(absolute) or frozenset()) | set(profile.document_hosts or ()))
        if isinstance(params, IdRangeTaskParams):
            hosts = _hosts([params.url_template])
            if params.ids is not None:
                return cls(frozenset(str(i) for i in params.ids), hosts)
            assert params.start_id is not None and params.count is not None  # the model's rule
            return cls(range(params.start_id, params.start_id + params.count), hosts)
        if isinstance(params, UrlsTaskParams):
            urls = [i.url for i in params.urls]
            return cls(frozenset(str(i.doc_id) for i in params.urls), _hosts(urls))
        if isinstance(params, SearchTaskParams) and params.listing_url is not None:
            listing = _hosts([params.listing_url]) or frozenset()
            return cls(None, listing | set(params.document_hosts or ()))
        return cls(None, None)

    @classmethod
    def of_stored(
        cls, source: str, params: dict[str, Any], profile: dict[str, Any] | None = None
    ) -> TaskScope:
        """The scope of a task as the database holds it (with its stored profile's, if it names
        one). Params or a profile that no longer hold under their model (written before a bound
        was tightened) admit nothing, never everything."""
        try:
            if profile is not None:
                return cls.of(parse(source, params, profiled=True), SourceProfile.model_validate(profile))
            return cls.of(parse(source, params))
        except ValidationError:
            known = source in SOURCE_PARAMS or profile is not None
            return cls(frozenset(), frozenset()) if known else cls(None, None)

    def contains(self, doc_id: str) -> bool | None:
        """Is doc_id one of the task's documents? None when the gate cannot know."""
        if self.doc_ids is None:
            return None
        if isinstance(self.doc_ids, range):
            return doc_id.isdigit() and str(int(doc_id)) == doc_id and int(doc_id) in self.doc_ids
        return doc_id in self.doc_ids

    def on_origin(self, url: str | None) -> bool:
        """Is the document's URL on one of the task's hosts (or subdomains of its listing's)?"""
        if self.hosts is None or url is None:
            return True
        host = host_of(url)
        if host is None:
            return False
        for allowed in self.hosts:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]):
                    return True
            elif host == allowed or host.endswith("." + allowed) or allowed == "www." + host:
                return True
        return False


def host_of(url: str) -> str | None:
    """The URL's host as the gate compares hosts: lower case, IDNA's ASCII form, no final dot."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        return host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        return host.rstrip(".")


def _hosts(urls: list[str]) -> frozenset[str] | None:
    """The hosts of these URLs; None (unknown) if any has none or a placeholder in its host."""
    hosts = [host_of(url) for url in urls]
    if not hosts or any(h is None or "{" in h for h in hosts):
        return None
    return frozenset(h for h in hosts if h is not None)
