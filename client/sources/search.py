"""`search`, the seed's task shape: page through a registry's search listing.

From `start_page`, fetch `listing_url` (with {page}; `search_params` are added
as query parameters), pick document links with `link_pattern`, and stop at
`max_documents` or at a page with no new links. Both come from the task's
params, else from the client's --search-url / --link-pattern. A listing may
also be JSON: {"documents": [{"doc_id": …, "url": …}, …]}.

A page without links where more were expected — `max_documents` not reached, and the pages
before it full (`params.page_size` links, or without it at least two pages, all with the same
number of links) — is taken for a block page (a throttled registry's empty results), not the
end: the task is handed back, tried again after its back-off, and the host's budget hears of
it. A listing whose last page is exactly full looks the same the first time; when the task's
last attempt ended on the same empty page, it is believed (the end, twice, after a pause).
`params.empty_page: "end"` says a page without links always ends the listing. A listing page
holding one of the task's `block_patterns` in its first KiB is a block too.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlencode, urljoin

from yarl import URL

from client import bodies
from client.download import DocumentFailed
from client.limits import host_key
from client.sources import DocRef, SourceContext, SourceError
from protocol import v1
from protocol.failures import FailureCode
from protocol.params import ContentRules, SearchTaskParams

if TYPE_CHECKING:
    from client.work import Work

DEFAULT_LINK = r'href="(?P<url>[^"]*?/(?P<id>[A-Za-z0-9_-]{1,128})(?P<ext>\.[A-Za-z0-9]{1,16})?)"'


class SearchSource:
    def __init__(self, context: SourceContext) -> None:
        self.context = context

    async def documents(self, work: Work) -> AsyncIterator[DocRef]:
        task, params = work.task, work.params
        if not isinstance(params, SearchTaskParams):
            raise SourceError(f"search cannot run a {task.source} task")
        listing = params.listing_url or self.context.search_url
        if listing is None or "{page}" not in listing:
            raise SourceError("search needs a listing URL with {page} (params.listing_url or --search-url)")
        pattern = re.compile(params.link_pattern or self.context.link_pattern or DEFAULT_LINK)
        seen: set[str] = set()
        page = task.start_page
        counts: list[int] = []
        while len(seen) < task.max_documents:
            url = page_url(listing, page, task.search_params)
            text, final = await self.context.fetcher.text(url, bodies.asked(work.rules))
            self._blocked(text, final, work.rules, page)
            found = links(text, final, pattern)
            fresh = [ref for ref in found if ref.doc_id not in seen]
            if not fresh:
                if expected_more(counts, params.page_size, params.empty_page) and not ended_here_before(
                    task, page
                ):
                    self._block(final, empty_page(page, counts))
                return
            counts.append(len(fresh))
            for ref in fresh[: task.max_documents - len(seen)]:
                seen.add(ref.doc_id)
                yield ref
            if short_page(len(found), params.page_size):
                return  # the last page: asking for the next would cost a request, or an attempt
            page += 1

    def _blocked(self, text: str, url: str, rules: ContentRules, page: int) -> None:
        pattern = bodies.found(rules.block_patterns, text[: bodies.HEAD])
        if pattern is not None:
            self._block(url, _blocks(f"page {page} holds {pattern!r} (the task's block_patterns)"))

    def _block(self, url: str, failure: DocumentFailed) -> NoReturn:
        with contextlib.suppress(ValueError):
            self.context.fetcher.limiter.record(host_key(URL(url)), "blocked")
        raise failure


def _blocks(reason: str) -> DocumentFailed:
    return DocumentFailed(
        FailureCode.BLOCKED, f"a block page, not the listing's end: {reason}", permanent=False
    )


def empty_page(page: int, counts: list[int]) -> DocumentFailed:
    """An empty listing page after full ones: a block page until the task's next attempt ends on
    the same page (then it is the end)."""
    return DocumentFailed(
        FailureCode.EMPTY_PAGE,
        f"a block page, not the listing's end: page {page} has no documents after full pages "
        f"({counts[-1]} links)",
        permanent=False,
        page=page,
    )


def ended_here_before(task: v1.LeasedTask, page: int) -> bool:
    """Did the task's last attempt stop on this same empty page? (Then the listing really ends.)"""
    return task.last_error_code is FailureCode.EMPTY_PAGE and task.last_error_page == page


def short_page(links: int, page_size: int | None) -> bool:
    """A page with fewer links than a full one (`page_size`, when known) is the listing's last."""
    return page_size is not None and links < page_size


def expected_more(counts: list[int], page_size: int | None, empty_page: str = "block") -> bool:
    if not counts or empty_page == "end":
        return False
    if page_size is not None:
        return counts[-1] >= page_size
    return len(counts) >= 2 and len(set(counts)) == 1


def page_url(listing: str, page: int, search_params: dict[str, object]) -> str:
    url = listing.replace("{page}", str(page))
    if search_params:
        pairs = [
            (k, str(x)) for k, v in sorted(search_params.items()) for x in (v if isinstance(v, list) else [v])
        ]
        url += ("&" if "?" in url else "?") + urlencode(pairs)  # a list: the field once per value
    return url


def links(text: str, base: str, pattern: re.Pattern[str]) -> list[DocRef]:
    if text.lstrip().startswith("{"):
        try:
            items = json.loads(text).get("documents", [])
        except (ValueError, AttributeError):
            items = []
        return [
            DocRef(str(i["doc_id"]), urljoin(base, i["url"]), _ext(i["url"]))
            for i in items
            if isinstance(i, dict) and "doc_id" in i and "url" in i
        ]
    refs, seen = [], set()
    for match in pattern.finditer(text):
        doc_id = match.group("id")
        if doc_id not in seen:
            seen.add(doc_id)
            ext = match.groupdict().get("ext") or ""
            refs.append(DocRef(doc_id, urljoin(base, match.group("url")), ext))
    return refs


def _ext(url: str) -> str:
    found = re.search(r"(\.[A-Za-z0-9]{1,16})$", url.split("?")[0])
    return found[1] if found else ""
