"""`search`, the seed's task shape: page through a registry's search listing.

From `start_page`, fetch `listing_url` (with {page}; `search_params` are added
as query parameters), pick document links with `link_pattern`, and stop at
`max_documents` or at a page with no new links. Both come from the task's
params, else from the client's --search-url / --link-pattern. A listing may
also be JSON: {"documents": [{"doc_id": …, "url": …}, …]}.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urljoin

from client.sources import DocRef, SourceContext, SourceError
from protocol import v1

DEFAULT_LINK = r'href="(?P<url>[^"]*?/(?P<id>[A-Za-z0-9_-]{1,128})(?P<ext>\.[A-Za-z0-9]{1,16})?)"'


class SearchSource:
    def __init__(self, context: SourceContext) -> None:
        self.context = context

    async def documents(self, task: v1.LeasedTask) -> AsyncIterator[DocRef]:
        listing = task.params.get("listing_url") or self.context.search_url
        if not isinstance(listing, str) or "{page}" not in listing:
            raise SourceError("search needs a listing URL with {page} (params.listing_url or --search-url)")
        pattern = re.compile(task.params.get("link_pattern") or self.context.link_pattern or DEFAULT_LINK)
        seen: set[str] = set()
        page = task.start_page
        while len(seen) < task.max_documents:
            url = page_url(listing, page, task.search_params)
            text, final = await self.context.fetcher.text(url)
            fresh = [ref for ref in links(text, final, pattern) if ref.doc_id not in seen]
            if not fresh:
                return
            for ref in fresh[: task.max_documents - len(seen)]:
                seen.add(ref.doc_id)
                yield ref
            page += 1


def page_url(listing: str, page: int, search_params: dict[str, object]) -> str:
    url = listing.replace("{page}", str(page))
    if search_params:
        url += ("&" if "?" in url else "?") + urlencode(sorted((k, str(v)) for k, v in search_params.items()))
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
