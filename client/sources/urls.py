"""`urls`: an explicit list, params.urls = [{"doc_id": …, "url": …, "ext": …}, …]."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from client.sources import DocRef, SourceContext, SourceError
from protocol.params import UrlsTaskParams

if TYPE_CHECKING:
    from client.work import Work


class UrlsSource:
    def __init__(self, context: SourceContext) -> None:
        self.context = context

    async def documents(self, work: Work) -> AsyncIterator[DocRef]:
        params = work.params
        if not isinstance(params, UrlsTaskParams):
            raise SourceError(f"urls cannot run a {work.task.source} task")
        for item in params.urls:
            ext = item.ext
            if ext is None:
                ext = posixpath.splitext(urlsplit(item.url).path)[1]
            yield DocRef(str(item.doc_id), item.url, ext or params.ext, item.seen)
