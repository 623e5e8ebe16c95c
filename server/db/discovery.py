"""Searches that spread their results: what a search task finds becomes `urls` tasks for the
whole fleet, each doc_id queued once (not if it is recorded, nor if a search found it before)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from protocol import sources, v1
from protocol.params import ContentRules, merged
from server.db.lifecycle import FENCE, Caller, classify_refusal
from server.db.pool import Pool, transaction
from server.errors import LeaseLost, Unprocessable

SEARCH = f"""
SELECT t.task_id, t.job_id, t.priority, t.collection, t.params, s.profile FROM tasks t
LEFT JOIN sources s ON s.name = t.source
WHERE {FENCE.replace("task_id = $1", "t.task_id = $1")}
FOR SHARE OF t
"""
FIRST_TIME = """
INSERT INTO discoveries (collection, doc_id, found_by)
SELECT $3, d, $2 FROM unnest($1::text[]) AS d
WHERE NOT EXISTS (SELECT 1 FROM documents WHERE collection = $3 AND doc_id = d)
ON CONFLICT (collection, doc_id) DO NOTHING
RETURNING doc_id
"""
QUEUE = """
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection)
VALUES ($1, 'urls', $2, $3, $4, $5, $6)
"""
NOTIFY = "SELECT pg_notify('docgate_tasks', '')"


async def discovered(
    pool: Pool, task_id: UUID, body: v1.TaskDiscovered, caller: Caller, max_attempts: int
) -> v1.DiscoveredReply:
    """Queue the documents a leased search found (fenced like its progress reports)."""
    args = (task_id, body.lease_token, caller.owner, caller.session_id)
    async with transaction(pool) as conn:
        search = await conn.fetchrow(SEARCH, *args)
        if search is None:
            await classify_refusal(conn, task_id, body.lease_token, caller)
            raise LeaseLost(f"task {task_id} is completed; it can no longer report documents")
        profile = _profile(search["profile"])
        if profile is None or profile.spread_chunk_size is None:
            raise Unprocessable(f"task {task_id}'s source does not spread its results (spread_chunk_size)")
        items = {d.doc_id: d for d in body.documents}  # one per doc_id
        fresh = {
            r["doc_id"] for r in await conn.fetch(FIRST_TIME, list(items), task_id, search["collection"])
        }
        queued = [items[d] for d in items if d in fresh]
        # The profile's rules under the search's own (a job's politeness, its warc): what its
        # documents' tasks carry.
        own = _rules(search["params"])
        rules = (merged(profile, own) if own is not None else profile.rules).model_dump(
            mode="json", exclude_none=True
        )
        size = profile.spread_chunk_size
        chunks = [queued[i : i + size] for i in range(0, len(queued), size)]
        for chunk in chunks:
            params: dict[str, Any] = rules | {
                "urls": [d.model_dump(exclude_none=True) for d in chunk],
                "found_by": str(task_id),
            }
            queue = (
                search["job_id"],
                params,
                len(chunk),
                search["priority"],
                max_attempts,
                search["collection"],
            )
            await conn.execute(QUEUE, *queue)
        if chunks:
            await conn.execute(NOTIFY)
    return v1.DiscoveredReply(documents=len(body.documents), queued=len(queued), tasks_created=len(chunks))


def _profile(value: Any) -> sources.SourceProfile | None:
    if value is None:
        return None
    try:
        return sources.SourceProfile.model_validate(value)
    except ValueError:
        return None


def _rules(value: Any) -> ContentRules | None:
    """The content rules a search task's params set (None: unreadable, the profile's apply)."""
    try:
        return ContentRules.model_validate(
            {k: v for k, v in (value or {}).items() if k in ContentRules.model_fields}, strict=False
        )
    except ValueError:
        return None
