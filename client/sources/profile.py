"""A stored source profile, run: one search of a registry as `protocol.sources` describes it.

The gate sends the profile with the lease (`LeasedTask.profile`). Each task gets its own
browsing session (`Fetcher.browser`: its own cookies, the fleet's connections, budgets, SSRF
guard and retries), opens the start page, reads the search form's hidden fields, sends the
search in the registry's charset, and pages through the results: links by CSS selector
(selectolax), doc_ids by the profile's pattern, detail pages followed when the profile says so.
`start_page` and `max_documents` keep the seed's meaning: results before `start_page` are paged
past, and at most `max_documents` are given.

Why a listing stopped is kept in `stopped` (the dry run, `docgate sources try`, prints it).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin

from selectolax.lexbor import LexborHTMLParser

from client import bodies
from client.download import Browser, DocumentFailed, Page
from client.sources import DocRef, SourceContext, SourceError
from client.sources.search import empty_page, ended_here_before, expected_more, short_page
from common.selectors import broken_selectors
from protocol import v1
from protocol.failures import FailureCode
from protocol.params import ContentRules, ProfileTaskParams
from protocol.sources import SourceProfile

if TYPE_CHECKING:
    from client.work import Work


def hidden_fields(page: Page, selector: str) -> list[tuple[str, str]]:
    tree = LexborHTMLParser(page.text)
    pairs = []
    for node in tree.css(selector):
        name = node.attributes.get("name")
        if name:
            pairs.append((name, node.attributes.get("value") or ""))
    return pairs


def search_fields(
    profile: SourceProfile, search_params: dict[str, Any], hidden: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The search's form: hidden fields, the profile's fixed fields, then the task's
    search_params on their fields; a list is one pair per value (a multi-valued field)."""
    pairs = list(hidden)
    named = {k for k, _ in pairs}
    values: dict[str, Any] = dict(profile.search.fields)
    for key, value in search_params.items():
        values[profile.search.params_map.get(key, key)] = value
    for name, value in values.items():
        if name in named:
            pairs = [(k, v) for k, v in pairs if k != name]
        items = value if isinstance(value, list) else [value]
        pairs.extend((name, _text(v)) for v in items)
    return pairs


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Listing:
    """One search's state while it pages."""

    profile: SourceProfile
    task: v1.LeasedTask
    pattern: re.Pattern[str]
    counts: list[int] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    given: int = 0
    stated_total: int | None = None
    capped: bool = False

    @property
    def report(self) -> v1.ListingReport:
        return v1.ListingReport(stated_total=self.stated_total, found=len(self.seen), capped=self.capped)


def stated_total(profile: SourceProfile, page: Page) -> int | None:
    """The total a results page states (the profile's results.total), or None."""
    total = profile.results.total
    if total is None:
        return None
    node = LexborHTMLParser(page.text).css_first(total.selector)
    if node is None:
        return None
    found = re.search(total.pattern, node.text(separator=" "))
    digits = re.sub(r"\D", "", found.group("total")) if found is not None else ""
    return int(digits) if digits else None


