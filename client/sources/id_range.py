"""`id_range`: {url_template with {id}, start_id, count, ext} or {url_template, ids, ext}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from client.sources import DocRef, SourceContext, SourceError
from protocol import v1


class IdRangeSource:
    def __init__(self, context: SourceContext) -> None:
        self.context = context

    async def documents(self, task: v1.LeasedTask) -> AsyncIterator[DocRef]:
        params = task.params
        template = params.get("url_template")
        if not isinstance(template, str) or "{id}" not in template:
            raise SourceError("id_range needs params.url_template containing {id}")
        ext = str(params.get("ext", ""))
        for doc_id in ids_of(params):
            yield DocRef(str(doc_id), template.replace("{id}", str(doc_id)), ext)


def ids_of(params: dict[str, Any]) -> list[int | str]:
    if "ids" in params:
        ids = params["ids"]
        if not isinstance(ids, list):
            raise SourceError("id_range params.ids must be a list")
        return ids
    start, count = params.get("start_id"), params.get("count")
    if not isinstance(start, int) or not isinstance(count, int) or count < 0:
        raise SourceError("id_range needs integer params.start_id and params.count")
    return list(range(start, start + count))
