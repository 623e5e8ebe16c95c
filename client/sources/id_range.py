"""`id_range`: {url_template with {id}, start_id, count, ext} or {url_template, ids, ext}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from client.sources import DocRef, SourceContext, SourceError
from protocol.params import IdRangeTaskParams

if TYPE_CHECKING:
    from client.work import Work


class IdRangeSource:
    def __init__(self, context: SourceContext) -> None:
        self.context = context

    async def documents(self, work: Work) -> AsyncIterator[DocRef]:
        params = work.params
        if not isinstance(params, IdRangeTaskParams):
            raise SourceError(f"id_range cannot run a {work.task.source} task")
        for doc_id in ids_of(params):
            yield DocRef(str(doc_id), params.url_template.replace("{id}", str(doc_id)), params.ext)


def ids_of(params: IdRangeTaskParams) -> list[int | str] | range:
    if params.ids is not None:
        return params.ids
    assert params.start_id is not None and params.count is not None  # the model's rule
    return range(params.start_id, params.start_id + params.count)
