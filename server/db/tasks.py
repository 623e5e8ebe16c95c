"""Tasks as rows: create, read, list. Every change of a task's state is in `lifecycle`."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from protocol import v1
from server.db.pool import Pool, connection, transaction
from server.errors import IdempotencyConflict, NotYourTask

log = logging.getLogger("docgate.gate")

TASK_COLUMNS = """
    task_id, job_id, source, search_params, start_page, max_documents, params,
    priority, max_attempts, attempts, run_after, idempotency_key, status,
    assigned_to, lease_token, lease_expires_at, documents_downloaded,
    documents_failed, documents_skipped, result_summary, last_error, last_error_code, last_error_page,
    created_at, updated_at, assigned_at, completed_at, task_seq, collection, window_id
"""

INSERT_ONE = f"""
INSERT INTO tasks (source, search_params, start_page, max_documents, params,
                   priority, max_attempts, idempotency_key, run_after, collection)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, now()),
        coalesce($10, (SELECT s.profile->>'collection' FROM sources s WHERE s.name = $1), ''))
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {TASK_COLUMNS}
"""

INSERT_MANY = """
INSERT INTO tasks (task_id, source, search_params, start_page, max_documents, params,
                   priority, max_attempts, idempotency_key, run_after, collection)
SELECT t.task_id, t.source, t.search_params::jsonb, t.start_page, t.max_documents,
       t.params::jsonb, t.priority, t.max_attempts, t.idempotency_key,
       coalesce(t.run_after, now()),
       coalesce(t.collection, (SELECT s.profile->>'collection' FROM sources s WHERE s.name = t.source), '')
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::int[], $6::text[],
            $7::int[], $8::int[], $9::text[], $10::timestamptz[], $11::text[])
     AS t(task_id, source, search_params, start_page, max_documents, params,
          priority, max_attempts, idempotency_key, run_after, collection)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING task_id
"""

SELECT_BY_KEYS = f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = ANY($1::text[])"

GET = f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"

LIST_ALL = f"""
SELECT {TASK_COLUMNS} FROM tasks WHERE task_seq < $1 ORDER BY task_seq DESC LIMIT $2
"""

# BETWEEN: by tasks_status_newest, never a walk of tasks_newest past other statuses (stats.py).
LIST_BY_STATUS = f"""
SELECT {TASK_COLUMNS} FROM tasks
WHERE status BETWEEN $3 AND $3 AND task_seq < $1 ORDER BY status, task_seq DESC LIMIT $2
"""

END_OF_LIST = 2**63 - 1


def to_task(record: Any) -> v1.Task:
    return v1.Task.model_validate(dict(record))


def to_leased(record: Any) -> v1.LeasedTask:
    """The leased task, its profile parsed. A stored profile that no longer holds (stored before
    a bound was tightened) is left out: the client then fails the task, naming the missing
    profile, rather than the whole lease failing."""
    fields = dict(record)
    try:
        return v1.LeasedTask.model_validate(fields)
    except ValidationError:
        if fields.get("profile") is None:
            raise
        log.warning("task %s: its source profile %r no longer holds", fields["task_id"], fields["source"])
        return v1.LeasedTask.model_validate(fields | {"profile": None})


async def create_task(pool: Pool, body: v1.TaskCreate, max_attempts: int) -> v1.TaskCreated:
    """Insert one task; with a known idempotency_key return the existing one instead."""
    args = (
        body.source,
        body.search_params,
        body.start_page,
        body.max_documents,
        body.params,
        body.priority,
        body.max_attempts or max_attempts,
        body.idempotency_key,
        body.run_after,
        body.collection,
    )
    async with transaction(pool) as conn:
        record = await conn.fetchrow(INSERT_ONE, *args)
        if record is not None:
            return v1.TaskCreated(**dict(record), created=True)
        existing = await conn.fetchrow(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = $1", body.idempotency_key
        )
    # ON CONFLICT waited for the other insert to commit, so the row is visible now.
    assert existing is not None
    _check_same_work(body, existing, max_attempts)
    return v1.TaskCreated(**dict(existing), created=False)


def _check_same_work(body: v1.TaskCreate, row: Any, max_attempts: int) -> None:
    """A repeat must ask for the work its idempotency_key first asked for (as Stripe's keys do)."""
    asked = (body.source, body.search_params, body.start_page, body.max_documents, body.params,
             body.priority, body.max_attempts or max_attempts)  # fmt: skip
    found = (row["source"], row["search_params"], row["start_page"], row["max_documents"], row["params"],
             row["priority"], row["max_attempts"])  # fmt: skip
    if asked != found:
        raise IdempotencyConflict(
            f"idempotency_key {body.idempotency_key!r} was first used for a different task "
            f"({row['task_id']}); use a new key for new work"
        )


async def create_tasks(pool: Pool, tasks: list[v1.TaskCreate], max_attempts: int) -> v1.TaskBatchCreated:
    """Insert many tasks in one statement; ids come back in the order given."""
    ids = [uuid.uuid4() for _ in tasks]
    columns: list[list[Any]] = [
        ids,
        [t.source for t in tasks],
        [json.dumps(t.search_params) for t in tasks],
        [t.start_page for t in tasks],
        [t.max_documents for t in tasks],
        [json.dumps(t.params) for t in tasks],
        [t.priority for t in tasks],
        [t.max_attempts or max_attempts for t in tasks],
        [t.idempotency_key for t in tasks],
        [t.run_after for t in tasks],
        [t.collection for t in tasks],
    ]
    async with transaction(pool) as conn:
        inserted = {r["task_id"] for r in await conn.fetch(INSERT_MANY, *columns)}
        keys = [t.idempotency_key for t, i in zip(tasks, ids, strict=True) if i not in inserted]
        rows = {r["idempotency_key"]: r for r in await conn.fetch(SELECT_BY_KEYS, keys)}
        for task, task_id in zip(tasks, ids, strict=True):
            if task_id not in inserted:  # raising here rolls the whole batch back
                _check_same_work(task, rows[task.idempotency_key], max_attempts)
        existing = {key: row["task_id"] for key, row in rows.items()}
    task_ids = [i if i in inserted else existing[t.idempotency_key] for t, i in zip(tasks, ids, strict=True)]
    return v1.TaskBatchCreated(
        task_ids=task_ids, tasks_created=len(inserted), tasks_existing=len(tasks) - len(inserted)
    )


async def get_task(pool: Pool, task_id: UUID, owner: UUID | None) -> v1.Task:
    async with connection(pool) as conn:
        record = await conn.fetchrow(GET, task_id)
    if record is None or (owner is not None and record["assigned_to"] != owner):
        raise NotYourTask(f"task {task_id} not found")
    return to_task(record)


def encode_cursor(seq: int) -> str:
    return str(seq)


def decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return END_OF_LIST
    if not cursor.isdigit() or len(cursor) > 19:
        raise ValueError("cursor must be a value returned as next_cursor")
    return int(cursor)


async def list_tasks(pool: Pool, status: v1.TaskStatus | None, limit: int, before: int) -> v1.TaskList:
    async with connection(pool) as conn:
        if status is None:
            records = await conn.fetch(LIST_ALL, before, limit)
        else:
            records = await conn.fetch(LIST_BY_STATUS, before, limit, status.value)
    more = len(records) == limit
    cursor = encode_cursor(records[-1]["task_seq"]) if more and records else None
    return v1.TaskList(tasks=[to_task(r) for r in records], next_cursor=cursor)