class ProfileSource:
    def __init__(self, context: SourceContext) -> None:
        self.context = context
        self.stopped = ""
        self.trace: list[str] = []
        self.rules = ContentRules()
        self.listing: Listing | None = None

    @property
    def report(self) -> v1.ListingReport | None:
        """What the listing said (its stated total, documents found, whether capped)."""
        return None if self.listing is None else self.listing.report

    async def documents(self, work: Work) -> AsyncIterator[DocRef]:
        task, profile, rules = work.task, self._profile(work), work.rules
        self.rules = rules
        listing = self.listing = Listing(profile, task, re.compile(profile.results.id_pattern))
        own = work.params if isinstance(work.params, ProfileTaskParams) else ProfileTaskParams()
        page_size, empty = own.page_size or profile.results.page_size, own.empty_page
        async with self.context.fetcher.browser(bodies.asked(rules), profile.charset, self.trace) as browser:
            page = await self._search(browser, profile, task)
            number = 1
            # Split over the cap with no count to go by: the listing is read to its end, or to the
            # last page the cap allows, before anything is fetched; a capped one fetches nothing.
            waiting: list[DocRef] | None = None
            while True:
                self._blocked(browser, page, number)
                if number == 1:
                    if self._split_instead(listing, page, own):
                        return
                    waiting = self._held_back(listing, own)
                found = self._links(listing, page)
                fresh = [ref for ref in found if ref.doc_id not in listing.seen]
                if not fresh:
                    self._ended(browser, page, number, page_size, empty)
                    break
                listing.counts.append(len(fresh))
                listing.seen.update(ref.doc_id for ref in fresh)
                async for ref in self._give(browser, work, fresh, number, waiting):
                    yield ref
                if (stop := self._stop(listing, number, len(found), page_size)) is not None:
                    self.stopped = stop
                    break
                number += 1
                page = await self._next(browser, profile, page, number, task)
            if waiting and not listing.capped:
                async for ref in self._page(browser, work, waiting):
                    yield ref

    async def _give(
        self, browser: Browser, work: Work, fresh: list[DocRef], number: int, waiting: list[DocRef] | None
    ) -> AsyncIterator[DocRef]:
        """A page's new documents: held back while the listing must be read through first, else
        given now; none of a page before the seed's start_page (paged past)."""
        if number < work.task.start_page:
            return
        if waiting is not None:
            waiting.extend(fresh)
            return
        async for ref in self._page(browser, work, fresh):
            yield ref

    @staticmethod
    def _held_back(listing: Listing, own: ProfileTaskParams) -> list[DocRef] | None:
        """A list to hold the listing's documents in until it is read through, when a search to
        be split over the cap has no stated total to go by (None: fetch them as they come)."""
        splits = own.over_cap == "split" and listing.profile.results.max_results is not None
        return [] if splits and listing.stated_total is None else None

    def _ended(self, browser: Browser, page: Page, number: int, page_size: int | None, empty: str) -> None:
        """A page with no new documents: the end of the results, or (after full pages, the first
        time on this page) a block page that looks empty, raised for the task to be tried again."""
        assert self.listing is not None
        counts, task = self.listing.counts, self.listing.task
        if expected_more(counts, page_size, empty) and not ended_here_before(task, number):
            browser.blocked(page.url)
            raise empty_page(number, counts)
        self.stopped = f"page {number} has no new documents: the end of the results"

    async def _search(self, browser: Browser, profile: SourceProfile, task: v1.LeasedTask) -> Page:
        """The start page (for the session and the form's hidden fields), then the search."""
        hidden: list[tuple[str, str]] = []
        if profile.start is not None:
            start = await browser.open("GET", self._url(profile, profile.start.url))
            self._blocked(browser, start, 0)  # no token on a block page
            hidden = hidden_fields(start, profile.start.hidden_fields)
        fields = search_fields(profile, task.search_params, hidden)
        return await browser.open(profile.search.method, self._url(profile, profile.search.url), fields)

    def _split_instead(self, listing: Listing, page: Page, own: ProfileTaskParams) -> bool:
        """Read the first page's stated total; True when it is over the registry's cap and the
        task says split: nothing is fetched, the gate splits the window."""
        cap = listing.profile.results.max_results
        listing.stated_total = stated_total(listing.profile, page)
        if cap is None or (listing.stated_total or 0) <= cap:
            return False
        listing.capped = True
        if own.over_cap != "split":
            return False
        self.stopped = f"{listing.stated_total} results, over the cap ({cap}): the window is split"
        return True

    async def _page(self, browser: Browser, work: Work, fresh: list[DocRef]) -> AsyncIterator[DocRef]:
        """A page's documents, up to the task's max_documents; a detail page is opened only
        for a document the gate has not recorded."""
        assert self.listing is not None
        profile, listing = self.listing.profile, self.listing
        recorded = await self._recorded(work, profile, [r.doc_id for r in fresh])
        for ref in fresh:
            if listing.given >= work.task.max_documents:
                return
            if ref.doc_id in recorded:  # recorded already: skipped by the fetch step, unopened
                yield DocRef(ref.doc_id, ref.url, _ext(profile))
            else:
                yield await self._document(browser, profile, ref)
            listing.given += 1

    def _stop(self, listing: Listing, number: int, links: int, page_size: int | None) -> str | None:
        """Why page `number` is the last one asked for, or None."""
        cap, task = listing.profile.results.max_results, listing.task
        if listing.given >= task.max_documents:
            return f"max_documents ({task.max_documents}) reached"
        if cap is not None and len(listing.seen) >= cap:
            # The last page the registry's cap allows: it shows no more, whatever it holds.
            listing.capped = listing.capped or listing.stated_total is None
            return f"{len(listing.seen)} results: the registry's cap ({cap})"
        return _last_page(listing.profile, number, links, page_size)

    async def _recorded(self, work: Work, profile: SourceProfile, doc_ids: list[str]) -> set[str]:
        """Of a page's documents, those the gate has recorded, when finding each one's document
        costs a request (a detail page): a repeated search fetches nothing it holds."""
        if self.context.known is None or profile.detail is None or profile.detail.document is None:
            return set()
        return await self.context.known(doc_ids, work.task.collection)

    def _profile(self, work: Work) -> SourceProfile:
        source = work.task.source
        if work.profile is None:
            raise SourceError(f"source {source!r}: the gate sent no profile with the task")
        broken = broken_selectors(work.profile)
        if broken:
            raise SourceError(f"source {source!r}: {broken[0][0]}: {broken[0][1]}")
        return work.profile

    @staticmethod
    def _url(profile: SourceProfile, url: str) -> str:
        return urljoin(profile.base_url, url)

    def _blocked(self, browser: Browser, page: Page, number: int) -> None:
        where = f"results page {number}" if number else page.url
        block = bodies.blocked_page(page.text[: bodies.PAGE_SCAN], self.rules, where)
        if block is not None:
            browser.blocked(page.url)
            raise block

    def _links(self, listing: Listing, page: Page) -> list[DocRef]:
        results = listing.profile.results
        refs: list[DocRef] = []
        ids: set[str] = set()
        for node in LexborHTMLParser(page.text).css(results.links):
            href = node.attributes.get(results.attribute)
            if not href:
                continue
            url = urljoin(page.url, href.strip())  # against where the page really came from
            found = listing.pattern.search(url)
            if found is None or not found.group("id") or found.group("id") in ids:
                continue
            ids.add(found.group("id"))
            refs.append(DocRef(found.group("id"), url, results.ext))
        return refs

    async def _document(self, browser: Browser, profile: SourceProfile, ref: DocRef) -> DocRef:
        detail = profile.detail
        if detail is None:
            return ref
        if detail.document is None:
            return DocRef(ref.doc_id, ref.url, detail.ext)
        page = await browser.open("GET", ref.url)
        self._blocked(browser, page, 0)
        for node in LexborHTMLParser(page.text).css(detail.document):
            href = node.attributes.get(detail.attribute)
            if href:
                return DocRef(ref.doc_id, urljoin(page.url, href.strip()), detail.ext)
        raise DocumentFailed(
            FailureCode.NO_DOCUMENT, f"detail page {ref.url} has no {detail.document!r}", permanent=False
        )

    async def _next(
        self, browser: Browser, profile: SourceProfile, page: Page, number: int, task: v1.LeasedTask
    ) -> Page:
        step = profile.next_page
        assert step is not None
        if step.url is not None:
            return await browser.open("GET", self._url(profile, step.url.replace("{page}", str(number))))
        assert step.field is not None
        selector = profile.start.hidden_fields if profile.start is not None else "form input[type=hidden]"
        fresh = [(k, v) for k, v in hidden_fields(page, selector) if k != step.field]
        fields = search_fields(profile, task.search_params, fresh) + [(step.field, str(number))]
        return await browser.open(profile.search.method, self._url(profile, profile.search.url), fields)


def _ext(profile: SourceProfile) -> str:
    return profile.detail.ext if profile.detail is not None else profile.results.ext


def _last_page(profile: SourceProfile, number: int, links: int, page_size: int | None) -> str | None:
    """Why page `number` (with `links` links) is the last one asked for, or None."""
    if short_page(links, page_size):
        return f"page {number} is short ({links} of {page_size} links): the last page"
    if number >= profile.max_pages:
        return f"max_pages ({profile.max_pages}) reached"
    if profile.next_page is None:
        return "the profile has no next_page: one page read"
    return None


def encoded(fields: list[tuple[str, str]], charset: str) -> bytes:
    """A form body as a browser sends it from a page in `charset`."""
    return urlencode(fields, encoding=charset, errors="xmlcharrefreplace").encode("ascii")
