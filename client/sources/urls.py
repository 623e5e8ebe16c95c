"""`urls`: an explicit list, params.urls = [{"doc_id": …, "url": …, "ext": …}, …]."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from client.sources import DocRef, SourceContext, SourceError
from protocol import v1


class UrlsSource:
    def __init__(self, context: SourceContext) -> None:
        self.context = context

    async def documents(self, task: v1.LeasedTask) -> AsyncIterator[DocRef]:
        items = task.params.get("urls")
        if not isinstance(items, list):
            raise SourceError("urls needs params.urls: a list of {doc_id, url}")
        for item in items:
            if not isinstance(item, dict) or "doc_id" not in item or not isinstance(item.get("url"), str):
                raise SourceError("every entry of params.urls needs doc_id and url")
            ext = item.get("ext")
            if ext is None:
                ext = posixpath.splitext(urlsplit(item["url"]).path)[1]
            yield DocRef(str(item["doc_id"]), item["url"], str(ext or task.params.get("ext", "")))
